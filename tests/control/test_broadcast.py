"""The SSE fan-out: bounded per client, drops counted exactly, a stalled client parked at no cost per event."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from galaxy_trio.control.broadcast import Broadcast, QueueClosed


async def test_every_client_gets_every_item_in_order() -> None:
    hub: Broadcast[int] = Broadcast()
    a, b = hub.open(10), hub.open(10)
    for n in range(5):
        hub.publish(n)
    assert [await a.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert [await b.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert a.dropped == b.dropped == 0


async def test_a_full_queue_is_parked_and_counts_what_it_missed_then_resumes() -> None:
    hub: Broadcast[int] = Broadcast()
    slow, fast = hub.open(3), hub.open(100)
    for n in range(10):
        hub.publish(n)
    assert slow.dropped == 7 and fast.dropped == 0
    assert [await slow.get() for _ in range(3)] == [0, 1, 2]  # the first three were kept
    assert slow.dropped == 7
    hub.publish(10)
    hub.publish(11)
    assert await slow.get() == 10 and await slow.get() == 11  # back in the stream after reading
    assert slow.dropped == 7
    assert [await fast.get() for _ in range(12)] == list(range(12))


async def test_a_parked_queue_is_not_touched_by_publishing() -> None:
    hub: Broadcast[int] = Broadcast()
    stalled = hub.open(1)
    hub.publish(0)
    hub.publish(1)
    assert stalled not in hub._active and stalled in hub._parked  # noqa: SLF001 - the parking itself is the point
    for n in range(1000):
        hub.publish(n)
    assert stalled.dropped == 1001


async def test_a_waiting_reader_is_woken_and_close_ends_it_after_draining() -> None:
    hub: Broadcast[str] = Broadcast()
    queue = hub.open(4)
    got: list[str] = []

    async def read() -> None:
        with pytest.raises(QueueClosed):
            while True:
                got.append(await queue.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish("a")
        hub.publish("b")
        hub.close()
    assert got == ["a", "b"]
    late = hub.open(4)
    with pytest.raises(QueueClosed):
        await late.get()


async def test_a_client_that_leaves_receives_nothing_more() -> None:
    hub: Broadcast[int] = Broadcast()
    queue = hub.open(2)
    hub.publish(1)
    hub.leave(queue)
    hub.publish(2)
    assert await queue.get() == 1 and queue.dropped == 0
    with pytest.raises(ValueError, match="capacity"):
        hub.open(0)


async def test_a_skipped_item_counts_as_missed_for_parked_clients_only() -> None:
    hub: Broadcast[int] = Broadcast()
    parked = hub.open(1)
    hub.publish(0)
    assert not hub.has_receivers
    hub.skip()
    hub.skip()
    assert parked.dropped == 2
    assert await parked.get() == 0
    assert hub.has_receivers


async def test_get_all_takes_the_whole_backlog_and_unparks() -> None:
    hub: Broadcast[int] = Broadcast()
    queue = hub.open(3)
    for n in range(5):
        hub.publish(n)
    assert await queue.get_all() == [0, 1, 2] and queue.dropped == 2
    hub.publish(5)
    assert await queue.get_all() == [5] and queue.dropped == 2
