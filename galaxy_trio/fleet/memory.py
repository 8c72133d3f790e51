"""MemoryRegistry: the registry in process memory — the default, and a faithful model of the Redis one.

A member given no registry gets a private MemoryRegistry: it is the only member, owns every device, and nothing
leaves the process, which is exactly the single-process manager's behaviour. Several members in one process may
share one MemoryRegistry; leases, membership and mailboxes then behave as they do on Redis (TTLs run on
``trio.current_time()``, so fleet behaviour is testable on trio's MockClock).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from .registry import DeviceRecord, DeviceUpdate, FleetSnapshot, MemberRecord, check_release_events

__all__ = ["MemoryRegistry"]

_decode_json = msgspec.json.Decoder().decode


class _Mailbox:
    __slots__ = ("arrived", "messages")

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = trio.Event()


class MemoryRegistry:
    """See the module docstring. ``max_events`` bounds the event stream (oldest entries go first)."""

    def __init__(self, *, max_events: int = 10_000) -> None:
        self._task_name: str | None = None
        self._catalog: set[str] = set()
        self._leases: dict[str, tuple[str, float]] = {}  # device id -> (owner, expires at)
        self._members: dict[str, tuple[MemberRecord, float]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._events: deque[bytes] = deque(maxlen=max_events)
        self._mailboxes: dict[str, _Mailbox] = {}

    @property
    def display_name(self) -> str:
        return "in-memory registry"

    # --- leases ------------------------------------------------------------------------------------------------

    def _holder(self, device_id: str, now: float) -> str | None:
        entry = self._leases.get(device_id)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._leases[device_id]
            return None
        return entry[0]

    async def owners(self, device_ids: Sequence[str]) -> list[str | None]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        return [self._holder(device_id, now) for device_id in device_ids]

    async def acquire(self, member_id: str, candidates: Sequence[str], need: int, ttl: float) -> list[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        got: list[str] = []
        for device_id in candidates:
            if len(got) >= need:
                break
            if self._holder(device_id, now) in (None, member_id):
                self._leases[device_id] = (member_id, now + ttl)
                got.append(device_id)
        return got

    async def renew(self, member_id: str, device_ids: Sequence[str], ttl: float) -> list[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        kept = []
        for device_id in device_ids:
            if self._holder(device_id, now) == member_id:
                self._leases[device_id] = (member_id, now + ttl)
                kept.append(device_id)
        return kept

    async def release(self, member_id: str, device_ids: Sequence[str], events: Sequence[bytes] = ()) -> list[str]:
        check_release_events(device_ids, events)
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        released = []
        for index, device_id in enumerate(device_ids):
            if self._holder(device_id, now) == member_id:
                del self._leases[device_id]
                record = self._records.setdefault(device_id, {})
                record.update(status="disconnected", owner=None, updated_at=time.time())
                released.append(device_id)
                if events:
                    self._events.append(events[index])
        return released

    # --- fleet, members ----------------------------------------------------------------------------------------

    async def join_fleet(self, task_name: str, device_ids: Sequence[str]) -> str:
        await trio.lowlevel.checkpoint()
        if self._task_name is None:
            self._task_name = task_name
        self._catalog.update(device_ids)
        return self._task_name

    async def fleet_device_ids(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._catalog)

    def _live_members(self, now: float) -> dict[str, MemberRecord]:
        for member_id in [m for m, (_, expires) in self._members.items() if expires <= now]:
            del self._members[member_id]
        return {member_id: record for member_id, (record, _) in self._members.items()}

    async def beat(self, member: MemberRecord, ttl: float) -> list[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        self._members[member.member_id] = (member, now + ttl)
        return sorted(self._live_members(now))

    async def leave(self, member_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._members.pop(member_id, None)

    # --- shared state ------------------------------------------------------------------------------------------

    async def publish(self, member_id: str, updates: Sequence[DeviceUpdate]) -> list[str]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        fenced = []
        for update in updates:
            if self._holder(update.device_id, now) != member_id:
                fenced.append(update.device_id)
                continue
            record = self._records.setdefault(update.device_id, {})
            record.update(status=update.status, owner=member_id, profile=update.profile, updated_at=time.time())
            self._events.extend(update.events)
        return fenced

    async def append_events(self, events: Sequence[bytes]) -> None:
        await trio.lowlevel.checkpoint()
        self._events.extend(events)

    async def read_events(self, count: int) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        tail = list(self._events)[-count:] if count > 0 else []
        return [_decode_json(entry) for entry in tail]

    async def read_fleet(self) -> FleetSnapshot:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        devices = []
        for device_id in sorted(self._catalog):
            record = self._records.get(device_id, {})
            profile = record.get("profile")
            devices.append(
                DeviceRecord(
                    device_id=device_id,
                    owner=self._holder(device_id, now),
                    reported_by=record.get("owner"),
                    status=record.get("status"),
                    profile=None if profile is None else _decode_json(profile),
                    updated_at=record.get("updated_at"),
                )
            )
        members = sorted(self._live_members(now).values(), key=lambda m: m.member_id)
        return FleetSnapshot(devices=devices, members=members, task_name=self._task_name)

    # --- mail --------------------------------------------------------------------------------------------------

    async def open_mailbox(self, member_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._mailboxes[member_id] = _Mailbox()

    async def close_mailbox(self, member_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self._mailboxes.pop(member_id, None)

    async def post_mail(self, member_id: str, payload: bytes) -> None:
        await trio.lowlevel.checkpoint()
        mailbox = self._mailboxes.get(member_id)
        if mailbox is None:  # as on Redis: mail to a member that is gone is kept by nobody
            return
        mailbox.messages.append(payload)
        mailbox.arrived.set()

    async def fetch_mail(self, member_id: str) -> list[bytes]:
        mailbox = self._mailboxes.get(member_id)
        if mailbox is None:
            await trio.sleep_forever()  # closed: nothing will ever arrive (the caller's scope ends the wait)
        assert mailbox is not None
        while not mailbox.messages:
            mailbox.arrived = trio.Event()
            await mailbox.arrived.wait()
        messages, mailbox.messages = mailbox.messages, []
        return messages
