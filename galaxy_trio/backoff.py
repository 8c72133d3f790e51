"""Exponential backoff with full jitter, shared by the manager and the device agent.

Full jitter (a delay drawn uniformly from ``[0, ceiling]``) spreads the reconnects of a fleet that lost its
server at the same instant, instead of bringing them all back in synchronised waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays ``initial, 2·initial, 4·initial … ≤ cap``, each one jittered uniformly down to zero."""

    initial: float
    cap: float
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.cap >= self.initial and self.multiplier >= 1):
            raise ValueError(
                f"backoff needs 0 < initial <= cap and multiplier >= 1, got initial={self.initial}, "
                f"cap={self.cap}, multiplier={self.multiplier}"
            )

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (``failures >= 1``)."""
        exponent = max(failures, 1) - 1
        # Stop multiplying once past the cap: avoids float overflow after thousands of failures.
        delay = self.initial
        for _ in range(exponent):
            delay *= self.multiplier
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)

    def delay(self, failures: int) -> float:
        """A jittered delay in ``[0, ceiling(failures)]``."""
        return self.rng.uniform(0.0, self.ceiling(failures))
