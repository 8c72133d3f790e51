"""Bounded fan-out of events to subscribers, shared by the manager's and the fleet's event streams.

Overflow policy: every subscriber has its own bounded buffer. When it is full, a new event is dropped *for that
subscriber only* and counted in :attr:`Subscription.dropped`; the publisher never waits for, and is never
cancelled by, a slow or absent reader. A subscriber that closes its channel is forgotten at the next event.

Each channel has two owners: the hub holds the send side (it publishes and, at the end, closes it), the
subscription the receive side — so neither reaches into the other.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

__all__ = ["Hub", "Subscription"]

E = TypeVar("E")


class Subscription(Generic[E]):
    """A subscriber's receive channel plus how many events it missed because its buffer was full.

    Use as ``with hub.subscribe() as events: async for event in events: ...``.
    """

    __slots__ = ("_receive", "dropped")

    def __init__(self, receive: trio.MemoryReceiveChannel[E]) -> None:
        self._receive = receive
        #: Events this subscriber missed because its buffer was full (counted by the hub).
        self.dropped = 0

    @property
    def channel(self) -> trio.MemoryReceiveChannel[E]:
        return self._receive

    def __aiter__(self) -> trio.MemoryReceiveChannel[E]:
        return self._receive

    async def receive(self) -> E:
        return await self._receive.receive()

    def pending(self) -> list[E]:
        """Every event received so far and not yet read, without waiting."""
        events: list[E] = []
        while True:
            try:
                events.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return events

    def close(self) -> None:
        """Stop receiving; the hub forgets this subscription at its next event."""
        self._receive.close()

    def __enter__(self) -> Subscription[E]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Hub(Generic[E]):
    """Fans each event out to every live subscription, never blocking the publisher."""

    __slots__ = ("_default_buffer", "_subscriptions")

    def __init__(self, default_buffer: int) -> None:
        self._default_buffer = default_buffer
        #: Each live subscription with the send side of its channel.
        self._subscriptions: list[tuple[Subscription[E], trio.MemorySendChannel[E]]] = []

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscriptions)

    def subscribe(self, buffer: int | None = None) -> Subscription[E]:
        send, receive = trio.open_memory_channel[E](self._default_buffer if buffer is None else buffer)
        subscription = Subscription[E](receive)
        self._subscriptions.append((subscription, send))
        return subscription

    def publish(self, event: E) -> None:
        gone: list[tuple[Subscription[E], trio.MemorySendChannel[E]]] = []
        for entry in self._subscriptions:
            try:
                entry[1].send_nowait(event)
            except trio.WouldBlock:
                entry[0].dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.append(entry)
        for entry in gone:
            self._subscriptions.remove(entry)

    def close(self) -> None:
        for _subscription, send in self._subscriptions:
            send.close()
        self._subscriptions.clear()
