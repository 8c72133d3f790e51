"""The client side of AIP, decided without sockets: verdicts, handshake outcomes, URL checks, heartbeat cadence."""

from __future__ import annotations

import itertools

import pytest

from galaxy_trio.aip import ClientType, ServerMessage, TaskStatus, builders, decode_server_message
from galaxy_trio.aip.client_protocol import (
    PERMANENT_HANDSHAKE_STATUSES,
    Beat,
    HeartbeatClock,
    answers_register,
    handshake_outcome,
    registration_verdict,
    url_problem,
)

from .. import frames

CONFIRMATION = decode_server_message(frames.raw("constellation_registration", 2))
TARGET_NOT_CONNECTED = decode_server_message(frames.raw("constellation_registration", 4))
DUPLICATE = decode_server_message(frames.raw("errors", 5))


# --- registration verdicts, on UFO's recorded frames ---------------------------------------------------------


def test_the_recorded_confirmation_confirms_for_either_role() -> None:
    for role in (ClientType.CONSTELLATION, ClientType.DEVICE):
        verdict = registration_verdict(CONFIRMATION, role)
        assert verdict is not None and verdict.confirmed and verdict.reason is None


def test_target_not_connected_is_the_one_retryable_refusal_for_a_constellation() -> None:
    verdict = registration_verdict(TARGET_NOT_CONNECTED, ClientType.CONSTELLATION)
    assert verdict is not None and not verdict.confirmed
    assert verdict.retryable and not verdict.duplicate
    assert verdict.reason == TARGET_NOT_CONNECTED.error


def test_a_duplicate_id_is_permanent_for_a_constellation_and_retried_by_a_device() -> None:
    as_constellation = registration_verdict(DUPLICATE, ClientType.CONSTELLATION)
    as_device = registration_verdict(DUPLICATE, ClientType.DEVICE)
    assert as_constellation is not None and as_device is not None
    assert as_constellation.duplicate and as_device.duplicate
    assert not as_constellation.retryable  # an operator must act
    assert as_device.retryable  # most likely our own previous incarnation, not yet dropped


def test_any_other_refusal_is_permanent_for_a_constellation() -> None:
    verdict = registration_verdict(builders.server_error("client_id is malformed"), ClientType.CONSTELLATION)
    assert verdict is not None and not verdict.confirmed and not verdict.retryable and not verdict.duplicate


@pytest.mark.parametrize(
    "frame",
    [
        builders.heartbeat_ack("a-session"),  # a task ack is heartbeat/ok too: it still answers (PROTOCOL.md §6)
        CONFIRMATION,
    ],
)
def test_heartbeat_ok_frames_answer_register(frame: ServerMessage) -> None:
    assert answers_register(frame)


def test_frames_that_are_not_an_answer_leave_the_verdict_open() -> None:
    not_ok = ServerMessage(type=CONFIRMATION.type, status=TaskStatus.FAILED)
    device_info = decode_server_message(frames.raw("device_info", 4))
    for frame in (not_ok, device_info):
        assert not answers_register(frame)
        assert registration_verdict(frame, ClientType.CONSTELLATION) is None
        assert registration_verdict(frame, ClientType.DEVICE) is None


# --- the handshake and the URL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (401, "token is wrong or missing"),
        (403, "token is wrong or missing"),
        (404, "nothing serves AIP at this path"),
        (400, "upgrade request"),
    ],
)
def test_what_time_cannot_fix_is_permanent_and_names_its_cause(status: int, cause: str) -> None:
    outcome = handshake_outcome(status, "ws://127.0.0.1:1/ws")
    assert outcome.permanent
    assert cause in outcome.reason and f"HTTP {status}" in outcome.reason and "ws://127.0.0.1:1/ws" in outcome.reason


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429, 302])
def test_server_side_and_transient_statuses_are_retried(status: int) -> None:
    outcome = handshake_outcome(status, "ws://h/ws")
    assert not outcome.permanent and str(status) in outcome.reason
    assert status not in PERMANENT_HANDSHAKE_STATUSES


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ws://127.0.0.1:70000/ws", "out of range"),
        ("ws://127.0.0.1:0/ws", "port 0"),
        ("ws:///ws", "no host"),
        ("http://127.0.0.1:5005/ws", "must be a ws:// or wss:// URL, not 'http'"),
        ("127.0.0.1:5005", "must be a ws:// or wss:// URL"),
    ],
)
def test_urls_that_can_never_connect_are_named(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None and problem in found


def test_a_token_in_the_query_never_appears_in_the_url_problem() -> None:
    found = url_problem("ws://127.0.0.1:99999/ws?token=hunter2")
    assert found is not None and "hunter2" not in found


@pytest.mark.parametrize("url", ["ws://127.0.0.1:5005/ws", "wss://[::1]:443/ws?token=x", "ws://localhost/ws"])
def test_good_urls_have_no_problem(url: str) -> None:
    assert url_problem(url) is None


# --- heartbeat cadence and liveness ------------------------------------------------------------------------------


def _drive(clock: HeartbeatClock, until: float, *, answer_after: float | None) -> tuple[list[float], float | None]:
    """Run a perfect driver on virtual time: beats sent, and (optionally) each answered ``answer_after`` later.

    Returns the send times and when the link was declared dead (None if it stayed alive).
    """
    sent: list[float] = []
    answers: list[float] = []
    last_frame_at = -1.0
    while True:
        now = min([clock.wake_at, *answers])
        if now > until:
            return sent, None
        if answers and now == answers[0]:
            answers.pop(0)
            last_frame_at = now
            continue
        beat = clock.poll(now, last_frame_at=last_frame_at)
        if beat is Beat.DEAD:
            return sent, now
        if beat is Beat.SEND:
            clock.sent(now)
            sent.append(now)
            if answer_after is not None:
                answers.append(now + answer_after)


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 10.0), (5.0, 5.0), (10.0, 1.0), (0.25, 3.0), (30.0, 10.0)])
def test_heartbeats_keep_the_interval_whatever_the_timeout(interval: float, timeout: float) -> None:
    """The bug this module fixed: with interval < timeout, beats went out every timeout."""
    clock = HeartbeatClock(interval, timeout, now=0.0)
    sent, dead_at = _drive(clock, 100 * interval, answer_after=min(interval, timeout) / 2)
    assert dead_at is None
    assert sent == [interval * k for k in range(1, 101)]
    assert all(b - a == pytest.approx(interval) for a, b in itertools.pairwise(sent))


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 10.0), (5.0, 5.0), (10.0, 1.0)])
def test_silence_is_detected_timeout_after_the_first_unanswered_beat(interval: float, timeout: float) -> None:
    clock = HeartbeatClock(interval, timeout, now=0.0)
    sent, dead_at = _drive(clock, 1000.0, answer_after=None)
    assert dead_at == interval + timeout  # the window runs from the oldest unanswered beat
    # beats kept their cadence while waiting for the answer
    assert sent == [interval * k for k in range(1, len(sent) + 1)]
    assert sent[-1] <= dead_at


def test_a_frame_received_answers_every_beat_before_it() -> None:
    clock = HeartbeatClock(1.0, 2.0, now=0.0)
    assert clock.poll(1.0) is Beat.SEND
    clock.sent(1.0)
    assert clock.presumed_dead_at == 3.0
    clock.poll(2.0)
    clock.sent(2.0)
    assert clock.presumed_dead_at == 3.0  # still the oldest beat's window
    clock.frame_received()
    assert clock.presumed_dead_at is None
    assert clock.wake_at == 3.0


def test_a_frame_read_before_the_beat_does_not_answer_it() -> None:
    clock = HeartbeatClock(1.0, 2.0, now=0.0)
    clock.poll(1.0, last_frame_at=0.5)
    clock.sent(1.0)
    assert clock.poll(3.0, last_frame_at=0.5) is Beat.DEAD


def test_unread_bytes_at_the_deadline_are_an_answer_that_buys_one_more_window() -> None:
    clock = HeartbeatClock(10.0, 2.0, now=0.0)
    clock.poll(10.0)
    clock.sent(10.0)
    assert clock.poll(12.0, unread=True) is Beat.WAIT
    assert clock.presumed_dead_at == 14.0
    assert clock.poll(14.0, unread=False) is Beat.DEAD


def test_a_driver_that_fell_behind_sends_one_beat_not_a_burst() -> None:
    clock = HeartbeatClock(1.0, 100.0, now=0.0)
    assert clock.poll(7.5) is Beat.SEND
    clock.sent(7.5)
    assert clock.heartbeat_due_at == 8.5
    assert clock.poll(7.5) is Beat.WAIT


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_non_positive_periods_are_refused(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        HeartbeatClock(interval, timeout, now=0.0)
