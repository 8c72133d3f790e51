"""LeaseKeeper: the loop that acquires, renews, hands back and drops one member's leases.

One tick every ``renew_interval``: announce the member (membership beat), compare-and-renew every held lease, then
balance — hand back leases above the fair share, or take unowned devices up to it. What the keeper decides it
tells a :class:`DeviceDriver` (``start``: bring the device up; ``stop``: drop it at once), so the loop knows
nothing of WebSockets and is tested on trio's MockClock with a recording driver.

When the registry does not answer, the tick fails: the member turns *degraded*, keeps each device only until its
lease runs out by the local clock (see :mod:`.lease`), and retries with exponential backoff and full jitter
(:class:`galaxy_trio.backoff.Backoff`). A separate watcher task drops each lease at its local expiry, so an
expired lease is dropped on time, not at the next retry or after a stuck tick. Nothing is renewed after it was
found lost or expired.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol

import trio

from ..backoff import Backoff
from .errors import RegistryUnavailable
from .events import FleetEvent, FleetEventHub, FleetEventKind, encode_event
from .lease import LeaseBook, LeaseTiming, fair_share, rank_for_member
from .registry import FleetRegistry, MemberRecord

__all__ = ["DeviceDriver", "LeaseKeeper"]

logger = logging.getLogger("galaxy_trio.fleet")

#: Fleet events kept for the stream while the registry is unreachable (the oldest go first).
_MAX_UNRECORDED: Final = 10_000


class DeviceDriver(Protocol):
    """What the keeper needs from whoever drives the devices (the manager, or a recorder in tests)."""

    def start(self, device_id: str) -> None:
        """This member now owns the device: bring it up (without waiting here)."""
        ...

    def stop(self, device_id: str, reason: str) -> None:
        """This member no longer owns the device: drop its connection now (without waiting here)."""
        ...

    async def wait_stopped(self, device_id: str) -> None:
        """Return once the device's connection is closed (after :meth:`stop`)."""
        ...

    def is_busy(self, device_id: str) -> bool:
        """True while a task runs on the device (such devices are handed back last)."""
        ...


class LeaseKeeper:
    """See the module docstring. ``run`` it in a nursery; ``close`` it (gracefully) before leaving."""

    def __init__(
        self,
        registry: FleetRegistry,
        member_id: str,
        task_name: str,
        device_ids: Sequence[str],
        driver: DeviceDriver,
        timing: LeaseTiming,
        *,
        hub: FleetEventHub | None = None,
        join_grace: float | None = None,
        retry_backoff: Backoff | None = None,
        io_bound: float | None = None,
    ) -> None:
        self.registry = registry
        self.member_id = member_id
        self.task_name = task_name
        self.device_ids = tuple(dict.fromkeys(device_ids))
        self.driver = driver
        self.timing = timing
        self.hub = hub if hub is not None else FleetEventHub()
        #: Wait this long after the first announcement before taking devices, so members started together see
        #: each other before they compute their shares (instead of one grabbing everything and handing back).
        self.join_grace = timing.renew_interval if join_grace is None else join_grace
        self.retry_backoff = retry_backoff or Backoff(timing.renew_interval / 4, timing.ttl)
        #: Bound on one tick's registry calls: a tick that takes longer failed (its replies come too late to use).
        self.io_bound = timing.renew_interval if io_bound is None else io_bound
        self.book = LeaseBook(timing)
        self.releasing: set[str] = set()
        self.live_members: list[str] = []
        self.degraded = False
        self.degraded_since: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.ticks = 0
        self._started_at = time.time()
        self._take_from = math.inf
        self._closing = False
        self._changed = trio.Event()
        self._unrecorded: deque[FleetEvent] = deque(maxlen=_MAX_UNRECORDED)

    # --- queries -----------------------------------------------------------------------------------------------

    def owns(self, device_id: str) -> bool:
        """True while this member holds the device's lease and it is valid by the local clock."""
        return self.book.is_valid(device_id, trio.current_time())

    def held(self) -> list[str]:
        return self.book.held()

    async def wait_changed(self) -> None:
        """Wait for the next change of ownership or health (for waiters that poll a predicate)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _emit(self, kind: FleetEventKind, device_id: str | None = None, reason: str | None = None) -> None:
        """Tell local subscribers now; the fleet's stream at the end of the next successful tick (events of an
        outage — degraded, expired leases — are recorded once the registry answers again)."""
        event = FleetEvent.now(kind, self.member_id, device_id, reason)
        self.hub.publish(event)
        self._unrecorded.append(event)
        self._notify()

    def _record(self) -> MemberRecord:
        return MemberRecord(
            member_id=self.member_id,
            task_name=self.task_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            devices=len(self.book),
            degraded=self.degraded,
        )

    # --- the loop ----------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled. ``task_status.started()`` comes after the first tick (joined, or degraded)."""
        async with trio.open_nursery() as nursery:
            # Local expiry is watched by its own task, so a tick stuck on a slow registry cannot delay a drop.
            nursery.start_soon(self._watch_expiry, name=f"lease-expiry:{self.member_id}")
            self._take_from = trio.current_time() + self.join_grace
            started = False
            while True:
                tick_started = trio.current_time()
                ok = await self._tick(nursery)
                self.ticks += 1
                if not started:
                    started = True
                    task_status.started()
                if ok:
                    # Every renew_interval from the tick's *start*: a slow tick (up to io_bound) and its event
                    # recording (as long again) must not push the next renewal out by their own duration, or a
                    # lease acquired early in a slow tick lapses locally with the registry up. Renewal comes first
                    # in a tick, so it is sent at most two io_bounds after an acquisition — inside local validity.
                    await trio.sleep_until(tick_started + self.timing.renew_interval)
                else:
                    await trio.sleep(self.retry_backoff.delay(self.failures))

    async def _watch_expiry(self) -> None:
        # Validity only ever grows for a held lease, and a new lease outlives the held ones; so sleeping until the
        # earliest expiry seen now (or until the book changes) never sleeps past an expiry.
        while True:
            with trio.move_on_at(self.book.next_expiry()):
                await self.wait_changed()
            self._expire(trio.current_time())

    def _expire(self, now: float) -> None:
        for device_id in self.book.expired(now):
            reason = "lease ran out by the local clock while the registry was unreachable"
            logger.warning("member %s: dropping device %s: %s", self.member_id, device_id, reason)
            self.driver.stop(device_id, reason)
            self._emit(FleetEventKind.LEASE_EXPIRED, device_id, reason)

    async def _tick(self, handovers: trio.Nursery) -> bool:
        try:
            with trio.fail_after(self.io_bound):
                # Renew first: it is what keeps the devices, and a slow beat must not delay it.
                rejoin = False
                held = self.book.held()
                if held:
                    sent_at = trio.current_time()
                    still = await self.registry.renew(self.member_id, held, self.timing.ttl)
                    for device_id in self.book.renewed(held, still, sent_at):
                        reason = "a renewal found the lease gone or held by another member"
                        logger.warning("member %s: lost device %s: %s", self.member_id, device_id, reason)
                        self.driver.stop(device_id, reason)
                        self._emit(FleetEventKind.LEASE_LOST, device_id, reason)
                        rejoin = True
                self.live_members = await self.registry.beat(self._record(), self.timing.ttl)
                rejoin = rejoin or self.degraded
                if self.degraded:
                    self._recovered()
                if rejoin:
                    await self._rejoin()
                if trio.current_time() >= self._take_from and not self._closing:
                    await self._balance(handovers)
        except (RegistryUnavailable, trio.TooSlowError) as exc:
            self._failed(exc)
            return False
        self.failures = 0
        await self._record_events()
        return True

    async def _rejoin(self) -> None:
        """After an outage or a lost lease, the registry may have lost its data (a restart without persistence):
        write this member's part of the fleet's catalog again (idempotent), and wait one join grace before taking
        devices, as at startup, so that the members announce themselves again before they share."""
        self._take_from = max(self._take_from, trio.current_time() + self.join_grace)
        task_name = await self.registry.join_fleet(self.task_name, self.device_ids)
        if task_name != self.task_name:
            logger.error(
                "member %s: the fleet on %s now uses task_name %r, this member %r: devices would get two client_ids",
                self.member_id,
                self._name,
                task_name,
                self.task_name,
            )

    def _recovered(self) -> None:
        outage = time.time() - (self.degraded_since or time.time())
        self.degraded, self.degraded_since = False, None
        logger.warning("member %s: %s answers again after %.1fs", self.member_id, self._name, outage)
        self._emit(FleetEventKind.RECOVERED, reason=f"registry unreachable for {outage:.1f}s")

    async def _record_events(self) -> None:
        if not self._unrecorded:
            return
        batch = list(self._unrecorded)
        try:
            with trio.move_on_after(self.io_bound) as slow:
                await self.registry.append_events([encode_event(e) for e in batch])
        except RegistryUnavailable as exc:
            logger.info("member %s: fleet events not recorded yet: %s", self.member_id, exc)
            return
        if not slow.cancelled_caught:
            for _ in batch:
                self._unrecorded.popleft()

    @property
    def _name(self) -> str:
        return self.registry.display_name

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if isinstance(exc, trio.TooSlowError):
            detail = f"{self._name} did not answer within {self.io_bound:g}s"
        else:
            detail = str(exc)
        self.last_error = detail
        if not self.degraded:
            self.degraded, self.degraded_since = True, time.time()
            logger.warning(
                "member %s: degraded: %s; keeping %d devices only while their leases are valid",
                self.member_id,
                detail,
                len(self.book),
            )
            self._emit(FleetEventKind.DEGRADED, reason=detail)
        else:
            logger.info("member %s: registry still unreachable (attempt %d): %s", self.member_id, self.failures, detail)

    async def _balance(self, handovers: trio.Nursery) -> None:
        share = fair_share(len(self.device_ids), len(self.live_members))
        excess = len(self.book) - share
        if excess > 0:
            for device_id in self._handover_order()[:excess]:
                self.book.drop(device_id)
                self.releasing.add(device_id)
                self.driver.stop(device_id, f"handed back: above the fair share of {share}")
                handovers.start_soon(self._hand_back, device_id, share, name=f"handover:{device_id}")
            return
        need = share - len(self.book)
        candidates = [d for d in self.device_ids if d not in self.book and d not in self.releasing]
        if need <= 0 or not candidates:
            return
        owners = await self.registry.owners(candidates)
        # A lease that is ours in the registry but not in the book (its reply was lost) counts as unowned: taking it
        # again is idempotent.
        unowned = [d for d, owner in zip(candidates, owners, strict=True) if owner is None or owner == self.member_id]
        if not unowned:
            return
        sent_at = trio.current_time()
        got = await self.registry.acquire(
            self.member_id, rank_for_member(self.member_id, unowned), need, self.timing.ttl
        )
        self.book.granted(got, sent_at)
        for device_id in got:
            logger.info("member %s: acquired device %s", self.member_id, device_id)
            self.driver.start(device_id)
            self._emit(FleetEventKind.LEASE_ACQUIRED, device_id)

    def _handover_order(self) -> list[str]:
        """Held devices in the order to hand them back: idle ones first, least preferred first."""
        preferred = rank_for_member(self.member_id, self.book.held())
        order = list(reversed(preferred))
        return sorted(order, key=self.driver.is_busy)  # stable: busy devices last

    async def _hand_back(self, device_id: str, share: int) -> None:
        """Close the device's connection, then release its lease, so the next owner is not refused as a duplicate."""
        try:
            await self.driver.wait_stopped(device_id)
            reason = f"handed back: above the fair share of {share}"
            event = FleetEvent.now(FleetEventKind.LEASE_RELEASED, self.member_id, device_id, reason)
            released: list[str] = []
            with trio.move_on_after(self.io_bound):
                released = await self.registry.release(self.member_id, [device_id], [encode_event(event)])
            if released:
                self.hub.publish(event)
        except RegistryUnavailable as exc:
            logger.info("member %s: release of %s failed (%s); it expires instead", self.member_id, device_id, exc)
        finally:
            self.releasing.discard(device_id)
            self._notify()

    # --- leaving -----------------------------------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Hand every device back: stop it, wait (at most ``grace``) for its connection to close, release the
        leases and withdraw the membership. Shielded; a registry that does not answer only lets the leases expire.
        """
        self._closing = True
        held = [*self.book.held(), *sorted(self.releasing)]
        with trio.CancelScope(shield=True):
            for device_id in held:
                self.driver.stop(device_id, "member leaving the fleet")
            with trio.move_on_after(grace):
                async with trio.open_nursery() as closing:
                    for device_id in held:
                        closing.start_soon(self.driver.wait_stopped, device_id)
            events = {
                d: FleetEvent.now(FleetEventKind.LEASE_RELEASED, self.member_id, d, "member leaving the fleet")
                for d in held
            }
            released: list[str] = []
            try:
                with trio.fail_after(self.io_bound):
                    if held:
                        released = await self.registry.release(
                            self.member_id, held, [encode_event(e) for e in events.values()]
                        )
                    await self.registry.leave(self.member_id)
            except (RegistryUnavailable, trio.TooSlowError) as exc:
                logger.warning(
                    "member %s: could not release %d leases (%s); they expire within %gs",
                    self.member_id,
                    len(held) - len(released),
                    exc,
                    self.timing.ttl,
                )
            for device_id in held:
                self.book.drop(device_id)
            for device_id in released:
                self.hub.publish(events[device_id])
            self._notify()
