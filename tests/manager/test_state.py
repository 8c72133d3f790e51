"""DeviceState snapshots: phase, attempt and their times through an attempt; queue depth and current task."""

from __future__ import annotations

import time

import msgspec
import pytest
import trio
import trio.testing

from galaxy_trio import DeviceState as TopLevelDeviceState
from galaxy_trio.aip import ClientMessage, ClientMessageType, new_id
from galaxy_trio.config import DeviceConfig
from galaxy_trio.manager import ConstellationDeviceManager, DeviceState, DeviceStatus, EventKind, UnknownDevice

from .peer import TASK_ACK, TASK_END_COMPLETED, Conn, ScriptedPeer, patched


def _config(device_id: str, url: str, **fields: object) -> DeviceConfig:
    return DeviceConfig(device_id=device_id, server_url=url, **fields)  # type: ignore[arg-type]


async def test_state_follows_an_attempt_through_its_phases(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.answer_register = False
    before = time.time()
    manager.add_device(_config("dev", peer.url, max_retries=10))
    await peer.wait_for(lambda: peer.registers == 1)
    state = manager.get_device_state("dev")
    assert state.status is DeviceStatus.REGISTERING and state.phase == "register" and state.attempt == 1
    assert before <= state.phase_since <= time.time()
    assert state.last_heartbeat_at is None and state.idle_since is None
    assert state.queue_depth == 0 and state.current_task is None and state.failure_reason is None

    # The register timeout (5 s) ends the attempt: between attempts there is no phase.
    with manager.subscribe() as events:
        async for event in events:
            if event.kind is EventKind.STATUS and event.new_status is DeviceStatus.DISCONNECTED:
                break
    backing_off = manager.get_device_state("dev")
    assert backing_off.status is DeviceStatus.DISCONNECTED and backing_off.phase is None
    assert backing_off.attempt == 1 and backing_off.phase_since >= state.phase_since

    # The next attempt stalls in telemetry (no DEVICE_INFO answer, telemetry_timeout 2 s), then becomes active.
    peer.answer_register = True
    peer.answer_device_info = False
    await peer.wait_for(lambda: len(peer.frames_of(ClientMessageType.DEVICE_INFO_REQUEST)) == 1)
    telemetry = manager.get_device_state("dev")
    assert telemetry.phase == "telemetry" and telemetry.attempt == 2
    assert telemetry.status is DeviceStatus.REGISTERING
    profile = await manager.wait_for_device("dev")
    assert profile.status is DeviceStatus.IDLE
    active = manager.get_device_state("dev")
    assert active.phase == "active" and active.attempt == 0 and active.status is DeviceStatus.IDLE
    assert active.idle_since is not None and active.last_heartbeat_at is not None
    assert active.phase_since >= telemetry.phase_since

    # A heartbeat reply moves last_heartbeat_at on (wall clock: at least as late as the confirmation).
    confirmed_at = active.last_heartbeat_at
    await peer.wait_for(lambda: len(peer.frames_of(ClientMessageType.HEARTBEAT)) == 1)
    await trio.testing.wait_all_tasks_blocked()
    beat = manager.get_device_state("dev").last_heartbeat_at
    assert beat is not None and beat >= confirmed_at


async def test_a_stalled_connect_shows_the_connect_phase_and_failure_reason(
    manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    # A TCP listener that never answers the WebSocket handshake: the attempt stays in "connect".
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    try:
        manager.add_device(_config("mute", f"ws://127.0.0.1:{port}/ws", max_retries=1))
        await trio.testing.wait_all_tasks_blocked()
        state = manager.get_device_state("mute")
        assert state.phase == "connect" and state.status is DeviceStatus.CONNECTING and state.attempt == 1
        await manager.wait_for_device("mute")
        failed = manager.get_device_state("mute")
        assert failed.status is DeviceStatus.FAILED and failed.phase is None
        assert failed.failure_reason is not None and "connect timed out after 5s" in failed.failure_reason
    finally:
        await listener.aclose()


class HeldTasks:
    """Acks each task and holds it until ``release`` is set."""

    def __init__(self) -> None:
        self.started = 0
        self.release = trio.Event()

    async def __call__(self, peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        self.started += 1
        await conn.send(patched(TASK_ACK, session_id=task.session_id))
        await self.release.wait()
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id()))


async def test_queue_depth_and_current_task_while_a_task_runs(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    assert await manager.register_device("dev", peer.url)
    peer.task_handler = held = HeldTasks()
    async with trio.open_nursery() as nursery:
        for task_id in ("t1", "t2", "t3"):
            nursery.start_soon(manager.assign_task_to_device, task_id, "dev", "x")
            await trio.testing.wait_all_tasks_blocked()
        busy = manager.get_device_state("dev")
        assert held.started == 1
        assert busy.status is DeviceStatus.BUSY and busy.current_task == "t1" and busy.queue_depth == 2
        assert busy.idle_since is None and busy.phase == "active"
        held.release.set()
    done = manager.get_device_state("dev")
    assert done.status is DeviceStatus.IDLE and done.current_task is None and done.queue_depth == 0
    assert done.idle_since is not None and done.idle_since >= busy.phase_since


async def test_snapshots_are_frozen_serialisable_and_unknown_ids_are_refused(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    assert TopLevelDeviceState is DeviceState
    assert manager.get_all_device_states() == {}
    assert await manager.register_device("a", peer.url)
    manager.add_device(_config("b", peer.url, auto_connect=False))
    states = manager.get_all_device_states()
    assert sorted(states) == ["a", "b"]
    assert states["a"].status is DeviceStatus.IDLE and states["b"].status is DeviceStatus.DISCONNECTED
    assert states["b"].phase is None and states["b"].attempt == 0 and states["b"].last_heartbeat_at is None
    with pytest.raises(AttributeError):
        states["a"].queue_depth = 5  # type: ignore[misc]
    decoded = msgspec.json.decode(msgspec.json.encode(states["a"]), type=DeviceState)
    assert decoded == states["a"]
    with pytest.raises(UnknownDevice, match="registered devices: 'a', 'b'"):
        manager.get_device_state("ghost")
