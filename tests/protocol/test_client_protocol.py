"""The sans-IO client protocol, without sockets or trio: frames and times in, events out."""

from __future__ import annotations

import itertools

import pytest

from galaxy_trio.aip import ClientType, builders, encode_text
from galaxy_trio.aip.client_protocol import (
    ClientProtocol,
    DeviceInfoAnswered,
    Heartbeats,
    Outcome,
    RegistrationState,
    Role,
    TaskAcked,
    TaskEnded,
    Unsolicited,
    Verdict,
    connect_outcome,
    handshake_outcome,
    rejection_outcome,
)
from galaxy_trio.aip.messages import TaskStatus


def _constellation() -> ClientProtocol:
    return ClientProtocol(Role.CONSTELLATION, "t@dev", heartbeat_interval=5, heartbeat_timeout=3, now=0.0)


def _registered() -> ClientProtocol:
    protocol = _constellation()
    protocol.register(ClientProtocol.constellation_register("t", "dev"))
    assert protocol.receive(builders.registration_confirmation(), 0.1) == [Verdict(None)]
    return protocol


@pytest.mark.parametrize(
    ("status", "permanent", "cause"),
    [(401, True, "token"), (403, True, "token"), (404, True, "/ws"), (400, True, "malformed"), (500, False, None)],
)
def test_handshake_statuses_are_classified_once(status: int, permanent: bool, cause: str | None) -> None:
    outcome = handshake_outcome(status)
    assert outcome.permanent is permanent
    assert outcome.reason == f"handshake rejected with HTTP {status}"
    if cause is None:
        assert outcome.hint is None
    else:
        assert outcome.hint is not None and cause in outcome.hint and cause in outcome.describe()


def test_connect_failures_are_retryable_unless_the_url_cannot_be_dialled() -> None:
    reset = "connection failed (OSError: [Errno 104] Connection reset by peer)"
    assert connect_outcome(reset, invalid_url=False) == Outcome(reset)
    refused = connect_outcome("connection refused by 127.0.0.1:5005", invalid_url=False)
    assert not refused.permanent
    assert refused.describe() == (
        "connection refused by 127.0.0.1:5005: is the AIP server running? check the host and port of the server URL"
    )
    bad_port = connect_outcome("invalid WebSocket URL: Port out of range 0-65535", invalid_url=True)
    assert bad_port.permanent and "Port out of range" in bad_port.describe() and "server URL" in bad_port.describe()


def test_only_a_missing_target_is_a_retryable_rejection() -> None:
    assert not rejection_outcome("Target device 'dev' is not connected").permanent
    assert rejection_outcome("Client ID 't@dev' is already registered").permanent
    assert rejection_outcome("anything else").permanent


@pytest.mark.parametrize("role", list(Role))
def test_the_next_heartbeat_ok_confirms_and_the_next_error_rejects(role: Role) -> None:
    protocol = ClientProtocol(role, "dev", heartbeat_interval=5, heartbeat_timeout=3, now=0.0)
    protocol.register(ClientProtocol.device_register("dev", platform="linux", system_info=None))
    assert protocol.state is RegistrationState.REGISTERING
    (verdict,) = protocol.receive(builders.server_error("Target device 'x' is not connected"), 1.0)
    assert isinstance(verdict, Verdict) and verdict.outcome is not None and not verdict.outcome.permanent
    assert verdict.text == "Target device 'x' is not connected"
    assert protocol.state is RegistrationState.REJECTED
    protocol.register(ClientProtocol.device_register("dev", platform="linux", system_info=None))
    assert protocol.receive_text(encode_text(builders.registration_confirmation()), 2.0) == [Verdict(None)]
    assert protocol.state is RegistrationState.REGISTERED


def test_a_device_takes_any_other_first_reply_as_a_broken_server_a_constellation_waits() -> None:
    device = ClientProtocol(Role.DEVICE, "dev", heartbeat_interval=5, heartbeat_timeout=3, now=0.0)
    device.register(ClientProtocol.device_register("dev", platform="linux", system_info=None))
    (verdict,) = device.receive(builders.device_info_response("r", {}), 1.0)
    assert isinstance(verdict, Verdict) and verdict.outcome is not None and "confirmation" in verdict.outcome.reason
    constellation = _constellation()
    constellation.register(ClientProtocol.constellation_register("t", "dev"))
    (event,) = constellation.receive(builders.device_info_response("r", {}), 1.0)
    assert isinstance(event, Unsolicited) and constellation.state is RegistrationState.REGISTERING


def test_device_info_answers_are_correlated_by_request_id() -> None:
    protocol = _registered()
    request = protocol.device_info_request("dev", "r1")
    assert request.request_id == "r1" and request.client_id == "t@dev"
    (stranger,) = protocol.receive(builders.device_info_response("r2", {"platform": "x"}), 1.0)
    assert isinstance(stranger, Unsolicited)
    answer = builders.device_info_response("r1", {"platform": "linux"})
    assert protocol.receive(answer, 1.0) == [DeviceInfoAnswered("r1", answer)]
    (again,) = protocol.receive(answer, 1.0)  # answered once only
    assert isinstance(again, Unsolicited)


def test_task_acks_and_ends_go_only_to_our_own_sessions() -> None:
    protocol = _registered()
    protocol.expect_task("t@1")
    ack = builders.heartbeat_ack("t@1")
    assert protocol.receive(ack, 1.0) == [TaskAcked("t@1", ack)]
    foreign = builders.task_end(session_id="t@2", status=TaskStatus.COMPLETED, result="forged")
    (ignored,) = protocol.receive(foreign, 1.0)
    assert isinstance(ignored, Unsolicited) and ignored.frame is foreign
    end = builders.task_end(session_id="t@1", status=TaskStatus.COMPLETED, result="ok")
    assert protocol.receive(end, 2.0) == [TaskEnded("t@1", end)]
    (late,) = protocol.receive(end, 2.0)  # a second end for a finished task is not attributed again
    assert isinstance(late, Unsolicited)


def test_commands_are_not_for_a_constellation() -> None:
    protocol = _registered()
    command = builders.command(session_id="s", task_name=None, actions=[], agent_name=None)
    (event,) = protocol.receive(command, 1.0)
    assert isinstance(event, Unsolicited) and "constellation" in event.why


def test_heartbeat_frames_carry_the_role() -> None:
    device = ClientProtocol(Role.DEVICE, "dev", heartbeat_interval=5, heartbeat_timeout=3, now=0.0)
    assert device.heartbeat(5.0).client_type is ClientType.DEVICE
    assert _registered().heartbeat(5.0).client_type is ClientType.CONSTELLATION


def _drive(interval: float, timeout: float, *, answer_after: float | None, until: float) -> tuple[list[float], float]:
    """Run a driver loop on virtual time: beat when due, check liveness when due. Returns (beat times, dead at)."""
    beats = Heartbeats(interval, timeout, 0.0)
    sent: list[float] = []
    answers: list[float] = []
    now = 0.0
    while now < until:
        now = beats.wake_at
        if answers and answers[0] <= now:
            beats.frame_received(answers.pop(0))
            continue
        if beats.is_dead(now, unread=False):
            return sent, now
        if now >= beats.heartbeat_due_at:
            sent.append(now)
            beats.beat_sent(now)
            if answer_after is not None:
                answers.append(now + answer_after)
        # An answer that arrives before the next wake-up is read then.
        if answers and answers[0] < beats.wake_at:
            now = answers[0]
            beats.frame_received(answers.pop(0))
    return sent, -1.0


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 10.0), (2.0, 2.0), (10.0, 3.0)])
def test_cadence_is_the_interval_whatever_the_timeout(interval: float, timeout: float) -> None:
    sent, dead = _drive(interval, timeout, answer_after=0.5 * min(interval, timeout), until=50.0)
    assert dead == -1.0
    assert sent[:5] == [interval * k for k in range(1, 6)]
    assert all(b - a == pytest.approx(interval) for a, b in itertools.pairwise(sent))


@pytest.mark.parametrize(("interval", "timeout"), [(1.0, 10.0), (2.0, 2.0), (10.0, 3.0)])
def test_silence_is_dead_exactly_timeout_after_the_first_unanswered_beat(interval: float, timeout: float) -> None:
    sent, dead = _drive(interval, timeout, answer_after=None, until=100.0)
    assert dead == interval + timeout
    # Beats keep going while the first one waits for its answer.
    assert sent == [interval * k for k in range(1, len(sent) + 1)]
    assert sent == [interval * k for k in range(1, 100) if interval * k < interval + timeout]


def test_unread_bytes_restart_the_window_instead_of_declaring_death() -> None:
    beats = Heartbeats(10.0, 3.0, 0.0)
    beats.beat_sent(10.0)
    assert beats.presumed_dead_at == 13.0
    assert not beats.is_dead(13.0, unread=True)
    assert beats.presumed_dead_at == 16.0
    assert beats.is_dead(16.0, unread=False)


def test_a_driver_that_fell_behind_sends_one_beat_not_a_burst() -> None:
    beats = Heartbeats(1.0, 10.0, 0.0)
    beats.beat_sent(5.5)  # due at 1.0, sent 4.5 s late
    assert beats.heartbeat_due_at == 6.5


def test_bad_heartbeat_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Heartbeats(0.0, 1.0, 0.0)
