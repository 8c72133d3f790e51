"""Device events and the hub that fans them out to subscribers.

Overflow policy (:mod:`galaxy_trio.fanout`): every subscriber has its own bounded buffer. When it is full, the new
event is dropped *for that subscriber only* and counted in ``dropped``; the manager never waits for, and is never
cancelled by, a slow or absent reader.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import msgspec

from ..fanout import Hub, Subscription
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


#: A subscription to device events (see :mod:`galaxy_trio.fanout` for the overflow policy).
EventSubscription = Subscription[DeviceEvent]


class EventHub(Hub[DeviceEvent]):
    """Fans device events out to every live subscription, never blocking the manager."""

    __slots__ = ()

    def emit(self, kind: EventKind, device_id: str, **fields: Any) -> None:
        """Build and publish an event, skipping the allocation when nobody listens."""
        if self.has_subscribers:
            self.publish(DeviceEvent(kind=kind, device_id=device_id, at=time.time(), **fields))
