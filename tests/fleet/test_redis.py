"""Fleet mode on a real redis-server: sharing, takeover after a kill, partition, tasks through the owner, status.

Leases live 1.5 s (renewed every 0.5 s) so the suite stays quick. Bounds are asserted only where the bound is the
behaviour under test (a takeover within lease TTL + reconnect time); the rest are outcomes and orderings.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from functools import partial

import pytest
import trio

from galaxy_trio.aip import ClientMessage, ClientMessageType, new_id
from galaxy_trio.fleet import (
    FleetEventKind,
    FleetMember,
    fleet_rows,
    read_fleet_status,
    read_fleet_status_text,
    render_fleet_table,
)
from galaxy_trio.manager import DeviceStatus, DuplicateTaskId, TaskResult, UnknownDevice

from ..manager.peer import SYSTEM_INFO, TASK_ACK, TASK_END_COMPLETED, Conn, ScriptedPeer, patched
from .conftest import NO_GLIDE, MemberRunner, RedisServer, device_configs, status_of, until
from .peers import FencedPeer, TcpProxy

glide = pytest.importorskip("glide", reason=NO_GLIDE)
from galaxy_trio.fleet.redis import open_redis_registry, parse_redis_url  # noqa: E402  (needs glide)

TTL = 1.5
RENEW = TTL / 3


def idle_under(members: list[FleetMember], device_ids: list[str]) -> bool:
    """Every device IDLE in exactly one member's manager, and that member holds its lease."""
    for device_id in device_ids:
        drivers = [m for m in members if status_of(m, device_id) is not DeviceStatus.DISCONNECTED]
        if len(drivers) != 1 or not drivers[0].owns(device_id):
            return False
        if status_of(drivers[0], device_id) is not DeviceStatus.IDLE:
            return False
    return True


def shares(members: list[FleetMember], *expected: int) -> bool:
    return sorted(len(m.owned) for m in members) == sorted(expected)


def one_registration_each(peer: FencedPeer, device_ids: list[str]) -> bool:
    live = peer.registered()
    return sorted(live) == sorted(f"fleet@{d}" for d in device_ids) and all(len(r) == 1 for r in live.values())


async def test_three_managers_share_sixty_devices_and_the_status_shows_them_all(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str
) -> None:
    devices = device_configs(peer, 60)
    ids = [d.device_id for d in devices]
    async with trio.open_nursery() as starting:  # start the three together, as a deployment would
        for member_id in ("m-a", "m-b", "m-c"):
            starting.start_soon(partial(runner.start, member_id, redis_server.url, devices, namespace=namespace))
    members = list(runner.members.values())

    def settled() -> bool:
        return shares(members, 20, 20, 20) and idle_under(members, ids) and one_registration_each(peer, ids)

    with trio.fail_after(20):
        await until(settled, peer, members)
    # Fair share: ceil(60 / 3) = 20 each, and the shares cover the fleet exactly.
    assert sorted(len(m.owned) for m in members) == [20, 20, 20]
    assert sorted(d for m in members for d in m.owned) == ids
    # Every member registered a device with the same client_id: <task_name>@<device_id>.
    assert {r.client_id for rs in peer.registered().values() for r in rs} == {f"fleet@{d}" for d in ids}
    assert peer.duplicates_refused == []  # members that join together never reach for the same device

    for member in members:
        await member.publish_now()
    rows = await read_fleet_status(redis_server.url, namespace=namespace)
    assert [row["device_id"] for row in rows] == ids
    owner_of = {d: m.member_id for m in members for d in m.owned}
    for row in rows:
        assert row["status"] == "idle" and row["owner"] == owner_of[row["device_id"]] and not row["stale"]
        assert row["reported_by"] == row["owner"]
        assert row["capabilities"][0] == "shell" and set(SYSTEM_INFO["supported_features"]) <= set(row["capabilities"])
        assert row["system_info"]["hostname"] == SYSTEM_INFO["hostname"]
        assert row["metadata"]["rack"] == int(row["device_id"][-2:]) % 4
        assert row["server_url"].endswith("token=***")  # the token never reaches Redis
        assert row["last_heartbeat"] is not None
    assert json.loads(json.dumps(rows)) == rows  # JSON-ready, for `status --json`
    text = await read_fleet_status_text(redis_server.url, namespace=namespace)
    assert "60 devices: 60 idle; 0 unowned" in text
    assert "3 live members:" in text
    for member in members:
        assert f"{member.member_id} (20 devices" in text
    assert all(d in text for d in ids)
    # The event stream saw every device reach IDLE, each under its owner, and every lease being taken.
    async with open_redis_registry(redis_server.url, namespace=namespace) as registry:
        events = await registry.read_events(10_000)
    became_idle = {e["device_id"]: e["member_id"] for e in events if e.get("new_status") == "idle"}
    assert became_idle == owner_of
    acquired = Counter(e["member_id"] for e in events if e["kind"] == "lease_acquired")
    assert acquired == Counter({m.member_id: 20 for m in members})


async def test_a_killed_manager_s_devices_come_back_idle_under_the_others(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str, nursery: trio.Nursery
) -> None:
    devices = device_configs(peer, 60)
    ids = [d.device_id for d in devices]
    proxy = TcpProxy(redis_server.port)
    await nursery.start(proxy.serve)
    doomed_url = f"redis://127.0.0.1:{proxy.port}/0"
    async with trio.open_nursery() as starting:
        starting.start_soon(partial(runner.start, "m-a", redis_server.url, devices, namespace=namespace))
        starting.start_soon(partial(runner.start, "m-b", redis_server.url, devices, namespace=namespace))
        starting.start_soon(partial(runner.start, "m-c", doomed_url, devices, namespace=namespace))
    a, b, c = (runner.members[m] for m in ("m-a", "m-b", "m-c"))

    def settled() -> bool:
        return shares([a, b, c], 20, 20, 20) and idle_under([a, b, c], ids) and one_registration_each(peer, ids)

    with trio.fail_after(20):
        await until(settled, peer, [a, b, c])
    orphans = sorted(c.owned)
    assert len(orphans) == 20

    # Kill c: it can no longer reach Redis (no release, no renewals) and its connections die with it.
    killed_at = trio.current_time()
    wall_start = time.monotonic()
    proxy.cut()
    runner.stop("m-c")
    with trio.fail_after(TTL + 2 * RENEW + 5.0):  # lease TTL + one scan + reconnect time (generous for CI)
        await until(lambda: idle_under([a, b], ids) and one_registration_each(peer, ids), peer, [a, b])
    takeover_s = time.monotonic() - wall_start
    print(f"takeover of {len(orphans)} devices: {takeover_s:.2f}s (lease ttl {TTL}s)")
    assert sorted(len(m.owned) for m in (a, b)) == [30, 30]  # ceil(60 / 2)
    assert set(orphans) <= set(a.owned) | set(b.owned)
    # Nothing was double-driven: each of c's registrations had ended before its successor's began.
    for device_id in orphans:
        history = [r for r in peer.registrations if r.client_id == f"fleet@{device_id}"]
        for before, after in itertools.pairwise(history):
            assert before.ended is not None and before.ended <= after.started
        assert history[-1].started >= killed_at


async def test_a_partitioned_manager_stops_driving_when_its_leases_expire_and_comes_back(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str, nursery: trio.Nursery
) -> None:
    devices = device_configs(peer, 20)
    ids = [d.device_id for d in devices]
    proxy = TcpProxy(redis_server.port)
    await nursery.start(proxy.serve)
    async with trio.open_nursery() as starting:
        proxied = f"redis://127.0.0.1:{proxy.port}/0"
        starting.start_soon(partial(runner.start, "m-a", proxied, devices, namespace=namespace))
        starting.start_soon(partial(runner.start, "m-b", redis_server.url, devices, namespace=namespace))
    a, b = runner.members["m-a"], runner.members["m-b"]
    with trio.fail_after(20):
        await until(
            lambda: shares([a, b], 10, 10) and idle_under([a, b], ids) and one_registration_each(peer, ids),
            peer,
            [a, b],
        )
    cut_off = sorted(a.owned)
    assert len(cut_off) == 10

    with a.subscribe() as a_events, b.subscribe() as b_events:
        cut_at = trio.current_time()
        proxy.cut()
        with trio.fail_after(TTL + 2 * RENEW + 5.0):
            await until(lambda: a.owned == [] and idle_under([a, b], ids), peer, [a, b])
        assert a.degraded and a.last_registry_error is not None
        assert sorted(b.owned) == ids
        a_seen = a_events.pending()
        b_seen = b_events.pending()
    assert [e.kind for e in a_seen].count(FleetEventKind.DEGRADED) == 1
    dropped_at = {e.device_id: e.monotonic for e in a_seen if e.kind is FleetEventKind.LEASE_EXPIRED}
    taken_at = {e.device_id: e.monotonic for e in b_seen if e.kind is FleetEventKind.LEASE_ACQUIRED}
    assert sorted(dropped_at) == cut_off == sorted(taken_at)
    for device_id in cut_off:
        # a gave each device up (by its own clock) before b could take it, within one TTL of the cut ...
        assert cut_at < dropped_at[device_id] < taken_at[device_id]
        assert dropped_at[device_id] <= cut_at + TTL
        # ... and the device server saw a's link end before b's began: never two drivers at once.
        history = [r for r in peer.registrations if r.client_id == f"fleet@{device_id}"]
        assert len(history) == 2 and history[0].conn is not history[1].conn
        assert history[0].ended is not None and history[0].ended <= history[1].started

    # Redis comes back: a recovers, b hands back its excess, every device is IDLE again, 10 and 10.
    with a.subscribe() as a_events:
        proxy.restore()
        with trio.fail_after(20):

            def rebalanced() -> bool:
                return not a.degraded and len(a.owned) == 10 and idle_under([a, b], ids)

            await until(lambda: rebalanced() and one_registration_each(peer, ids), peer, [a, b])
        kinds = [e.kind for e in a_events.pending()]
    assert FleetEventKind.RECOVERED in kinds and kinds.count(FleetEventKind.LEASE_ACQUIRED) == 10
    assert sorted(a.owned + b.owned) == ids
    for device_id in ids:
        history = [r for r in peer.registrations if r.client_id == f"fleet@{device_id}"]
        for before, after in itertools.pairwise(history):
            assert before.ended is not None and before.ended <= after.started


class HeldTasks:
    """Acks each TASK and holds it until released; records the session ids it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release = trio.Event()

    async def __call__(self, peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        assert task.session_id is not None
        self.seen.append(task.session_id)
        peer._notify()
        await conn.send(patched(TASK_ACK, session_id=task.session_id))
        await self.release.wait()
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id()))


async def test_a_task_assigned_through_a_non_owner_completes_with_the_same_result(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str
) -> None:
    devices = device_configs(peer, 4)
    ids = [d.device_id for d in devices]
    a = await runner.start("m-a", redis_server.url, devices, namespace=namespace)
    b = await runner.start("m-b", redis_server.url, devices, namespace=namespace)
    with trio.fail_after(20):
        await until(lambda: idle_under([a, b], ids) and len(a.owned) == 2, peer, [a, b])
    target = b.owned[0]

    remote = await a.assign_task_to_device("via-a", target, "List the files", {"path": "/tmp"})
    local = await b.assign_task_to_device("on-b", target, "List the files")
    assert isinstance(remote, TaskResult)
    assert remote.ok and remote.task_id == "via-a" and remote.device_id == target
    assert remote.result == local.result == TASK_END_COMPLETED.result
    assert (remote.status, remote.error, remote.error_type) == (local.status, local.error, local.error_type)
    assert remote.timings is not None and remote.timings.run_s is not None
    tasks = peer.frames_of(ClientMessageType.TASK)
    assert [t.session_id for t in tasks] == ["fleet@via-a", "fleet@on-b"]
    assert tasks[0].target_id == target and tasks[0].metadata == {"task_data": {"path": "/tmp"}}
    (link,) = peer.registered()[f"fleet@{target}"]
    assert tasks[0] in link.conn.received  # it went over b's link: b owns the device

    # Refusals come back as the manager's own types: a task id still pending at the owner is a duplicate.
    held = HeldTasks()
    peer.task_handler = held
    async with trio.open_nursery() as nursery:
        results: list[TaskResult] = []

        async def first() -> None:
            results.append(await a.assign_task_to_device("busy-1", target, "wait"))

        nursery.start_soon(first)
        await peer.wait_for(lambda: held.seen == ["fleet@busy-1"])
        with pytest.raises(DuplicateTaskId, match="task 'busy-1' is already pending"):
            await a.assign_task_to_device("busy-1", target, "again")
        # A caller that gives up while its task is queued behind busy-1: the owner never sends it.
        with trio.move_on_after(RENEW) as gave_up:
            await a.assign_task_to_device("queued", target, "never sent")
        assert gave_up.cancelled_caught
        held.release.set()
    assert results[0].ok
    followup = await a.assign_task_to_device("after", target, "List the files")
    assert followup.ok
    assert held.seen == ["fleet@busy-1", "fleet@after"]  # "queued" was cancelled before it reached the device

    with pytest.raises(UnknownDevice) as unknown:
        await a.assign_task_to_device("x", "dev-99", "nothing")
    assert "unknown device 'dev-99'; registered devices: 'dev-00', 'dev-01', 'dev-02', 'dev-03'" == str(unknown.value)


async def test_a_member_that_leaves_releases_its_devices_and_the_status_shows_them_unowned(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str
) -> None:
    devices = device_configs(peer, 3)
    ids = [d.device_id for d in devices]
    a = await runner.start("m-a", redis_server.url, devices, namespace=namespace)
    with trio.fail_after(20):
        await until(lambda: idle_under([a], ids), peer, [a])
    await a.publish_now()
    async with open_redis_registry(redis_server.url, namespace=namespace) as registry:
        before = await registry.read_fleet()
        await runner.stop_and_wait("m-a")
        # Leaving released every lease and marked the devices disconnected and unowned.
        snapshot = await registry.read_fleet()
    assert [(r.status, r.owner) for r in before.devices] == [("idle", "m-a")] * 3
    rows = fleet_rows(snapshot)
    assert [(r["status"], r["owner"], r["stale"]) for r in rows] == [("disconnected", None, False)] * 3
    table = render_fleet_table(snapshot)
    assert "no live members" in table and "3 devices: 3 disconnected; 3 unowned" in table


def test_redis_urls_are_parsed_and_never_shown_with_their_password() -> None:
    target = parse_redis_url("rediss://fleet:p%40ss@redis.example:6380/2")
    assert (target.host, target.port, target.database, target.tls) == ("redis.example", 6380, 2, True)
    assert (target.username, target.password) == ("fleet", "p@ss")
    assert "p%40ss" not in target.display and "p@ss" not in target.display and "***" in target.display
    assert parse_redis_url("redis://localhost").port == 6379
    for bad, why in [
        ("http://h:1", "scheme must be one of"),
        ("redis://:pw@/0", "no host"),
        ("redis://h/x", "database number"),
        ("redis://h:99999", "invalid Redis URL"),
        ("redis://:secret@h/0?x=1", "query strings"),
    ]:
        with pytest.raises(ValueError, match=why) as caught:
            parse_redis_url(bad)
        assert "secret" not in str(caught.value)


async def test_a_redis_that_lost_its_data_is_refilled_and_the_devices_come_back(
    redis_server: RedisServer, peer: FencedPeer, runner: MemberRunner, namespace: str
) -> None:
    devices = device_configs(peer, 10)
    ids = [d.device_id for d in devices]
    async with trio.open_nursery() as starting:
        starting.start_soon(partial(runner.start, "m-a", redis_server.url, devices, namespace=namespace))
        starting.start_soon(partial(runner.start, "m-b", redis_server.url, devices, namespace=namespace))
    a, b = runner.members["m-a"], runner.members["m-b"]
    with trio.fail_after(20):
        await until(lambda: shares([a, b], 5, 5) and idle_under([a, b], ids), peer, [a, b])

    # Redis restarts without persistence: every key of the fleet is gone (leases, catalog, records, members).
    inspector = await glide.GlideClient.create(
        glide.GlideClientConfiguration([glide.NodeAddress("127.0.0.1", redis_server.port)])
    )
    try:
        wipe = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1"
        await inspector.custom_command(["EVAL", wipe, "0", f"{namespace}:*"])
        assert await inspector.custom_command(["KEYS", f"{namespace}:*"]) == []
    finally:
        await inspector.close()

    def reconnected() -> bool:  # every device's first link ended and a second one is up
        links = Counter(r.client_id for r in peer.registrations)
        return all(links[f"fleet@{d}"] >= 2 for d in ids)

    with a.subscribe() as a_events, b.subscribe() as b_events:
        with trio.fail_after(20):
            await until(
                lambda: reconnected() and shares([a, b], 5, 5) and idle_under([a, b], ids),
                peer,
                [a, b],
            )
        lost = [e.device_id for e in a_events.pending() + b_events.pending() if e.kind is FleetEventKind.LEASE_LOST]
    assert sorted(lost) == ids  # every renewal found its lease gone: each device was dropped, then taken again
    assert one_registration_each(peer, ids)
    for member in (a, b):
        await member.publish_now()
    rows = await read_fleet_status(redis_server.url, namespace=namespace)
    assert [(r["device_id"], r["status"], r["stale"]) for r in rows] == [(d, "idle", False) for d in ids]
