"""The soak's fault loop (``engine.run_schedule``) on trio's MockClock, with faults that only record themselves:
every kind comes in the first round, the RSS baseline waits for the fault warm-up and that round, and the faults
then go on for the soak's ``seconds``."""

from __future__ import annotations

import random

import pytest
import trio

from .engine import SoakReport, run_schedule

KINDS = ("a", "b", "c", "d", "e", "f", "g")


Injected = list[tuple[float, str]]


async def schedule(
    *, fault_warmup: float, fault_every: float, seed: int = 3
) -> tuple[SoakReport, Injected, list[float]]:
    """Run the loop: 10 s of warm-up, 60 s measured; each fault takes 0.5 s, each recovery 0.1 s; ``a`` is followed
    by ``z``. Returns the report, the (time, fault) injected and when the faults began, times from the loop's
    start."""
    report = SoakReport(recovery_bound=5.0)
    began = trio.current_time()
    injected: Injected = []
    starts: list[float] = []

    async def inject(fault: str) -> None:
        injected.append((trio.current_time() - began, fault))
        await trio.sleep(0.5)

    async def all_back() -> None:
        await trio.sleep(0.1)

    await run_schedule(
        report,
        random.Random(seed),
        seconds=60.0,
        warmup=10.0,
        fault_warmup=fault_warmup,
        fault_every=fault_every,
        faults=KINDS,
        inject=inject,
        all_back=all_back,
        on_start=lambda: starts.append(trio.current_time() - began),
        follow_ups={"a": "z"},
    )
    return report, injected, starts


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_first_round_injects_every_kind_once_before_any_repeats(
    autojump_clock: trio.abc.Clock, seed: int
) -> None:
    report, injected, starts = await schedule(fault_warmup=0.0, fault_every=4.0, seed=seed)
    drawn = [fault for _, fault in injected if fault != "z"]
    assert sorted(drawn[: len(KINDS)]) == sorted(KINDS)
    assert [f for _, f in injected].count("z") == report.faults["a"] == drawn.count("a")  # each a followed by z
    assert starts == [pytest.approx(10.0)] and injected[0][0] >= 10.0 + 0.5 * 4.0


async def test_without_a_fault_warmup_the_baseline_comes_before_the_first_fault(autojump_clock: trio.abc.Clock) -> None:
    report, injected, _ = await schedule(fault_warmup=0.0, fault_every=4.0)
    assert report.warm_at == 0.0 and report.rss_warm > 0 and report.rss_load > 0
    assert report.violations() == []
    # Faults for the measured 60 s: none begins after them, and the last one less than a pause before their end.
    last_at = injected[-1][0]
    assert 10.0 + 60.0 - 6.0 - 0.6 <= last_at < 10.0 + 60.0


async def test_the_baseline_waits_for_the_fault_warmup_when_the_first_round_is_quicker(
    autojump_clock: trio.abc.Clock,
) -> None:
    report, injected, _ = await schedule(fault_warmup=20.0, fault_every=1.0)
    round_done = [at for at, fault in injected if fault != "z"][len(KINDS) - 1] - 10.0
    assert round_done < 20.0 <= report.warm_at < 20.0 + 1.5 + 0.6 + 0.6  # the first check past 20 s of faults
    assert 10.0 + report.warm_at + 60.0 - 1.5 - 1.2 <= injected[-1][0] < 10.0 + report.warm_at + 60.0  # then 60 s


async def test_the_baseline_waits_for_the_first_round_when_the_fault_warmup_is_shorter(
    autojump_clock: trio.abc.Clock,
) -> None:
    report, injected, _ = await schedule(fault_warmup=5.0, fault_every=4.0)
    first_round = [(at, fault) for at, fault in injected if fault != "z"][: len(KINDS)]
    last_start = first_round[-1][0] - 10.0
    assert report.warm_at > last_start + 0.5 > 5.0  # after the seventh fault and its recovery
    assert report.warm_at < last_start + 0.5 + 0.1 + 0.5 + 0.1 + 0.01  # no later than its follow-up, if it had one
    # Samples from the first fault's turn on, timed from then, at the first turn of the loop past each 30 s.
    first, second = [at for at, _, _ in report.samples][:2]
    assert 30 <= first < 30 + 6 + 1.2 and 60 <= second < 60 + 6 + 1.2
