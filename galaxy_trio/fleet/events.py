"""Fleet events: what happens to leases and to the member's link with the registry.

They are published two ways: to local subscribers (:meth:`FleetMember.subscribe`, same overflow policy as the
manager's events: a full subscriber loses the event, counted in ``dropped``; the member never waits for a reader)
and, when the registry is reachable, to the fleet's event stream next to the devices' status events.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgspec
import trio

from ..fanout import Hub, Subscription

__all__ = ["FleetEvent", "FleetEventHub", "FleetEventKind", "FleetSubscription", "encode_event"]


class FleetEventKind(enum.StrEnum):
    LEASE_ACQUIRED = "lease_acquired"  #: this member now owns the device and brings it up
    LEASE_LOST = "lease_lost"  #: a renewal found the lease gone or taken: the device was dropped at once
    LEASE_EXPIRED = "lease_expired"  #: the registry was unreachable until the lease ran out by the local clock
    LEASE_RELEASED = "lease_released"  #: handed back on purpose (rebalancing, or the member leaving)
    DEGRADED = "degraded"  #: the registry stopped answering; devices are kept only while their leases are valid
    RECOVERED = "recovered"  #: the registry answers again


class FleetEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One fleet event. ``at`` is wall-clock epoch seconds; ``monotonic`` is ``trio.current_time()`` when it
    happened (comparable between members of one process, and exact on a MockClock)."""

    kind: FleetEventKind
    member_id: str
    at: float
    monotonic: float
    device_id: str | None = None
    reason: str | None = None

    @classmethod
    def now(
        cls, kind: FleetEventKind, member_id: str, device_id: str | None = None, reason: str | None = None
    ) -> FleetEvent:
        return cls(
            kind=kind,
            member_id=member_id,
            at=time.time(),
            monotonic=trio.current_time(),
            device_id=device_id,
            reason=reason,
        )


_encoder = msgspec.json.Encoder()


def encode_event(event: msgspec.Struct, **extra: Any) -> bytes:
    """One stream entry: the event's fields plus ``extra`` (e.g. the member id of a device event), as JSON."""
    document = msgspec.structs.asdict(event)
    document.update(extra)
    return _encoder.encode({key: value for key, value in document.items() if value is not None})


#: A subscription to fleet events (see :mod:`galaxy_trio.fanout` for the overflow policy).
FleetSubscription = Subscription[FleetEvent]


class FleetEventHub(Hub[FleetEvent]):
    """Fans each fleet event out to every live subscription without ever blocking the publisher."""

    __slots__ = ()

    def __init__(self, default_buffer: int = 1024) -> None:
        super().__init__(default_buffer)
