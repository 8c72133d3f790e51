"""The heartbeat clock: one heap of wake times and one task waking every IDLE device's own task, exactly on time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from galaxy_trio.manager.activate import HeartbeatClock


@asynccontextmanager
async def running_clock() -> AsyncIterator[tuple[HeartbeatClock, trio.Nursery]]:
    """A clock whose task runs for the block, and a nursery for the sleepers (it closes before the clock stops)."""
    clock = HeartbeatClock()
    async with trio.open_nursery() as outer:
        outer.start_soon(clock.run)
        async with trio.open_nursery() as sleepers:
            yield clock, sleepers
        outer.cancel_scope.cancel()


async def test_sleepers_wake_exactly_at_their_times_earliest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    woke: list[tuple[str, float]] = []
    start = trio.current_time()

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep_until(start + delay)
        woke.append((name, trio.current_time() - start))

    async with running_clock() as (clock, sleepers):
        for name, delay in [("c", 30.0), ("a", 10.0), ("b1", 20.0), ("b2", 20.0), ("d", 30.5)]:
            sleepers.start_soon(sleeper, name, delay)
    # b1 and b2 wake in the same instant (trio runs the tasks of one instant in an order of its choosing).
    assert [at for _, at in woke] == [10.0, 20.0, 20.0, 30.0, 30.5]
    assert sorted(woke) == [("a", 10.0), ("b1", 20.0), ("b2", 20.0), ("c", 30.0), ("d", 30.5)]
    assert clock.sleepers == 0


async def test_an_earlier_time_than_the_clock_is_sleeping_towards_wakes_it_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    woke: list[float] = []

    async def sleeper(delay: float) -> None:
        await clock.sleep_until(start + delay)
        woke.append(trio.current_time() - start)

    async with running_clock() as (clock, sleepers):
        sleepers.start_soon(sleeper, 100.0)
        await trio.testing.wait_all_tasks_blocked()  # the clock now sleeps towards 100 s
        sleepers.start_soon(sleeper, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        sleepers.start_soon(sleeper, 0.0)  # already due: woken at once, not at 5 s
    assert woke == [0.0, 5.0, 100.0]


async def test_a_cancelled_sleeper_is_dropped_and_the_others_still_wake_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    woke: list[float] = []
    cancelled = trio.CancelScope()

    async def doomed() -> None:
        with cancelled:
            await clock.sleep_until(start + 5.0)
        woke.append(trio.current_time() - start)

    async with running_clock() as (clock, sleepers):
        sleepers.start_soon(clock.sleep_until, start + 10.0)  # woken: ends at 10 s
        sleepers.start_soon(doomed)
        await trio.sleep(1.0)
        assert clock.sleepers == 2
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [1.0]  # the cancellation came through at once, not at the sleeper's time
        assert clock.sleepers == 2  # its entry stays, marked dead, until its time comes
        await trio.sleep(5.0)
        assert clock.sleepers == 1  # dropped at 5 s without waking anything
    assert trio.current_time() - start == 10.0


async def test_a_sleeper_already_cancelled_does_not_sleep() -> None:
    async with running_clock() as (clock, _):
        with trio.CancelScope() as scope:
            scope.cancel()
            await clock.sleep_until(trio.current_time() + 1000.0)
            pytest.fail("sleep_until must be a checkpoint that raises Cancelled")  # pragma: no cover
        assert scope.cancelled_caught


async def test_a_woken_task_that_stalls_does_not_delay_the_other_sleepers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The clock only wakes: a device whose send stalls (its peer's socket full) holds up its own task alone."""
    start = trio.current_time()
    beats: dict[str, list[float]] = {"stalled": [], "healthy": []}
    stall = trio.Event()

    async def device(name: str, interval: float) -> None:
        due = start + interval
        while len(beats[name]) < 5:
            await clock.sleep_until(due)
            beats[name].append(trio.current_time() - start)
            if name == "stalled":
                await stall.wait()  # a send that never completes
            due += interval

    async with running_clock() as (clock, sleepers):
        sleepers.start_soon(device, "stalled", 10.0)
        sleepers.start_soon(device, "healthy", 10.0)
        await trio.sleep(60.0)
        stall.set()
    assert beats["healthy"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert beats["stalled"][0] == 10.0 and beats["stalled"][1] == 60.0
