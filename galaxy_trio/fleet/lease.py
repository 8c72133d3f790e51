"""Lease bookkeeping and fair share: the pure half of ownership, with no I/O and no clock of its own.

Every time is a float on the caller's monotonic clock (``trio.current_time()``), so the rules are testable on
trio's MockClock. The rule that keeps two managers from driving one device is here:

    a lease acquired or renewed by a request *sent* at local time ``t`` is valid locally until
    ``t + ttl - safety_margin``

The registry starts the key's TTL when it *receives* the request, which is after ``t``; so the local validity ends
before the registry can hand the device to anyone else, by at least ``safety_margin`` (clock-rate drift between two
hosts over one TTL is parts per million; the margin covers it many times over). A manager that cannot reach the
registry therefore knows exactly when to stop driving, without asking anyone.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["LeaseBook", "LeaseTiming", "fair_share", "rank_for_member"]


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long leases live and how often they are renewed.

    ``renew_interval`` defaults to ``ttl / 3`` (two renewals can fail before the lease runs out locally);
    ``safety_margin`` to ``ttl / 10``. ``renew_interval`` must be shorter than the local validity
    ``ttl - safety_margin``, or a healthy member would lose its own leases between two renewals.
    """

    ttl: float
    renew_interval: float
    safety_margin: float

    @classmethod
    def from_ttl(
        cls, ttl: float, *, renew_interval: float | None = None, safety_margin: float | None = None
    ) -> LeaseTiming:
        return cls(
            ttl=ttl,
            renew_interval=ttl / 3 if renew_interval is None else renew_interval,
            safety_margin=ttl / 10 if safety_margin is None else safety_margin,
        )

    def __post_init__(self) -> None:
        problems = []
        for name in ("ttl", "renew_interval", "safety_margin"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive number of seconds, got {value!r}")
        if not problems:
            if self.safety_margin >= self.ttl:
                problems.append(f"safety_margin ({self.safety_margin:g}s) must be less than ttl ({self.ttl:g}s)")
            elif self.renew_interval >= self.local_validity:
                problems.append(
                    f"renew_interval ({self.renew_interval:g}s) must be less than ttl - safety_margin "
                    f"({self.local_validity:g}s), or leases would lapse between renewals"
                )
        if problems:
            raise ValueError("invalid lease timing: " + "; ".join(problems))

    @property
    def local_validity(self) -> float:
        """How long a lease stays valid by the holder's own clock, counted from the request's send time."""
        return self.ttl - self.safety_margin

    @property
    def ttl_ms(self) -> int:
        """The TTL as the registry takes it (milliseconds, rounded up: never shorter than asked)."""
        return math.ceil(self.ttl * 1000)


class LeaseBook:
    """The leases one member holds, each with its local expiry. Answers "may I still drive this device?"."""

    __slots__ = ("_timing", "_valid_until")

    def __init__(self, timing: LeaseTiming) -> None:
        self._timing = timing
        self._valid_until: dict[str, float] = {}

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._valid_until

    def __len__(self) -> int:
        return len(self._valid_until)

    def held(self) -> list[str]:
        """Device ids held, in acquisition order."""
        return list(self._valid_until)

    def valid_until(self, device_id: str) -> float | None:
        return self._valid_until.get(device_id)

    def is_valid(self, device_id: str, now: float) -> bool:
        """True while the lease is held and its local validity has not run out."""
        until = self._valid_until.get(device_id)
        return until is not None and now < until

    def granted(self, device_ids: Iterable[str], sent_at: float) -> None:
        """The registry confirmed (acquired or renewed) these leases for a request sent at ``sent_at``."""
        until = sent_at + self._timing.local_validity
        for device_id in device_ids:
            # A late reply to an older request must never shorten a newer, longer validity.
            previous = self._valid_until.get(device_id)
            self._valid_until[device_id] = until if previous is None else max(previous, until)

    def renewed(self, requested: Sequence[str], still_held: Iterable[str], sent_at: float) -> list[str]:
        """Record a compare-and-renew answer; return the leases that turned out lost (they are forgotten here).

        A lost lease is never renewed again: only leases in the book are ever sent for renewal, and a lost one
        leaves the book at once.
        """
        kept = set(still_held)
        lost = [device_id for device_id in requested if device_id not in kept and device_id in self._valid_until]
        for device_id in lost:
            del self._valid_until[device_id]
        self.granted((device_id for device_id in requested if device_id in kept), sent_at)
        return lost

    def expired(self, now: float) -> list[str]:
        """Forget and return every lease whose local validity has run out at ``now``."""
        gone = [device_id for device_id, until in self._valid_until.items() if until <= now]
        for device_id in gone:
            del self._valid_until[device_id]
        return gone

    def drop(self, device_id: str) -> bool:
        """Forget a lease (released or handed over); ``True`` if it was held."""
        return self._valid_until.pop(device_id, None) is not None

    def next_expiry(self) -> float:
        """The earliest local expiry among held leases, ``inf`` when none is held."""
        return min(self._valid_until.values(), default=math.inf)


def fair_share(total_devices: int, live_members: int) -> int:
    """The most devices one member should hold: ``ceil(total / live members)`` (at least one member: itself).

    The shares of all live members add up to at least the total, so every device can be owned while nobody holds
    more than its share; and a member above its share knows exactly how many to hand back.
    """
    if total_devices < 0:
        raise ValueError(f"total_devices must be >= 0, got {total_devices}")
    return math.ceil(total_devices / max(live_members, 1))


def rank_for_member(member_id: str, device_ids: Iterable[str]) -> list[str]:
    """``device_ids`` in this member's order of preference (rendezvous hashing).

    Every member ranks the same unowned devices differently, so members that scan at the same moment mostly reach
    for different devices instead of all racing for the first one; the order is stable across scans.
    """
    prefix = member_id.encode() + b"\x00"

    def score(device_id: str) -> bytes:
        return hashlib.blake2b(prefix + device_id.encode(), digest_size=8).digest()

    return sorted(device_ids, key=score, reverse=True)
