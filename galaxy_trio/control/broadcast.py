"""The control plane's own fan-out of manager events to its SSE clients: bounded per client, free when stalled.

The control server holds ONE subscription to the manager and republishes each event here. A client whose queue
is full (a browser tab in the background, a client that never reads) is *parked*: it receives nothing more until
it reads again, and what it missed is computed from the broadcast's sequence number instead of being counted
event by event. A hundred stalled clients therefore cost nothing per event — where a hundred overflowing memory
channels would each raise ``WouldBlock`` for every event.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

__all__ = ["Broadcast", "ClientQueue", "QueueClosed"]

T = TypeVar("T")


class QueueClosed(Exception):
    """The broadcast ended (the manager closed) and this client has read everything it was sent."""


class ClientQueue(Generic[T]):
    """One client's bounded queue; once full, later items are dropped (and counted in :attr:`dropped`)."""

    __slots__ = ("_broadcast", "_capacity", "_closed", "_dropped", "_full_since", "_items", "_wakeup")

    def __init__(self, broadcast: Broadcast[T], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._broadcast = broadcast
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._wakeup: trio.Event | None = None
        self._closed = False
        self._dropped = 0
        #: The broadcast's sequence number when this queue filled up (it is parked since), or None.
        self._full_since: int | None = None

    def __len__(self) -> int:
        """Items waiting to be read."""
        return len(self._items)

    @property
    def dropped(self) -> int:
        """Items this client missed because its queue was full."""
        parked = 0 if self._full_since is None else self._broadcast.published - self._full_since
        return self._dropped + parked

    def push(self, item: T) -> bool:
        """Queue ``item``; False when the queue is now full (the broadcast then parks it)."""
        self._items.append(item)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        if len(self._items) >= self._capacity:
            self._full_since = self._broadcast.published
            return False
        return True

    def close_queue(self) -> None:
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def get(self) -> T:
        """The oldest item, waiting for one; raises :class:`QueueClosed` once closed and drained."""
        await self._wait()
        item = self._items.popleft()
        self._resume()
        return item

    async def get_all(self) -> list[T]:
        """Every item waiting (at least one, waiting for it): a client that wakes sends its backlog in one write."""
        await self._wait()
        items = list(self._items)
        self._items.clear()
        self._resume()
        return items

    async def _wait(self) -> None:
        """Until an item is queued (one reader per queue: nobody else takes it meanwhile)."""
        while not self._items:
            if self._closed:
                raise QueueClosed
            self._wakeup = wakeup = trio.Event()
            await wakeup.wait()
        await trio.lowlevel.checkpoint()  # a steady stream of items must still let other tasks run

    def _resume(self) -> None:
        if self._full_since is not None:
            # Room again: what was published while parked is lost for this client; it receives from now on.
            self._dropped += self._broadcast.published - self._full_since
            self._full_since = None
            self._broadcast.unpark(self)


class Broadcast(Generic[T]):
    """Every open, non-full :class:`ClientQueue` receives every published item."""

    __slots__ = ("_active", "_closed", "_parked", "published")

    def __init__(self) -> None:
        self._active: set[ClientQueue[T]] = set()
        self._parked: set[ClientQueue[T]] = set()
        self._closed = False
        #: Items published so far (the sequence number parked queues count their losses from).
        self.published = 0

    def open(self, capacity: int) -> ClientQueue[T]:
        queue = ClientQueue[T](self, capacity)
        if self._closed:
            queue.close_queue()
        else:
            self._active.add(queue)
        return queue

    def leave(self, queue: ClientQueue[T]) -> None:
        self._active.discard(queue)
        self._parked.discard(queue)

    @property
    def has_receivers(self) -> bool:
        """Whether any client would receive an item published now (parked ones would not)."""
        return bool(self._active)

    def skip(self) -> None:
        """An item nobody would receive (see :attr:`has_receivers`): only counted, for the parked clients' losses."""
        self.published += 1

    def publish(self, item: T) -> None:
        self.published += 1
        filled = [queue for queue in self._active if not queue.push(item)]
        for queue in filled:
            self._active.discard(queue)
            self._parked.add(queue)

    def unpark(self, queue: ClientQueue[T]) -> None:
        if queue in self._parked:
            self._parked.discard(queue)
            self._active.add(queue)

    def close(self) -> None:
        self._closed = True
        for queue in (*self._active, *self._parked):
            queue.close_queue()
        self._active.clear()
        self._parked.clear()
