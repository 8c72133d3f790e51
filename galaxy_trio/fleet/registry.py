"""The registry backend interface: what a fleet member needs from the store it shares with the other members.

Two implementations: :class:`~galaxy_trio.fleet.memory.MemoryRegistry` (in process, the default) and
:class:`~galaxy_trio.fleet.redis.RedisRegistry`. Every method may raise
:class:`~galaxy_trio.fleet.errors.RegistryUnavailable`; none takes a timeout — the caller's cancel scope bounds it.

Fencing lives in the store, not in the caller: ``renew``, ``release`` and ``publish`` act on a device only while
the caller still holds its lease, atomically, so a member that lost a lease can neither extend it nor overwrite
the new owner's view of the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

__all__ = [
    "DeviceRecord",
    "DeviceUpdate",
    "FleetRegistry",
    "FleetSnapshot",
    "MemberRecord",
    "check_release_events",
]


def check_release_events(device_ids: Sequence[str], events: Sequence[bytes]) -> None:
    """``release`` takes one event per device, or none."""
    if events and len(events) != len(device_ids):
        raise ValueError(f"release: {len(events)} events for {len(device_ids)} devices; give one per device or none")


class MemberRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a live member says about itself (refreshed at every lease tick, gone when it stops beating)."""

    member_id: str
    task_name: str
    host: str
    pid: int
    started_at: float  #: wall clock, epoch seconds
    devices: int = 0  #: leases held at the last beat
    degraded: bool = False


class DeviceUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One device's new state, written only if the writer still holds the device's lease.

    ``profile`` is the msgspec JSON of the manager's :class:`~galaxy_trio.manager.AgentProfile`; ``events`` are
    JSON documents appended to the fleet's event stream in order.
    """

    device_id: str
    status: str
    profile: bytes
    events: tuple[bytes, ...] = ()


class DeviceRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One device as the fleet sees it.

    ``owner`` is the member holding the lease right now (``None``: nobody); ``reported_by`` is the member that
    wrote ``status`` and ``profile``. When they differ the record is stale (its writer lost the device and the new
    owner has not reported yet, or nobody owns it).
    """

    device_id: str
    owner: str | None
    reported_by: str | None
    status: str | None
    profile: dict[str, Any] | None
    updated_at: float | None  #: wall clock of the last write, epoch seconds

    @property
    def stale(self) -> bool:
        return self.reported_by is not None and self.reported_by != self.owner


class FleetSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The whole fleet at one moment: every device and every live member."""

    devices: list[DeviceRecord]
    members: list[MemberRecord]
    task_name: str | None


class FleetRegistry(Protocol):
    """See the module docstring. ``ttl`` arguments are seconds; the store rounds them up to its resolution."""

    @property
    def display_name(self) -> str:
        """How logs and errors name this registry (never with a password)."""
        ...

    async def join_fleet(self, task_name: str, device_ids: Sequence[str]) -> str:
        """Add devices to the fleet's catalog; record ``task_name`` if the fleet has none; return the fleet's."""
        ...

    async def fleet_device_ids(self) -> list[str]:
        """Every device id in the fleet's catalog, sorted."""
        ...

    async def beat(self, member: MemberRecord, ttl: float) -> list[str]:
        """Announce ``member`` as live for ``ttl``; return the ids of every live member (itself included), sorted."""
        ...

    async def leave(self, member_id: str) -> None:
        """Withdraw a member's announcement at once (a graceful exit)."""
        ...

    async def owners(self, device_ids: Sequence[str]) -> list[str | None]:
        """The current lease holder of each device (``None`` when nobody holds it), in order."""
        ...

    async def acquire(self, member_id: str, candidates: Sequence[str], need: int, ttl: float) -> list[str]:
        """Take up to ``need`` leases, trying ``candidates`` in order (set-if-absent; a lease the member already
        holds counts and is extended). Returns the devices now held."""
        ...

    async def renew(self, member_id: str, device_ids: Sequence[str], ttl: float) -> list[str]:
        """Compare-and-renew: extend only the leases still held by ``member_id``; return those."""
        ...

    async def release(self, member_id: str, device_ids: Sequence[str], events: Sequence[bytes] = ()) -> list[str]:
        """Compare-and-delete: give up the leases still held by ``member_id``, marking those devices unowned and
        disconnected. ``events``, if given, holds one event per device, appended only if that device is released.
        Returns the devices released."""
        ...

    async def publish(self, member_id: str, updates: Sequence[DeviceUpdate]) -> list[str]:
        """Write each update whose lease ``member_id`` still holds; return the ids refused (fenced off)."""
        ...

    async def append_events(self, events: Sequence[bytes]) -> None:
        """Append member-level events (not about one owned device) to the event stream."""
        ...

    async def read_events(self, count: int) -> list[dict[str, Any]]:
        """The last ``count`` events of the stream, oldest first."""
        ...

    async def read_fleet(self) -> FleetSnapshot:
        """Every device of the catalog with its owner and last report, and every live member."""
        ...

    async def open_mailbox(self, member_id: str) -> None:
        """Create (empty) this member's mailbox; mail posted from now on is delivered by :meth:`fetch_mail`."""
        ...

    async def close_mailbox(self, member_id: str) -> None:
        """Delete this member's mailbox."""
        ...

    async def post_mail(self, member_id: str, payload: bytes) -> None:
        """Append one message to a member's mailbox."""
        ...

    async def fetch_mail(self, member_id: str) -> list[bytes]:
        """Wait for mail in this member's mailbox and return it (oldest first); may return ``[]`` after a while
        with nothing to read. Each message is returned once. Once the mailbox is closed, it waits until cancelled
        (its reader may still be running while its member leaves)."""
        ...
