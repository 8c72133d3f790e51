"""max_concurrent_tasks: a limit on tasks running at once across the whole manager (on trio's MockClock)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from galaxy_trio.aip import ClientMessage, new_id
from galaxy_trio.config import ManagerSettings
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus, TaskResult

from .peer import TASK_ACK, TASK_END_COMPLETED, Conn, ScriptedPeer, patched

WORK = 10.0  # seconds each task takes on the device side


class Workers:
    """Every task takes WORK seconds on the device; records how many ran at once across all devices."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.sent: list[str] = []

    async def __call__(self, peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        assert task.session_id is not None
        self.sent.append(task.session_id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        await conn.send(patched(TASK_ACK, session_id=task.session_id))
        await trio.sleep(WORK)
        self.running -= 1
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id()))


@pytest.fixture
async def limited(peer: ScriptedPeer) -> AsyncIterator[ConstellationDeviceManager]:
    settings = ManagerSettings(task_name="tt", max_concurrent_tasks=2, task_timeout=1000.0)
    async with ConstellationDeviceManager(settings=settings) as manager:
        for n in range(4):
            assert await manager.register_device(f"dev{n}", peer.url)
        yield manager


async def test_never_more_than_the_limit_run_at_once_and_all_finish(
    peer: ScriptedPeer, limited: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.task_handler = workers = Workers()
    results: list[TaskResult] = []

    async def submit(device_id: str) -> None:
        results.append(await limited.assign_task_to_device(f"task-{device_id}", device_id, "x"))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(submit, f"dev{n}")
        await trio.testing.wait_all_tasks_blocked()
        states = limited.get_all_device_states()
        assert sorted(s.status.value for s in states.values()) == ["busy", "busy", "idle", "idle"]
    assert workers.peak == 2 and len(workers.sent) == 4
    assert sorted(r.device_id for r in results) == ["dev0", "dev1", "dev2", "dev3"] and all(r.ok for r in results)
    # Two waves of WORK seconds each; the second wave's queue time shows in its timings.
    assert trio.current_time() - start == 2 * WORK
    waited = sorted(r.timings.queued_s for r in results if r.timings is not None)
    assert waited == [0.0, 0.0, WORK, WORK]


async def test_a_task_waiting_for_capacity_obeys_the_callers_deadline_and_is_never_sent(
    peer: ScriptedPeer, limited: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.task_handler = workers = Workers()
    late: list[TaskResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limited.assign_task_to_device, "a", "dev0", "x")
        nursery.start_soon(limited.assign_task_to_device, "b", "dev1", "x")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with trio.move_on_after(3.0) as scope:
            await limited.assign_task_to_device("c", "dev2", "x")
        assert scope.cancelled_caught and trio.current_time() - start == 3.0
        state = limited.get_device_state("dev2")
        assert state.status is DeviceStatus.IDLE and state.current_task is None
        # The abandoned wait took no place under the limit: the next task runs once one frees up.
        nursery.start_soon(_collect, limited, "d", "dev3", late)
    assert sorted(workers.sent) == ["tt@a", "tt@b", "tt@d"] and workers.peak == 2
    assert late[0].ok and late[0].timings is not None and late[0].timings.queued_s == WORK - 3.0


async def test_the_default_task_timeout_covers_the_wait_for_capacity(
    peer: ScriptedPeer, autojump_clock: trio.testing.MockClock
) -> None:
    peer.task_handler = workers = Workers()
    settings = ManagerSettings(task_name="tt", max_concurrent_tasks=1, task_timeout=4.0)
    async with ConstellationDeviceManager(settings=settings) as manager:
        assert await manager.register_device("a", peer.url)
        assert await manager.register_device("b", peer.url)
        first: list[TaskResult] = []
        second: list[TaskResult] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, manager, "t1", "a", first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(_collect, manager, "t2", "b", second)
    assert first[0].error_type == "timeout" and second[0].error_type == "timeout"
    assert second[0].timings is not None and second[0].timings.started_at is None
    assert workers.sent == ["tt@t1"]


async def _collect(manager: ConstellationDeviceManager, task_id: str, device_id: str, into: list[TaskResult]) -> None:
    into.append(await manager.assign_task_to_device(task_id, device_id, "x"))
