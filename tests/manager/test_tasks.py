"""Tasks on the manager: FIFO queue per device, one task at a time, cancellation, rejection, disconnection."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from galaxy_trio.aip import ClientMessage, ClientMessageType, ClientType, new_id
from galaxy_trio.manager import (
    ConstellationDeviceManager,
    DeviceNotConnected,
    DeviceStatus,
    DuplicateTaskId,
    EventKind,
    TaskQueueFull,
    TaskResult,
    UnknownDevice,
)

from .peer import TARGET_NOT_CONNECTED, TASK_ACK, TASK_END_COMPLETED, Conn, ScriptedPeer, patched


class SlowDevice:
    """A task handler that holds each task until released, and checks that tasks never overlap."""

    def __init__(self) -> None:
        self.running: list[str] = []
        self.order: list[str] = []
        self.peak = 0
        self.release = trio.Event()
        self.ack = True

    async def __call__(self, peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        assert task.session_id is not None
        self.running.append(task.session_id)
        self.order.append(task.session_id)
        self.peak = max(self.peak, len(self.running))
        peer._notify()
        if self.ack:
            await conn.send(patched(TASK_ACK, session_id=task.session_id))
        await self.release.wait()
        self.running.remove(task.session_id)
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id()))


@pytest.fixture
async def idle(peer: ScriptedPeer, manager: ConstellationDeviceManager) -> str:
    # Enough retries that a test which restarts the peer never sees the device give up by chance (full jitter).
    assert await manager.register_device("dev", peer.url, max_retries=100)
    return "dev"


async def test_a_task_round_trip_returns_the_task_end_result(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    result = await manager.assign_task_to_device("t1", idle, "List the files")
    assert isinstance(result, TaskResult)
    assert result.ok and result.status == "completed" and result.error is None and result.error_type is None
    assert result.result == TASK_END_COMPLETED.result
    assert result.timings is not None and result.timings.run_s is not None and result.timings.total_s >= 0
    (task,) = peer.frames_of(ClientMessageType.TASK)
    assert task.session_id == "tt@t1"
    assert task.task_name == "galaxy/tt/t1"
    assert task.client_id == "tt@dev" and task.target_id == "dev"
    assert task.client_type is ClientType.CONSTELLATION
    assert task.request == "List the files"
    profile = manager.get_device_info(idle)
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.current_task_id is None


async def test_tasks_queue_in_fifo_order_and_never_overlap(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    device = SlowDevice()
    peer.task_handler = device
    results: dict[str, TaskResult] = {}

    async def submit(task_id: str) -> None:
        results[task_id] = await manager.assign_task_to_device(task_id, idle, f"do {task_id}")

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(submit, f"t{i}")
            await trio.testing.wait_all_tasks_blocked()
        profile = manager.get_device_info(idle)
        assert profile is not None and profile.status is DeviceStatus.BUSY and profile.current_task_id == "t0"
        for _ in range(5):
            device.release.set()
            device.release = trio.Event()
            await trio.testing.wait_all_tasks_blocked()
    assert device.order == [f"tt@t{i}" for i in range(5)]
    assert device.peak == 1
    assert all(r.ok for r in results.values())


async def test_a_full_queue_refuses_at_once(peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str) -> None:
    peer.task_handler = device = SlowDevice()
    size = manager.settings.task_queue_size
    async with trio.open_nursery() as nursery:
        for i in range(size + 1):  # one running, `size` queued
            nursery.start_soon(manager.assign_task_to_device, f"t{i}", idle, "x")
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(TaskQueueFull, match="task_queue_size"):
            await manager.assign_task_to_device("one-too-many", idle, "x")
        nursery.cancel_scope.cancel()
    device.release.set()


async def test_refusals_name_what_is_wrong(peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str) -> None:
    with pytest.raises(UnknownDevice, match="registered devices: 'dev'"):
        await manager.assign_task_to_device("t1", "ghost", "x")
    peer.task_handler = device = SlowDevice()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.assign_task_to_device, "same", idle, "x")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(DuplicateTaskId):
            await manager.assign_task_to_device("same", idle, "x")
        device.release.set()
    await manager.disconnect_device(idle)
    with pytest.raises(DeviceNotConnected, match="Registered devices: dev"):
        await manager.assign_task_to_device("t2", idle, "x")


async def test_cancelling_a_queued_task_removes_it_so_it_is_never_sent(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    peer.task_handler = device = SlowDevice()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.assign_task_to_device, "first", idle, "x")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as queued_scope:
            nursery.start_soon(_cancel_soon, queued_scope)
            await manager.assign_task_to_device("queued", idle, "x")
        assert queued_scope.cancelled_caught
        device.release.set()
    assert device.order == ["tt@first"]
    # and the device still serves the next task
    result = await manager.assign_task_to_device("after", idle, "x")
    assert result.ok and device.order == ["tt@first", "tt@after"]


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def test_cancelling_a_running_task_keeps_the_device_busy_until_its_task_end(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    peer.task_handler = device = SlowDevice()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_soon, scope)
            await manager.assign_task_to_device("running", idle, "x")
    assert scope.cancelled_caught
    profile = manager.get_device_info(idle)
    assert profile is not None and profile.status is DeviceStatus.BUSY and profile.current_task_id == "running"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.assign_task_to_device, "next", idle, "x")
        await trio.testing.wait_all_tasks_blocked()
        assert device.order == ["tt@running"]  # "next" waits: tasks never overlap
        device.release.set()
    assert device.order == ["tt@running", "tt@next"] and device.peak == 1


async def test_a_server_error_before_the_ack_rejects_the_task_at_once(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def reject(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        await conn.send(TARGET_NOT_CONNECTED)

    peer.task_handler = reject
    start = trio.current_time()
    result = await manager.assign_task_to_device("t1", idle, "x")
    assert trio.current_time() == start
    assert result.status == "failed" and result.error_type == "rejected"
    assert result.error is not None and "is not connected" in result.error
    profile = manager.get_device_info(idle)
    assert profile is not None and profile.status is DeviceStatus.IDLE
    assert (await manager.assign_task_to_device("t2", idle, "x")).error_type == "rejected"


async def test_the_link_dropping_mid_task_fails_it_at_once(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str, autojump_clock: trio.testing.MockClock
) -> None:
    async def drop(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        await conn.send(patched(TASK_ACK, session_id=task.session_id))
        await conn.ws.aclose(1011, "boom")

    peer.task_handler = drop
    start = trio.current_time()
    result = await manager.assign_task_to_device("t1", idle, "x")
    assert trio.current_time() == start
    assert result.status == "failed" and result.error_type == "device_disconnection"


async def test_the_servers_device_disconnected_task_end_maps_to_device_disconnection(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    from galaxy_trio.aip import decode_server_message

    from .. import frames

    recorded = decode_server_message(frames.raw("device_disconnect_midtask", 8))

    async def device_gone(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        await conn.send(patched(recorded, session_id=task.session_id))

    peer.task_handler = device_gone
    result = await manager.assign_task_to_device("t1", idle, "x")
    assert result.error_type == "device_disconnection" and result.error == recorded.error


async def test_queued_tasks_survive_a_reconnection(
    nursery: trio.Nursery,
    peer: ScriptedPeer,
    manager: ConstellationDeviceManager,
    idle: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer.stop()
    await trio.testing.wait_all_tasks_blocked()
    results: list[TaskResult] = []

    async def submit(task_id: str) -> None:
        results.append(await manager.assign_task_to_device(task_id, idle, "x"))

    async with trio.open_nursery() as tasks:
        tasks.start_soon(submit, "a")
        await trio.testing.wait_all_tasks_blocked()
        tasks.start_soon(submit, "b")
        await trio.sleep(3.0)
        assert results == []
        await nursery.start(peer.serve)
    assert [r.task_id for r in results] == ["a", "b"] and all(r.ok for r in results)


async def test_queued_tasks_fail_at_once_when_the_device_fails(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    idle = "dev"
    assert await manager.register_device(idle, peer.url, max_retries=3)
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    with manager.subscribe() as events:
        peer.stop()
        async for event in events:
            if event.new_status is DeviceStatus.DISCONNECTED:
                break
    result = await manager.assign_task_to_device("a", idle, "x")
    assert result.status == "failed" and result.error_type == "device_failed"
    assert result.error is not None and "gave up after" in result.error


async def test_the_default_task_timeout_covers_queue_time(
    peer: ScriptedPeer, idle: str, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.task_handler = SlowDevice()
    timeout = manager.settings.task_timeout
    start = trio.current_time()
    first, second = [], []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, manager, "a", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_collect, manager, "b", second)
    assert first[0].error_type == "timeout" and second[0].error_type == "timeout"
    assert trio.current_time() - start == timeout
    assert second[0].timings is not None and second[0].timings.started_at is None


async def test_a_callers_own_deadline_replaces_the_default(
    peer: ScriptedPeer, idle: str, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.task_handler = SlowDevice()
    start = trio.current_time()
    with trio.move_on_after(7.0):
        await manager.assign_task_to_device("a", idle, "x")
    assert trio.current_time() - start == 7.0


async def _collect(manager: ConstellationDeviceManager, task_id: str, into: list[TaskResult]) -> None:
    into.append(await manager.assign_task_to_device(task_id, "dev", "x"))


async def test_task_end_for_an_unknown_session_is_ignored(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    async def inject_then_complete(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        await conn.send(patched(TASK_END_COMPLETED, session_id="someone@else", result="forged"))
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, result="real"))

    peer.task_handler = inject_then_complete
    result = await manager.assign_task_to_device("t1", idle, "x")
    assert result.ok and result.result == "real"


async def test_task_events_are_published(peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str) -> None:
    with manager.subscribe() as events:
        await manager.assign_task_to_device("t1", idle, "x")
        kinds = [event.kind for event in events.pending() if event.task_id == "t1"]
    assert kinds == [EventKind.TASK_QUEUED, EventKind.TASK_STARTED, EventKind.TASK_FINISHED]


async def test_a_huge_error_text_from_the_server_is_bounded(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, idle: str
) -> None:
    huge = "x" * 200_000

    async def reject(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        from galaxy_trio.aip import builders, encode_text

        await conn.send(encode_text(builders.server_error(huge)))

    peer.task_handler = reject
    result = await manager.assign_task_to_device("t1", idle, "x")
    assert result.error_type == "rejected" and result.error is not None
    assert len(result.error) < 1000 and "more characters" in result.error
