"""Process-wide tuning for long-running fleet processes (the CLI applies it; libraries users may opt in).

Every connected device keeps a few hundred objects that Python's cyclic garbage collector tracks. With the default
thresholds (700, 10, 10) a manager bringing 10,000 devices up runs about twenty full collections of a second each —
most of its CPU time (benchmarks/README.md). Raising the first threshold makes collections rarer while the fleet
grows, and freezing the objects of a settled fleet keeps later full collections from rescanning them. Both only
change *when* cycles are collected; reference counting still frees everything else at once.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["FLEET_GC_THRESHOLDS", "freeze_settled_objects", "tune_gc"]

#: Thresholds measured in benchmarks/README.md: 10,000 devices to IDLE in ~24 s instead of ~37 s.
FLEET_GC_THRESHOLDS: Final = (10_000, 50, 1_000)


def tune_gc(thresholds: tuple[int, int, int] = FLEET_GC_THRESHOLDS) -> tuple[int, int, int]:
    """Set the collector's thresholds for a fleet process; returns the previous ones (to restore them)."""
    previous = gc.get_threshold()
    gc.set_threshold(*thresholds)
    return (previous[0], previous[1], previous[2])


def freeze_settled_objects() -> None:
    """Collect once, then move every surviving object out of the collector's reach (``gc.freeze``).

    Call it when a fleet has settled: its long-lived connection state is then never rescanned.
    """
    gc.collect()
    gc.freeze()
