"""Device events and the hub that fans them out to subscribers.

Overflow policy: every subscriber has its own bounded buffer. When it is full, the new event is dropped *for that
subscriber only* and counted in :attr:`EventSubscription.dropped`; the manager never waits for, and is never
cancelled by, a slow or absent reader. A subscriber that closes its channel is forgotten at the next event.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import msgspec
import trio

from .profile import DeviceStatus

__all__ = ["DeviceEvent", "EventHub", "EventKind", "EventSubscription"]

logger = logging.getLogger("galaxy_trio.manager")


class EventKind(enum.StrEnum):
    STATUS = "status"  #: a status change (old_status → new_status, with the reason)
    PHASE = "phase"  #: a connection phase began: ``reason`` is connect, register, telemetry or active
    TELEMETRY = "telemetry"  #: system_info merged into the profile
    HEARTBEAT_MISSED = "heartbeat_missed"  #: no frame within heartbeat_timeout after a heartbeat
    TASK_QUEUED = "task_queued"
    TASK_STARTED = "task_started"
    TASK_FINISHED = "task_finished"


class DeviceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened to one device. ``at`` is wall-clock seconds since the epoch."""

    kind: EventKind
    device_id: str
    at: float
    old_status: DeviceStatus | None = None
    new_status: DeviceStatus | None = None
    reason: str | None = None
    task_id: str | None = None
    error_type: str | None = None
    detail: dict[str, Any] | None = None


class EventSubscription:
    """A subscriber's receive channel plus how many events it missed because its buffer was full."""

    __slots__ = ("_receive", "_send", "dropped")

    def __init__(self, buffer: int) -> None:
        self._send, self._receive = trio.open_memory_channel[DeviceEvent](buffer)
        self.dropped = 0

    @property
    def channel(self) -> trio.MemoryReceiveChannel[DeviceEvent]:
        return self._receive

    def __aiter__(self) -> trio.MemoryReceiveChannel[DeviceEvent]:
        return self._receive

    async def receive(self) -> DeviceEvent:
        return await self._receive.receive()

    def close(self) -> None:
        """Stop receiving; the hub forgets this subscription at its next event."""
        self._receive.close()

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EventHub:
    """Fans each event out to every live subscription, never blocking the publisher."""

    __slots__ = ("_default_buffer", "_subscriptions")

    def __init__(self, default_buffer: int) -> None:
        self._default_buffer = default_buffer
        self._subscriptions: list[EventSubscription] = []

    def subscribe(self, buffer: int | None = None) -> EventSubscription:
        subscription = EventSubscription(self._default_buffer if buffer is None else buffer)
        self._subscriptions.append(subscription)
        return subscription

    def publish(self, event: DeviceEvent) -> None:
        if not self._subscriptions:
            return
        gone: list[EventSubscription] = []
        for subscription in self._subscriptions:
            try:
                subscription._send.send_nowait(event)
            except trio.WouldBlock:
                subscription.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.append(subscription)
        for subscription in gone:
            self._subscriptions.remove(subscription)

    def emit(self, kind: EventKind, device_id: str, **fields: Any) -> None:
        """Build and publish an event, skipping the allocation when nobody listens."""
        if self._subscriptions:
            self.publish(DeviceEvent(kind=kind, device_id=device_id, at=time.time(), **fields))

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription._send.close()
        self._subscriptions.clear()
