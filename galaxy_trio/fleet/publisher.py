"""ProfilePublisher: keeps the registry's copy of every owned device current, so any process can read the fleet.

Fed by the member's event pump (every status change, telemetry merge and task event of the manager), it marks the
device dirty and queues the event; one flush then writes every dirty device's profile and queued events in one
fenced call (the registry refuses devices whose lease this member no longer holds). Bursts batch themselves:
while one flush is on the wire the next one accumulates. Heartbeat times change without events, so owned devices
are also re-published every ``refresh_interval`` when their ``last_heartbeat`` moved. Only the devices this
member holds are looked at (``held``), never the whole fleet's profiles: with N devices over M members, each
member's refresh costs N/M reads of a device's state, not N profile snapshots.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import msgspec
import trio

from ..backoff import Backoff
from ..manager import ConstellationDeviceManager, DeviceEvent, UnknownDevice
from .errors import RegistryUnavailable
from .events import encode_event
from .registry import DeviceUpdate, FleetRegistry

__all__ = ["ProfilePublisher"]

logger = logging.getLogger("galaxy_trio.fleet")

#: Events kept per device while the registry is unreachable; older ones are dropped (and counted).
_MAX_QUEUED_EVENTS = 64
_encode = msgspec.json.Encoder().encode


class ProfilePublisher:
    """See the module docstring. ``owns(device_id)`` says whether this member may write the device now;
    ``held()`` lists the devices whose lease it holds (``owns`` is checked on each)."""

    def __init__(
        self,
        registry: FleetRegistry,
        member_id: str,
        manager: ConstellationDeviceManager,
        owns: Callable[[str], bool],
        *,
        held: Callable[[], list[str]],
        refresh_interval: float,
        retry: Backoff,
    ) -> None:
        self.registry = registry
        self.member_id = member_id
        self.manager = manager
        self.owns = owns
        self.held = held
        self.refresh_interval = refresh_interval
        self.retry = retry
        self.dropped_events = 0
        self.flushes = 0
        self._dirty: set[str] = set()
        self._events: dict[str, deque[bytes]] = {}
        self._heartbeats: dict[str, float | None] = {}  # last_heartbeat_at as last written, by device
        self._wake = trio.Event()
        self._marks = 0  # how many times a device was marked dirty
        self._published = 0  # ``_marks`` as it was when the last successful flush took its updates
        self._flushed = trio.Event()

    def note(self, event: DeviceEvent) -> None:
        """A manager event for ``event.device_id``: queue it and mark the device dirty."""
        device_id = event.device_id
        if not self.owns(device_id):
            self._events.pop(device_id, None)
            return
        queue = self._events.get(device_id)
        if queue is None:
            queue = self._events[device_id] = deque(maxlen=_MAX_QUEUED_EVENTS)
        if len(queue) == queue.maxlen:
            self.dropped_events += 1
        queue.append(encode_event(event, member_id=self.member_id))
        self.mark(device_id)

    def mark(self, device_id: str) -> None:
        self._dirty.add(device_id)
        self._marks += 1
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything marked before this call is in the registry (or refused as no longer ours).

        Waits through registry outages; bound it with the caller's cancel scope.
        """
        # The manager's latest events may still sit in the pump's buffer: mark every owned device, so the flush
        # writes each one's profile as it is now.
        for device_id in self.held():
            if self.owns(device_id):
                self.mark(device_id)
        target = self._marks
        while self._published < target:
            self._wake.set()
            await self._flushed.wait()

    def _refresh(self) -> None:
        """Mark owned devices whose heartbeat moved since their last write."""
        for device_id in self.held():
            if self.owns(device_id) and self._heartbeats.get(device_id) != self._heartbeat_at(device_id):
                self._dirty.add(device_id)

    def _heartbeat_at(self, device_id: str) -> float | None:
        try:
            return self.manager.get_device_state(device_id).last_heartbeat_at
        except UnknownDevice:  # removed from the manager meanwhile
            return None

    def _take_updates(self) -> list[DeviceUpdate]:
        updates = []
        dirty, self._dirty = self._dirty, set()
        for device_id in sorted(dirty):
            events = self._events.pop(device_id, None)
            if not self.owns(device_id):
                continue
            profile = self.manager.get_device_info(device_id)
            if profile is None:
                continue
            self._heartbeats[device_id] = self._heartbeat_at(device_id)
            updates.append(
                DeviceUpdate(
                    device_id=device_id,
                    status=profile.status.value,
                    profile=_encode(profile),
                    events=tuple(events or ()),
                )
            )
        return updates

    def _put_back(self, updates: list[DeviceUpdate]) -> None:
        """A flush failed: its devices are dirty again and its events go back before any newer ones."""
        for update in updates:
            self._dirty.add(update.device_id)
            self._heartbeats.pop(update.device_id, None)
            if update.events:
                merged = [*update.events, *self._events.get(update.device_id, ())]
                self.dropped_events += max(0, len(merged) - _MAX_QUEUED_EVENTS)
                self._events[update.device_id] = deque(merged, maxlen=_MAX_QUEUED_EVENTS)
        self._wake.set()

    def _done(self, marks: int) -> None:
        self._published = marks
        self._flushed.set()
        self._flushed = trio.Event()

    async def run(self) -> None:
        failures = 0
        next_refresh = trio.current_time() + self.refresh_interval
        while True:
            with trio.move_on_at(next_refresh):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= next_refresh:
                self._refresh()
                next_refresh = trio.current_time() + self.refresh_interval
            marks = self._marks
            updates = self._take_updates()
            if not updates:
                self._done(marks)
                continue
            try:
                fenced = await self.registry.publish(self.member_id, updates)
            except RegistryUnavailable as exc:
                failures += 1
                self._put_back(updates)
                logger.info("member %s: device state not published (attempt %d): %s", self.member_id, failures, exc)
                await trio.sleep(self.retry.delay(failures))
                continue
            failures = 0
            self.flushes += 1
            self._done(marks)
            if fenced:
                logger.info(
                    "member %s: registry refused writes for devices it no longer owns: %s", self.member_id, fenced
                )
