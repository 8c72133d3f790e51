"""The soak's memory instrument (``memory.py``, ``benchmarks/soak.py --trace-memory``) names what accumulates: a
growth planted between its first sample and its end must come out as the top type and the top site."""

from __future__ import annotations

import tracemalloc

from .memory import MemoryTrace, malloc_figures, malloc_heaps, pymalloc_figures


class PlantedRecord:
    """What the test keeps alive: a type of its own, so that its count can only come from here."""

    __slots__ = ("payload",)

    def __init__(self, n: int) -> None:
        self.payload = [n] * 8


def test_a_planted_growth_is_the_top_type_and_the_top_site_and_tracing_stops_after() -> None:
    trace = MemoryTrace(frames=4)
    kept_before = [PlantedRecord(n) for n in range(100)]  # before the baseline: not growth
    trace.baseline()
    trace.sample(30.0)  # the snapshot growth is measured from
    kept_after = [PlantedRecord(n) for n in range(5000)]
    figures = trace.finish()

    assert figures["types_grown"]["PlantedRecord"] == 5000
    top = figures["top_growth"][0]
    assert top["blocks"] >= 5000 and any("test_memory.py" in frame for frame in top["where"]), top
    assert figures["traced_growth_mib"] > 0.3  # 5000 records and their 8-item lists
    assert [sample["at"] for sample in figures["samples"]][:2] == [0.0, 30.0]
    assert all(sample["rss"] > 0 and sample["gc_objects"] > 0 for sample in figures["samples"])
    assert figures["malloc_trim"]["rss_after"] > 0
    assert not tracemalloc.is_tracing()
    assert len(kept_before) + len(kept_after) == 5100


def test_without_frames_there_is_no_tracemalloc_but_the_heaps_are_read() -> None:
    trace = MemoryTrace(frames=0)
    trace.baseline()
    trace.sample(30.0)
    kept = [PlantedRecord(n) for n in range(1000)]
    figures = trace.finish()
    assert "top_growth" not in figures and not tracemalloc.is_tracing()
    assert figures["types_grown"]["PlantedRecord"] == 1000 and len(kept) == 1000
    # glibc and CPython's allocator, as this process sees them (glibc here; both exist on the CI's Linux).
    assert malloc_figures()["in_use"] > 0 and malloc_heaps()[0][0] > 0
    pymalloc = pymalloc_figures()
    assert 0 < pymalloc["blocks"] <= pymalloc["arenas"]
