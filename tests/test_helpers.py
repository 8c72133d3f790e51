"""Backoff and URL redaction, the small helpers the manager and the agent share."""

from __future__ import annotations

import random

import pytest

from galaxy_trio.backoff import Backoff
from galaxy_trio.redact import redact_url, url_token, url_with_token


def test_backoff_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling(10_000) == 4.0  # no overflow after many failures


def test_backoff_delays_are_full_jitter_within_the_ceiling() -> None:
    backoff = Backoff(1.0, 30.0, rng=random.Random(7))
    delays = [backoff.delay(3) for _ in range(2000)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 3.5  # spread over the whole range, not synchronised


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_rejects_nonsense(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap)


def test_redact_url_hides_tokens_and_passwords() -> None:
    assert redact_url("ws://h:5/ws?token=abc&x=1") == "ws://h:5/ws?token=***&x=1"
    assert redact_url("wss://user:pw@h/ws") == "wss://user:***@h/ws"
    assert "abc" not in redact_url("ws://h/ws?api_key=abc")
    assert redact_url("ws://h/ws") == "ws://h/ws"


def test_url_token_round_trip() -> None:
    url = url_with_token("ws://h/ws", "t0k")
    assert url_token(url) == "t0k"
    assert url_token(url_with_token(url, "new")) == "new"
    assert url_with_token("ws://h/ws", None) == "ws://h/ws"
