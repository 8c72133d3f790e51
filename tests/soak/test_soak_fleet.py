"""The fleet soak's CI version: 60 real seconds of faults and tasks over three members on Redis
(``fleet_engine.py``), every invariant checked; and the fleet soak's own bookkeeping on hand-made histories.

Like ``test_soak.py``: real clock, hence ``slow``; bounds loose where the machine's load decides (recovery within
the lease TTL + the single-manager bound, RSS within 10 % after warm-up), exact where only a bug could break them
(one outcome per call, no double execution, no overlap, one driver per device, nothing left). Skipped, saying
why, without redis-server or the glide client (``.ci/redis.sh`` and the ``fleet`` extra install them in CI).
"""

from __future__ import annotations

import shutil

import pytest

from .engine import CALL_BOUND
from .fleet_engine import FLEET_FAULTS, ClaimBook, FleetSoakReport, attribute_outages, run_fleet_soak

NO_GLIDE = "the Redis client valkey-glide is not installed: pip install 'galaxy_trio[fleet]'"


def require_fleet() -> None:
    """Skip (saying why) without redis-server or the glide client; ``.ci/redis.sh`` and the ``fleet`` extra install
    them in CI."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (run .ci/redis.sh, or: apt-get install -y redis-server)")
    pytest.importorskip("glide", reason=NO_GLIDE)


@pytest.mark.slow
async def test_sixty_seconds_of_fleet_faults_and_tasks_break_no_invariant() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (run .ci/redis.sh, or: apt-get install -y redis-server)")
    pytest.importorskip(
        "glide", reason="the Redis client valkey-glide is not installed: pip install 'galaxy_trio[fleet]'"
    )
    report = await run_fleet_soak(seconds=60.0, devices=12, callers=4, seed=38, fault_every=4.0)
    figures = report.figures()
    assert report.violations() == [], figures
    assert sum(report.faults.values()) >= 8, figures  # the schedule really ran
    # The first round has every kind of fault once (engine.run_schedule), Redis restarts and member kills included.
    assert report.faults["redis_restart"] >= 1 and report.faults["member_kill"] >= 1, figures
    # Cut off from Redis, member C drove devices and then none (its own clock let them go); violations() checks
    # the "none", this that there was something to let go.
    assert len(report.partitions) == report.faults["member_partition"] >= 1, figures
    assert all(held > 0 for held, _ in report.partitions), figures
    assert report.faults["member_restart"] == report.faults["member_kill"], figures
    assert len(report.member_process) == 1 + report.faults["member_kill"], figures
    assert report.results_by_kind["completed"] >= 100, figures  # and so did the load
    # Member C's own callers: their tasks ran, and every call ended within its bound (violations() checks). Whether
    # one was refused while C was cut off depends on timing: a call already waiting for a reply waits it out.
    assert report.member_outcomes["completed"] >= 10, figures
    assert report.rss_drift < 0.10, figures
    assert report.fd_drift <= 5, figures
    # The device side's process (the server and the agents) too.
    assert report.server_rss_drift < 0.10, figures
    assert report.server_fd_drift <= 5, figures


def test_two_members_claiming_one_device_longer_than_the_slack_is_a_violation() -> None:
    report = FleetSoakReport()
    book = ClaimBook(report)
    book.claim("a", "d1", 100.0)
    book.claim("b", "d1", 100.2)  # the server had let a's link go; a hears of it 0.1 s later
    book.release("a", "d1", 100.3)
    book.claim("a", "d2", 100.0)
    book.set_claims("c", {"d2"}, 101.0)  # c drives d2 while a still does, for 2 s
    book.finish(103.0)
    assert report.overlaps == 2 and report.worst_overlap == pytest.approx(2.0)
    assert [(d, round(s, 3)) for d, _, _, s, _ in report.double_drives] == [("d2", 2.0)]
    (violation,) = report.violations()
    assert "driven by two members at once" in violation and "'d2'" in violation and "'d1'" not in violation


def test_an_outage_counts_for_the_fault_it_began_after_even_when_it_ends_after_the_wait() -> None:
    report = FleetSoakReport(recovery_bound=15.0)
    book = ClaimBook(report)
    book.claim("a", "d1", 5.0)
    book.release("a", "d1", 6.0)  # before the first fault: not counted
    book.claim("a", "d1", 6.5)
    report.begin_fault("redis_restart", 10.0)
    report.end_fault("redis_restart", 11.0)
    book.release("a", "d1", 12.0)  # dropped at the first renewal after Redis came back empty
    book.claim("b", "d1", 13.5)
    report.begin_fault("cut", 20.0)
    report.end_fault("cut", 20.0)
    book.release("b", "d1", 20.5)
    book.claim("b", "d1", 40.0)  # back 20 s after the cut: over the bound
    report.recoveries = [("redis_restart", 0.0), ("cut", 0.1)]  # what the wait right after each fault saw
    attribute_outages(report)
    assert report.recoveries == [("redis_restart", 2.5), ("cut", 20.0)]
    assert report.unrecovered == ["cut (a device down until 20.0 s after it)"]
    assert report.outages == 2 and report.longest_outage == pytest.approx(19.5)
    assert "redis_restart" in FLEET_FAULTS


def test_a_member_still_driving_when_its_redis_link_comes_back_is_a_violation() -> None:
    report = FleetSoakReport(lease_ttl=3.0)
    report.partitions = [(4, 0), (4, 2)]  # the first let its devices go in time, the second did not
    (violation,) = report.violations()
    assert "still drove 2 of its 4 devices" in violation
    assert report.figures()["partitions"] == [(4, 0), (4, 2)]


def test_more_calls_lost_with_member_c_than_its_callers_had_in_flight_is_a_violation() -> None:
    report = FleetSoakReport(callers=4, member_callers=2)
    report.faults["member_kill"] = 1
    report.calls, report.results, report.lost_with_member = 12, 10, 2  # one call in flight per caller at the kill
    assert report.violations() == []
    report.calls, report.lost_with_member = 13, 3
    assert report.violations() == ["3 calls lost with member C, more than its 2 callers had in flight at its 1 kills"]


def test_a_call_that_took_longer_than_its_bound_is_a_violation() -> None:
    report = FleetSoakReport()
    report.note_call_time(CALL_BOUND)
    assert report.violations() == []
    report.note_call_time(CALL_BOUND + 0.5)
    assert report.violations() == [f"a call took {CALL_BOUND + 0.5:.1f} s, more than the task timeout + 12 s"]
