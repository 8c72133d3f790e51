"""Mutants of ``galaxy_trio/fleet/lease.py`` that the suite let live (``tests/mutation.sh lease``)."""

from __future__ import annotations

import math

import pytest

from galaxy_trio.fleet.lease import LeaseBook, LeaseTiming


def test_a_renew_interval_equal_to_the_local_validity_is_refused() -> None:
    # ttl 10 s, margin 1 s: a lease is valid 9 s locally; renewing every 9 s leaves no slack at all.
    with pytest.raises(ValueError, match=r"renew_interval \(9s\) must be less than ttl - safety_margin \(9s\)"):
        LeaseTiming.from_ttl(10.0, safety_margin=1.0, renew_interval=9.0)
    assert LeaseTiming.from_ttl(10.0, safety_margin=1.0, renew_interval=8.999).local_validity == 9.0


def test_every_problem_is_named_in_one_message() -> None:
    with pytest.raises(ValueError) as caught:
        LeaseTiming(ttl=0.0, renew_interval=-1.0, safety_margin=math.nan)
    assert str(caught.value) == (
        "invalid lease timing: ttl must be a positive number of seconds, got 0.0; "
        "renew_interval must be a positive number of seconds, got -1.0; "
        "safety_margin must be a positive number of seconds, got nan"
    )


def test_dropping_a_lease_forgets_it_and_says_whether_it_was_held() -> None:
    book = LeaseBook(LeaseTiming.from_ttl(10.0))
    book.granted(["a", "b"], sent_at=0.0)
    assert book.drop("a") is True
    assert "a" not in book and "b" in book and len(book) == 1
    assert book.drop("a") is False
    assert book.drop("never") is False
    assert book.next_expiry() == 9.0
