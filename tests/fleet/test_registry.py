"""The registry contract, run against both implementations: the in-memory one and Redis (its Lua scripts).

Compare-and-renew, compare-and-delete and fenced writes are what keep two members from owning one device, so they
are checked here call by call, on both registries, with the same expectations.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import msgspec
import pytest
import trio

from galaxy_trio.fleet import DeviceUpdate, FleetRegistry, MemberRecord, MemoryRegistry, RegistryUnavailable

from .conftest import RedisServer, require_redis


@pytest.fixture(params=["memory", "redis"])
def registry_kind(request: pytest.FixtureRequest) -> str:
    # A plain fixture, so that a missing redis-server or client skips with its reason (pytest-trio's async
    # fixtures report skips without one).
    if request.param == "redis":
        require_redis()
    return str(request.param)


@pytest.fixture
async def registry(registry_kind: str, request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[FleetRegistry]:
    if registry_kind == "memory":
        yield MemoryRegistry()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    from galaxy_trio.fleet.redis import open_redis_registry

    async with open_redis_registry(server.url, namespace=namespace, mail_block=0.2) as redis_registry:
        yield redis_registry


def member(member_id: str) -> MemberRecord:
    return MemberRecord(member_id=member_id, task_name="fleet", host="h", pid=1, started_at=0.0)


def update(device_id: str, status: str, *events: bytes) -> DeviceUpdate:
    profile = msgspec.json.encode({"device_id": device_id, "status": status, "capabilities": ["shell"]})
    return DeviceUpdate(device_id=device_id, status=status, profile=profile, events=events)


async def test_acquire_is_set_if_absent_in_order_of_preference(registry: FleetRegistry) -> None:
    assert await registry.acquire("m1", ["d1", "d2", "d3"], 1, 30.0) == ["d1"]
    assert await registry.acquire("m2", ["d1", "d2", "d3"], 2, 30.0) == ["d2", "d3"]  # d1 is taken: skipped
    assert await registry.acquire("m2", ["d1"], 1, 30.0) == []
    assert await registry.acquire("m1", ["d1", "d4"], 2, 30.0) == ["d1", "d4"]  # its own lease counts (and extends)
    assert await registry.owners(["d1", "d2", "d3", "d4", "d5"]) == ["m1", "m2", "m2", "m1", None]
    assert await registry.acquire("m3", ["d5"], 0, 30.0) == []  # need 0: takes nothing


async def test_renew_and_release_only_touch_leases_still_held(registry: FleetRegistry) -> None:
    await registry.acquire("m1", ["d1"], 1, 30.0)
    await registry.acquire("m2", ["d2"], 1, 30.0)
    assert await registry.renew("m2", ["d1", "d2", "d9"], 30.0) == ["d2"]  # compare-and-renew
    assert await registry.release("m2", ["d1", "d2"]) == ["d2"]  # compare-and-delete
    assert await registry.owners(["d1", "d2"]) == ["m1", None]
    assert await registry.renew("m2", ["d2"], 30.0) == []  # a released lease is not renewed back into life


async def test_device_state_is_written_only_by_the_lease_holder(registry: FleetRegistry) -> None:
    await registry.join_fleet("fleet", ["d1", "d2"])
    await registry.acquire("m1", ["d1"], 1, 30.0)
    await registry.acquire("m2", ["d2"], 1, 30.0)
    fenced = await registry.publish("m1", [update("d1", "idle", b'{"kind":"status","n":1}'), update("d2", "busy")])
    assert fenced == ["d2"]
    snapshot = await registry.read_fleet()
    records = {r.device_id: r for r in snapshot.devices}
    assert (records["d1"].status, records["d1"].owner, records["d1"].reported_by) == ("idle", "m1", "m1")
    assert records["d1"].profile == {"device_id": "d1", "status": "idle", "capabilities": ["shell"]}
    assert (records["d2"].status, records["d2"].owner, records["d2"].profile) == (None, "m2", None)
    assert await registry.read_events(10) == [{"kind": "status", "n": 1}]
    # Releasing marks the device unowned and disconnected, and records why, in one step.
    assert await registry.release("m1", ["d1"], [b'{"kind":"lease_released"}']) == ["d1"]
    record = {r.device_id: r for r in (await registry.read_fleet()).devices}["d1"]
    assert (record.status, record.owner, record.reported_by, record.stale) == ("disconnected", None, None, False)
    assert [e["kind"] for e in await registry.read_events(10)] == ["status", "lease_released"]


async def test_the_fleet_keeps_its_first_task_name_and_catalog(registry: FleetRegistry) -> None:
    assert await registry.join_fleet("fleet", ["d2", "d1"]) == "fleet"
    assert await registry.join_fleet("other", ["d3"]) == "fleet"
    assert await registry.fleet_device_ids() == ["d1", "d2", "d3"]
    assert (await registry.read_fleet()).task_name == "fleet"


async def test_members_beat_and_leave(registry: FleetRegistry) -> None:
    assert await registry.beat(member("m2"), 30.0) == ["m2"]
    assert await registry.beat(member("m1"), 30.0) == ["m1", "m2"]
    assert [m.member_id for m in (await registry.read_fleet()).members] == ["m1", "m2"]
    await registry.leave("m2")
    assert await registry.beat(member("m1"), 30.0) == ["m1"]
    assert [m.member_id for m in (await registry.read_fleet()).members] == ["m1"]


async def test_mail_is_delivered_once_in_order(registry: FleetRegistry) -> None:
    await registry.open_mailbox("m1")
    await registry.post_mail("m1", b"first")
    await registry.post_mail("m1", b"second")
    assert await registry.fetch_mail("m1") == [b"first", b"second"]
    await registry.post_mail("m1", b"third")
    assert await registry.fetch_mail("m1") == [b"third"]
    with trio.move_on_after(0.3) as waited:
        while not await registry.fetch_mail("m1"):
            pass  # the Redis read returns [] after its block time; the memory one simply waits
    assert waited.cancelled_caught  # nothing is delivered twice
    await registry.close_mailbox("m1")


async def test_reading_a_closed_mailbox_waits_like_an_empty_one(registry: FleetRegistry) -> None:
    # A member that leaves closes its mailbox while its reader may be between two reads (on Redis: an XREAD BLOCK
    # that returns during the close). The reader's next read must wait, as on an empty mailbox, until the member's
    # scope cancels it — not raise, which made a clean leave end in an error (found by benchmarks/bench_fleet.py).
    await registry.open_mailbox("m1")
    await registry.close_mailbox("m1")
    with trio.move_on_after(0.5) as waited:
        while True:
            assert await registry.fetch_mail("m1") == []
    assert waited.cancelled_caught


async def test_redis_lease_ttls_are_set_and_renewed_in_milliseconds(redis_server: RedisServer, namespace: str) -> None:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    from galaxy_trio.fleet.redis import open_redis_registry

    inspector = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", redis_server.port)]))
    try:
        async with open_redis_registry(redis_server.url, namespace=namespace) as registry:
            await registry.acquire("m1", ["d1"], 1, 1.5)
            first = await inspector.pttl(registry.lease_key("d1"))
            assert 0 < first <= 1500
            await registry.renew("m1", ["d1"], 60.0)
            assert 59_000 < await inspector.pttl(registry.lease_key("d1")) <= 60_000
            assert await inspector.get(registry.lease_key("d1")) == b"m1"
            await registry.beat(member("m1"), 2.0)
            assert 0 < await inspector.pttl(registry.member_key("m1")) <= 2000
    finally:
        await inspector.close()


@pytest.mark.usefixtures("glide_installed")
async def test_an_unreachable_redis_raises_registry_unavailable_without_the_password() -> None:
    from galaxy_trio.fleet.redis import open_redis_registry

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with open_redis_registry(f"redis://:hunter2@127.0.0.1:{port}/0", request_timeout=0.2) as registry:
        assert "hunter2" not in repr(registry) and "hunter2" not in registry.display_name
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.beat(member("m1"), 1.0)
    assert f"Redis at redis://:***@127.0.0.1:{port}/0: membership beat failed" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_release_records_an_event_only_for_the_devices_it_released(registry: FleetRegistry) -> None:
    await registry.acquire("m1", ["d1"], 1, 30.0)
    await registry.acquire("m2", ["d2"], 1, 30.0)
    released = await registry.release("m1", ["d1", "d2"], [b'{"kind":"lease_released","device_id":"d1"}', b"{}"])
    assert released == ["d1"]
    assert await registry.read_events(10) == [{"kind": "lease_released", "device_id": "d1"}]
    with pytest.raises(ValueError, match="1 events for 2 devices"):
        await registry.release("m2", ["d1", "d2"], [b"{}"])
