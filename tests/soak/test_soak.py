"""The chaos soak's CI version: 60 real seconds of faults and tasks, every invariant checked (``engine.py``).

Real clock (the soak is about time passing under load: leaks, stuck callers, recoveries), hence ``slow``. Its
bounds are loose where the machine's load decides (recovery within its bound, RSS within 10 % after warm-up) and
exact where only a bug could break them (one result per call, no double execution, no overlap, nothing left).
"""

from __future__ import annotations

import pytest

from .engine import run_soak


@pytest.mark.slow
async def test_sixty_seconds_of_faults_and_tasks_break_no_invariant() -> None:
    report = await run_soak(seconds=60.0, devices=12, callers=4, seed=15, fault_every=4.0)
    figures = report.figures()
    assert report.violations() == [], figures
    assert sum(report.faults.values()) >= 8, figures  # the schedule really ran
    assert report.results_by_kind["completed"] >= 100, figures  # and so did the load
    assert report.rss_drift < 0.10, figures
    assert report.fd_drift <= 5, figures
    # The device side's process (the server and the agents) too.
    assert report.server_rss_drift < 0.10, figures
    assert report.server_fd_drift <= 5, figures
