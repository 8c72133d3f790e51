"""The pure lease rules: local validity, renewal bookkeeping, fair share, preference order."""

from __future__ import annotations

import math

import pytest

from galaxy_trio.fleet import LeaseBook, LeaseTiming, fair_share, rank_for_member


def test_timing_defaults_renew_at_a_third_and_keep_a_tenth_as_margin() -> None:
    timing = LeaseTiming.from_ttl(9.0)
    assert timing.renew_interval == 3.0
    assert timing.safety_margin == pytest.approx(0.9)
    assert timing.local_validity == pytest.approx(8.1)
    assert LeaseTiming.from_ttl(1.5001).ttl_ms == 1501  # rounded up: never shorter than asked


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0.0}, "ttl must be a positive number"),
        ({"ttl": math.inf}, "ttl must be a positive number"),
        ({"ttl": 2.0, "safety_margin": 2.0}, "safety_margin (2s) must be less than ttl (2s)"),
        ({"ttl": 2.0, "renew_interval": 1.9}, "renew_interval (1.9s) must be less than ttl - safety_margin (1.8s)"),
    ],
)
def test_timing_rejects_settings_that_would_lose_leases(kwargs: dict[str, float], message: str) -> None:
    rest = {key: value for key, value in kwargs.items() if key != "ttl"}  # the parameter itself stays intact
    with pytest.raises(ValueError, match="invalid lease timing") as caught:
        LeaseTiming.from_ttl(kwargs["ttl"], **rest)
    assert message in str(caught.value)


def test_a_lease_is_valid_until_send_time_plus_ttl_minus_margin() -> None:
    book = LeaseBook(LeaseTiming.from_ttl(10.0, safety_margin=1.0))
    book.granted(["a", "b"], sent_at=100.0)
    assert book.valid_until("a") == 109.0
    assert book.is_valid("a", 108.999) and not book.is_valid("a", 109.0)
    assert book.next_expiry() == 109.0
    assert book.expired(108.5) == []
    assert sorted(book.expired(109.0)) == ["a", "b"]
    assert len(book) == 0 and book.next_expiry() == math.inf


def test_a_late_reply_never_shortens_a_newer_validity() -> None:
    book = LeaseBook(LeaseTiming.from_ttl(10.0, safety_margin=1.0))
    book.granted(["a"], sent_at=50.0)
    book.granted(["a"], sent_at=40.0)  # the reply to an older request arrives last
    assert book.valid_until("a") == 59.0


def test_renewed_forgets_lost_leases_and_extends_the_rest() -> None:
    book = LeaseBook(LeaseTiming.from_ttl(10.0, safety_margin=1.0))
    book.granted(["a", "b", "c"], sent_at=0.0)
    lost = book.renewed(["a", "b", "c"], still_held=["a", "c"], sent_at=3.0)
    assert lost == ["b"]
    assert "b" not in book and book.held() == ["a", "c"]
    assert book.valid_until("a") == 12.0 and book.valid_until("c") == 12.0
    # A lost lease is gone for good: a later "still held" answer about it does not bring it back.
    assert book.renewed(["a"], still_held=["a", "b"], sent_at=6.0) == []
    assert "b" not in book


@pytest.mark.parametrize(
    ("total", "members", "share"),
    [(60, 3, 20), (60, 2, 30), (61, 3, 21), (10, 3, 4), (2, 3, 1), (0, 3, 0), (5, 0, 5), (7, 1, 7)],
)
def test_fair_share_is_the_ceiling_of_devices_per_live_member(total: int, members: int, share: int) -> None:
    assert fair_share(total, members) == share
    assert fair_share(total, members) * max(members, 1) >= total  # the shares always cover the fleet


def test_fair_share_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError, match="total_devices must be >= 0"):
        fair_share(-1, 2)


def test_members_rank_the_same_devices_differently_and_stably() -> None:
    devices = [f"dev-{i:02d}" for i in range(40)]
    a = rank_for_member("member-a", devices)
    b = rank_for_member("member-b", devices)
    assert sorted(a) == sorted(devices) and sorted(b) == sorted(devices)
    assert a != b
    assert rank_for_member("member-a", reversed(devices)) == a  # independent of input order
    # Preference is per device: dropping devices keeps the others' relative order.
    assert rank_for_member("member-a", devices[:20]) == [d for d in a if d in set(devices[:20])]
