"""Where a soak's memory goes (``benchmarks/soak.py --trace-memory``): so that RSS drift can be attributed, not
just measured.

RSS alone cannot tell a leak in Python objects from memory the C allocator holds but does not give back, or from a
native library's own heap (valkey-glide's Rust core). Three figures side by side can:

- **tracemalloc**'s traced total: every live Python allocation (objects, buffers), wherever it was made;
- **glibc's** ``mallinfo2``: bytes malloc has handed out and not had back (``in_use``, Python's big buffers *and*
  native code's) and bytes it holds free (``free``: fragmentation; RSS that ``malloc_trim`` could return);
- **live objects by type** (``gc.get_objects()``): what kind of thing accumulates.

At the baseline (after warm-up) a tracemalloc snapshot and the type counts are taken; at the end, the sites whose
traced size grew most since (grouped by traceback, so the caller that keeps the memory is named, not just
``dict.__setitem__``), the types whose live count grew, and what ``malloc_trim(0)`` gives back. Costly (tracemalloc
slows allocation several-fold and adds its own per-block records to RSS), so only on request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import linecache
import os
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from typing import Any

import psutil

MIB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def malloc_figures() -> dict[str, float]:
    """glibc's view of its heap, all arenas (MiB): ``in_use`` (handed out, incl. big mmapped blocks), ``free`` (held,
    not in use). Empty where there is no glibc ``mallinfo2`` (musl, macOS)."""
    function = getattr(_LIBC, "mallinfo2", None)
    if function is None:
        return {}
    function.restype = _MallInfo2
    info = function()
    return {
        "in_use": round((info.uordblks + info.hblkhd) / MIB, 1),
        "free": round(info.fordblks / MIB, 1),
    }


def malloc_heaps() -> list[tuple[float, float]]:
    """glibc's arenas one by one (MiB): (size, free) of each. Arena 0 is the main thread's (Python and trio run
    there); the others serve other threads — valkey-glide's Rust runtime — so where the free bytes pile up says
    whose allocations left them. From ``malloc_info``, which writes XML to a ``FILE*``."""
    if _LIBC is None or getattr(_LIBC, "malloc_info", None) is None:
        return []
    _LIBC.fopen.restype = ctypes.c_void_p
    _LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    _LIBC.fclose.argtypes = [ctypes.c_void_p]
    _LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as captured:
        stream = _LIBC.fopen(captured.name.encode(), b"w")
        if not stream:
            return []
        _LIBC.malloc_info(0, stream)
        _LIBC.fclose(stream)
        xml = captured.read().decode(errors="replace")
    heaps = []
    for heap in re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S):
        free = sum(int(size) for size in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>', heap))
        current = re.search(r'<system type="current" size="(\d+)"/>', heap)
        heaps.append((round(int(current.group(1)) / MIB, 1) if current else 0.0, round(free / MIB, 1)))
    return heaps


def pymalloc_figures() -> dict[str, float]:
    """CPython's small-object allocator (MiB): ``arenas`` (what it holds from the OS: an arena is returned only when
    every block in it is free) and ``blocks`` (what live objects use). Arenas growing while blocks do not is
    fragmentation: a burst of objects (a reconnect storm) spread over new arenas, a few survivors pinning each.
    From ``sys._debugmallocstats()``, which writes to the C stderr: captured through a temporary file."""
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return {}
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    figures: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "# bytes in allocated blocks":
            figures["blocks"] = round(int(value.replace(",", "")) / MIB, 1)
        elif name.strip() == "Total" and "arenas" not in figures:  # the first Total: the arenas' bytes
            figures["arenas"] = round(int(value.replace(",", "")) / MIB, 1)
    return figures


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def live_types() -> Counter[str]:
    """How many objects the garbage collector tracks, by type name (containers and instances; not ints or str)."""
    return Counter(type(obj).__qualname__ for obj in gc.get_objects())


class MemoryTrace:
    """Live types counted and tracemalloc started at :meth:`baseline` (tracing the warm-up too would slow a big
    fleet's start past its deadline), a snapshot at the first :meth:`sample` after it, figures at every sample,
    and what grew between the snapshot and :meth:`finish`."""

    def __init__(self, frames: int = 8, top: int = 15) -> None:
        self.frames = frames
        self.top = top
        self.samples: list[dict[str, Any]] = []
        self._snapshot: tracemalloc.Snapshot | None = None
        self._types: Counter[str] = Counter()
        self._since = 0.0
        self._started_tracing = False

    def baseline(self, at: float = 0.0) -> None:
        """Count live objects by type and start tracing (``at``: the time of this first sample, in the caller's
        seconds); the snapshot waits for the next :meth:`sample`, so that it holds the steady state (a task's
        buffers, a link's frames) and only accumulation shows as growth."""
        gc.collect()
        self._types = live_types()
        self._since = time.monotonic() - at
        if self.frames and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started_tracing = True
        self.sample(at)

    def sample(self, elapsed: float) -> None:
        if self.samples and self._snapshot is None and tracemalloc.is_tracing():
            self._snapshot = self._take()
        traced, _ = tracemalloc.get_traced_memory()
        self.samples.append(
            {
                "at": elapsed,
                "rss": round(_rss() / MIB, 1),
                "traced": round(traced / MIB, 1),
                "tracemalloc_overhead": round(tracemalloc.get_tracemalloc_memory() / MIB, 1),
                **malloc_figures(),
                **{f"pymalloc_{name}": value for name, value in pymalloc_figures().items()},
                "gc_objects": len(gc.get_objects()),
                "malloc_heaps": malloc_heaps(),
            }
        )

    def _take(self) -> tracemalloc.Snapshot:
        # Not the tracer's own records (nor this module's), nor the import machinery's caches.
        return tracemalloc.take_snapshot().filter_traces(
            (
                tracemalloc.Filter(False, __file__, all_frames=True),
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, linecache.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
            )
        )

    def finish(self) -> dict[str, Any]:
        """What grew since the baseline: tracemalloc sites, live types, and RSS before/after ``malloc_trim(0)``."""
        gc.collect()
        self.sample(round(time.monotonic() - self._since))
        figures: dict[str, Any] = {"samples": self.samples}
        grown = live_types()  # before the snapshot and its statistics exist
        grown.subtract(self._types)
        figures["types_grown"] = {name: count for name, count in grown.most_common(self.top) if count > 0}
        if self._snapshot is not None:
            stats = self._take().compare_to(self._snapshot, "traceback")
            figures["top_growth"] = [
                {
                    "kib": round(stat.size_diff / 1024, 1),
                    "blocks": stat.count_diff,
                    "where": [f"{_short(frame.filename)}:{frame.lineno}" for frame in stat.traceback][-6:],
                }
                for stat in stats[: self.top]
            ]
            figures["traced_growth_mib"] = round(sum(stat.size_diff for stat in stats) / MIB, 2)
            self._snapshot = None
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False
        trim = getattr(_LIBC, "malloc_trim", None)
        if trim is not None:
            before = _rss()
            trim(0)
            figures["malloc_trim"] = {"rss_before": round(before / MIB, 1), "rss_after": round(_rss() / MIB, 1)}
        return figures


def _short(filename: str) -> str:
    """A path from the package or library root: ``galaxy_trio/...``, ``trio/...``, not the venv's absolute path."""
    parts = filename.split(os.sep)
    for anchor in ("site-packages", "galaxy_trio", "tests", "lib"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return os.sep.join(parts[index + (anchor in ("site-packages", "lib")) :])
    return filename
