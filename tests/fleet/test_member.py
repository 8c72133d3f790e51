"""Fleet members on real managers and a scripted AIP server, with the in-memory registry (no Redis needed)."""

from __future__ import annotations

import pytest
import trio

from galaxy_trio.aip import ClientMessageType
from galaxy_trio.fleet import FleetMember, FleetMismatch, MemoryRegistry
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus, UnknownDevice

from ..manager.peer import TASK_END_COMPLETED
from .conftest import MemberRunner, device_configs, fleet_member, status_of, until
from .peers import FencedPeer


async def test_a_lone_member_with_the_default_registry_drives_every_device(peer: FencedPeer) -> None:
    devices = device_configs(peer, 5)
    async with fleet_member(None, devices, "solo") as member:
        ids = [d.device_id for d in devices]

        def all_idle() -> bool:
            return all(status_of(member, d) is DeviceStatus.IDLE for d in ids)

        await until(all_idle, peer, [member])
        assert sorted(member.owned) == ids
        assert sorted(peer.registered()) == [f"fleet@{d}" for d in ids]
        result = await member.assign_task_to_device("t1", "dev-03", "List the files")
        assert result.ok and result.result == TASK_END_COMPLETED.result
        await member.publish_now()
        snapshot = await member.read_fleet()
        assert [(r.device_id, r.owner, r.status) for r in snapshot.devices] == [(d, "solo", "idle") for d in ids]
    # Leaving handed every device back: links closed, nothing registered at the server.
    assert peer.registered() == {}


async def _two_members_settled(
    peer: FencedPeer, runner: MemberRunner, count: int
) -> tuple[FleetMember, FleetMember, list[str]]:
    """Members "a" and "b" on one in-memory registry, once every one of ``count`` devices is IDLE under its owner."""
    registry = MemoryRegistry()
    devices = device_configs(peer, count)
    ids = [d.device_id for d in devices]
    a = await runner.start("a", registry, devices)
    b = await runner.start("b", registry, devices)

    def settled() -> bool:
        return sorted(a.owned + b.owned) == ids and all(
            status_of(m, d) is DeviceStatus.IDLE for m in (a, b) for d in m.owned
        )

    await until(settled, peer, [a, b])
    return a, b, ids


async def test_members_sharing_a_registry_split_the_devices_and_route_tasks(
    peer: FencedPeer, runner: MemberRunner
) -> None:
    a, b, _ = await _two_members_settled(peer, runner, 6)
    assert len(a.owned) == len(b.owned) == 3
    # Each device is connected by its owner only.
    for member, other in ((a, b), (b, a)):
        for device_id in member.owned:
            assert status_of(other, device_id) is DeviceStatus.DISCONNECTED
    # A task for one of b's devices, asked of a, runs on b's link.
    target = b.owned[0]
    result = await a.assign_task_to_device("remote-1", target, "List the files", {"depth": 1})
    assert result.ok and result.task_id == "remote-1" and result.device_id == target
    assert result.result == TASK_END_COMPLETED.result
    (task,) = peer.frames_of(ClientMessageType.TASK)
    assert task.session_id == "fleet@remote-1" and task.target_id == target
    assert task.metadata == {"task_data": {"depth": 1}}
    (b_conn,) = [r.conn for r in peer.registered()[f"fleet@{target}"]]
    assert task in b_conn.received
    with pytest.raises(UnknownDevice, match="unknown device 'nope'; registered devices: 'dev-00'"):
        await a.assign_task_to_device("t2", "nope", "x")


async def test_a_member_with_another_task_name_is_refused(peer: FencedPeer) -> None:
    registry = MemoryRegistry()
    devices = device_configs(peer, 2)
    async with fleet_member(registry, devices, "a"):
        with pytest.raises(FleetMismatch, match="uses task_name 'fleet' but this manager uses 'other'"):
            async with fleet_member(registry, devices, "b", task_name="other"):
                pass  # pragma: no cover


async def test_invalid_member_settings_are_refused_before_joining(peer: FencedPeer) -> None:
    devices = device_configs(peer, 2)
    with pytest.raises(ValueError, match="member_id must be"):
        async with fleet_member(None, devices, "has space"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="devices listed twice: dev-00"):
        async with fleet_member(None, [*devices, devices[0]], "a"):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match="invalid lease timing"):
        async with fleet_member(None, devices, "a", lease_ttl=-1.0):
            pass  # pragma: no cover
    await trio.lowlevel.checkpoint()


async def test_the_server_fences_a_second_driver_and_the_owner_retries_until_the_first_is_gone(
    peer: FencedPeer,
) -> None:
    devices = device_configs(peer, 1)
    # Another manager with the fleet's task_name still drives dev-00 (say, a previous owner whose link the server
    # has not dropped yet): it holds the client_id "fleet@dev-00".
    async with ConstellationDeviceManager(task_name="fleet", reconnect_delay=0.05) as previous:
        assert await previous.register_device("dev-00", peer.url)
        async with fleet_member(None, devices, "solo") as member:
            await until(lambda: bool(peer.duplicates_refused), peer, [member])
            assert [client_id for _, client_id in peer.duplicates_refused][:1] == ["fleet@dev-00"]
            assert member.owns("dev-00")  # the lease is ours, but the server lets only one link drive the device
            assert len(peer.registered()["fleet@dev-00"]) == 1
            await previous.disconnect_device("dev-00")

            def idle() -> bool:
                return status_of(member, "dev-00") is DeviceStatus.IDLE

            await until(idle, peer, [member])
    first, *_, last = [r for r in peer.registrations if r.client_id == "fleet@dev-00"]
    assert first.ended is not None and first.ended <= last.started  # one driver at a time, first to last
    assert len(peer.duplicates_refused) >= 1


async def test_the_publisher_reads_only_the_devices_its_member_holds(
    peer: FencedPeer, runner: MemberRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each renew interval the publisher looks for moved heartbeats: on the member's own devices only, never by
    snapshotting every profile of the fleet (N/M reads per member, not N profile copies)."""
    a, _, _ = await _two_members_settled(peer, runner, 6)
    manager = a.manager
    owned = set(a.owned)
    read: list[str] = []
    snapshots: list[int] = []
    enough = trio.Event()  # three refresh rounds at least (renew interval 0.5 s), or one whole-fleet snapshot
    state_of, all_devices = manager.get_device_state, manager.get_all_devices

    def get_device_state(device_id: str) -> object:
        read.append(device_id)
        if len(read) >= 3 * len(owned):
            enough.set()
        return state_of(device_id)

    def get_all_devices() -> object:
        snapshots.append(1)
        enough.set()
        return all_devices()

    monkeypatch.setattr(manager, "get_device_state", get_device_state)
    monkeypatch.setattr(manager, "get_all_devices", get_all_devices)
    with trio.fail_after(30):
        await enough.wait()
    assert snapshots == []
    assert set(read) == owned and len(owned) == 3
