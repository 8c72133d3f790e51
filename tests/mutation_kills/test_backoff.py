"""Mutants of ``galaxy_trio/backoff.py`` that the suite let live (``tests/mutation.sh backoff``)."""

from __future__ import annotations

import random

import pytest

from galaxy_trio.backoff import Backoff


def test_a_cap_equal_to_the_initial_delay_is_a_constant_backoff() -> None:
    backoff = Backoff(2.0, 2.0)
    assert [backoff.ceiling(n) for n in (1, 2, 50)] == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("multiplier", [1.0, 1.5])
def test_multipliers_from_one_up_are_allowed(multiplier: float) -> None:
    backoff = Backoff(1.0, 10.0, multiplier=multiplier)
    assert backoff.ceiling(3) == pytest.approx(multiplier**2)


@pytest.mark.parametrize(("initial", "cap", "multiplier"), [(0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1.0, 2.0, 0.99)])
def test_impossible_backoffs_are_refused_naming_the_values(initial: float, cap: float, multiplier: float) -> None:
    with pytest.raises(ValueError, match=f"initial={initial}, cap={cap}, multiplier={multiplier}"):
        Backoff(initial, cap, multiplier)


def test_delays_are_drawn_from_zero_to_the_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    delays = [backoff.delay(4) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 7.9
