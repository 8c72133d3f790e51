"""Mutants of ``galaxy_trio/aip/client_protocol.py`` that the suite let live (``tests/mutation.sh
client_protocol``): every event ``receive`` returns, compared whole; the outcome texts; the heartbeat arithmetic
at its edges."""

from __future__ import annotations

import math

import msgspec
import pytest

from galaxy_trio.aip import AIPDecodeError, ClientMessage, ClientType, TaskStatus, builders, encode_text
from galaxy_trio.aip.client_protocol import (
    PERMANENT_HANDSHAKE_STATUSES,
    REFUSED_HINT,
    ClientProtocol,
    DeviceInfoAnswered,
    Heartbeats,
    Outcome,
    RegistrationState,
    Role,
    ServerError,
    ServerFrame,
    TaskAcked,
    TaskEnded,
    Unsolicited,
    Verdict,
    connect_outcome,
    handshake_outcome,
    is_duplicate,
    rejection_outcome,
)


def _registered(role: Role = Role.CONSTELLATION, client_id: str = "t@dev") -> ClientProtocol:
    protocol = ClientProtocol(role, client_id, heartbeat_interval=2.0, heartbeat_timeout=5.0, now=100.0)
    protocol.register(protocol.constellation_register("t", "dev"))
    assert protocol.receive(builders.registration_confirmation(), 100.0) == [Verdict(None)]
    return protocol


# --- outcomes -----------------------------------------------------------------------------------------------------


def test_handshake_outcomes_name_the_status_and_only_the_permanent_ones_have_a_hint() -> None:
    assert handshake_outcome(404) == Outcome(
        "handshake rejected with HTTP 404", permanent=True, hint=PERMANENT_HANDSHAKE_STATUSES[404]
    )
    assert handshake_outcome(503) == Outcome("handshake rejected with HTTP 503", permanent=False, hint=None)


def test_connect_outcomes_are_permanent_only_for_a_url_that_cannot_be_dialled() -> None:
    assert connect_outcome("port out of range", invalid_url=True) == Outcome(
        "port out of range", permanent=True, hint="fix the server URL"
    )
    assert connect_outcome("connection refused by h:1", invalid_url=False) == Outcome(
        "connection refused by h:1", permanent=False, hint=REFUSED_HINT
    )
    assert connect_outcome("connection reset", invalid_url=False) == Outcome(
        "connection reset", permanent=False, hint=None
    )


def test_only_a_target_not_connected_yet_is_worth_retrying() -> None:
    assert rejection_outcome("Target device 'd' is not connected") == Outcome(
        "Target device 'd' is not connected", permanent=False
    )
    assert rejection_outcome("Target device 'd' is busy").permanent
    assert rejection_outcome("device 'd' is not connected").permanent
    assert rejection_outcome("Client 'x' is already registered").permanent


def test_a_duplicate_is_recognised_by_its_text() -> None:
    assert is_duplicate("Client 'x' is already registered")
    assert not is_duplicate("Client 'x' is registered")


def test_describe_adds_the_hint_after_a_colon() -> None:
    assert Outcome("a", hint="b").describe() == "a: b"
    assert Outcome("a").describe() == "a"


# --- heartbeats -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "timeout"), [(0.0, 1.0), (1.0, 0.0), (math.inf, 1.0), (1.0, math.inf), (math.nan, 1.0), (1.0, -2.0)]
)
def test_impossible_heartbeat_settings_are_refused(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="heartbeat interval and timeout must be positive seconds"):
        Heartbeats(interval, timeout, 0.0)


def test_heartbeats_start_one_interval_after_now_awaiting_nothing() -> None:
    beats = Heartbeats(2.0, 5.0, 10.0)
    assert (beats.interval, beats.timeout, beats.last_frame_at) == (2.0, 5.0, 10.0)
    assert beats.heartbeat_due_at == 12.0
    assert beats.presumed_dead_at is None
    assert beats.wake_at == 12.0


def test_the_oldest_unanswered_beat_starts_the_window_and_later_beats_do_not_move_it() -> None:
    beats = Heartbeats(2.0, 5.0, 10.0)
    beats.beat_sent(12.0)
    beats.beat_sent(14.0)
    assert beats.presumed_dead_at == 17.0
    assert beats.heartbeat_due_at == 16.0
    assert beats.wake_at == 16.0
    beats.beat_sent(16.0)
    assert beats.wake_at == 17.0  # the liveness check comes before the next beat (18)
    beats.frame_received(16.5)
    assert beats.presumed_dead_at is None and beats.last_frame_at == 16.5


def test_a_driver_that_fell_behind_gets_one_beat_then_the_cadence_from_now() -> None:
    beats = Heartbeats(2.0, 5.0, 0.0)
    beats.beat_sent(9.0)  # due at 2, sent at 9: the next is due at 11, not at 4, 6, 8
    assert beats.heartbeat_due_at == 11.0
    beats = Heartbeats(2.0, 5.0, 0.0)
    beats.beat_sent(2.0)  # on time: due exactly interval later (the `<=` edge)
    assert beats.heartbeat_due_at == 4.0
    beats = Heartbeats(2.0, 5.0, 0.0)
    beats.beat_sent(4.0)  # exactly one interval late: due + interval == now, so from now
    assert beats.heartbeat_due_at == 6.0


def test_dead_exactly_at_the_window_end_unless_bytes_wait_unread() -> None:
    beats = Heartbeats(2.0, 5.0, 0.0)
    beats.beat_sent(2.0)
    assert not beats.is_dead(6.999, unread=False)
    assert not beats.is_dead(7.0, unread=True)  # a late reader: the window restarts at 7
    assert beats.presumed_dead_at == 12.0
    assert beats.is_dead(12.0, unread=False)


# --- frames out ---------------------------------------------------------------------------------------------------


def test_a_new_protocol_is_unregistered_and_register_arms_the_verdict() -> None:
    protocol = ClientProtocol(Role.DEVICE, "dev", heartbeat_interval=1.0, heartbeat_timeout=3.0, now=0.0)
    assert (protocol.role, protocol.client_id, protocol.state) == (Role.DEVICE, "dev", RegistrationState.UNREGISTERED)
    assert protocol.heartbeats.heartbeat_due_at == 1.0 and protocol.heartbeats.timeout == 3.0
    frame = protocol.device_register("dev", platform="linux", system_info={"cpu": 4})
    assert protocol.register(frame) is frame
    assert protocol.state is RegistrationState.REGISTERING


def _timeless(message: ClientMessage) -> dict[str, object]:
    """A frame without its per-send times (timestamp, metadata.registration_time), for comparing two builds."""
    data: dict[str, object] = msgspec.to_builtins(message)
    data.pop("timestamp")
    if isinstance(data["metadata"], dict):
        data["metadata"].pop("registration_time", None)
    return data


def test_the_register_frames_are_the_builders_ones() -> None:
    assert _timeless(ClientProtocol.device_register("dev", platform="linux", system_info={"cpu": 4})) == _timeless(
        builders.device_register("dev", platform="linux", system_info={"cpu": 4})
    )
    assert _timeless(ClientProtocol.constellation_register("task", "dev")) == _timeless(
        builders.constellation_register("task", "dev")
    )


@pytest.mark.parametrize(
    ("role", "client_type"), [(Role.CONSTELLATION, ClientType.CONSTELLATION), (Role.DEVICE, ClientType.DEVICE)]
)
def test_a_heartbeat_carries_the_roles_client_type_and_plans_the_next(role: Role, client_type: ClientType) -> None:
    protocol = ClientProtocol(role, "me", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    frame = protocol.heartbeat(2.0)
    assert (frame.client_id, frame.client_type) == ("me", client_type)
    assert protocol.heartbeats.heartbeat_due_at == 4.0
    assert protocol.heartbeats.presumed_dead_at == 7.0


def test_a_cached_heartbeat_is_restamped_and_returned_as_is() -> None:
    protocol = ClientProtocol(Role.DEVICE, "me", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    cached = builders.heartbeat("me", ClientType.DEVICE)
    cached.timestamp = "stale"
    assert protocol.heartbeat(2.0, cached) is cached
    assert cached.timestamp != "stale" and cached.timestamp is not None and cached.timestamp.endswith("+00:00")


def test_a_device_info_request_is_the_builders_frame() -> None:
    protocol = _registered()
    assert _timeless(protocol.device_info_request("dev", "r1")) == _timeless(
        builders.device_info_request("t@dev", "dev", "r1")
    )


# --- frames in ----------------------------------------------------------------------------------------------------


def test_every_kind_of_frame_gives_exactly_its_event() -> None:
    protocol = _registered()
    protocol.device_info_request("dev", "r1")
    protocol.expect_task("s1")
    ack = builders.heartbeat_ack()
    assert protocol.receive(ack, 101.0) == [ServerFrame(ack)]
    task_ack = builders.heartbeat_ack("s1")
    assert protocol.receive(task_ack, 101.0) == [TaskAcked("s1", task_ack)]
    other_ack = builders.heartbeat_ack("s9")
    assert protocol.receive(other_ack, 101.0) == [ServerFrame(other_ack)]
    info = builders.device_info_response("r1", {"os": "linux"})
    assert protocol.receive(info, 101.0) == [DeviceInfoAnswered("r1", info)]
    assert protocol.receive(info, 101.0) == [Unsolicited("DEVICE_INFO_RESPONSE for no request of ours")]
    end = builders.task_end(session_id="s1", status=TaskStatus.COMPLETED, result=[])
    assert protocol.receive(end, 101.0) == [TaskEnded("s1", end)]
    assert protocol.receive(end, 101.0) == [Unsolicited("TASK_END for a session that is not ours", end)]
    nameless = builders.task_end(session_id="", status=TaskStatus.FAILED, result=[])
    nameless.session_id = None
    assert protocol.receive(nameless, 101.0) == [Unsolicited("TASK_END for a session that is not ours", nameless)]
    anonymous = builders.device_info_response(None, {})
    assert protocol.receive(anonymous, 101.0) == [Unsolicited("DEVICE_INFO_RESPONSE for no request of ours")]


def test_an_error_answers_every_pending_device_info_request_in_order_then_is_reported() -> None:
    protocol = _registered()
    protocol.device_info_request("dev", "r2")
    protocol.device_info_request("dev", "r1")
    error = builders.server_error("boom")
    assert protocol.receive(error, 101.0) == [
        DeviceInfoAnswered("r1", error),
        DeviceInfoAnswered("r2", error),
        ServerError("boom"),
    ]
    assert protocol.receive(error, 101.0) == [ServerError("boom")]  # none pending any more
    silent = builders.server_error("x")
    silent.error = None
    assert protocol.receive(silent, 101.0) == [ServerError("unspecified error")]


def test_forgotten_requests_and_tasks_are_not_ours_any_more() -> None:
    protocol = _registered()
    protocol.device_info_request("dev", "r1")
    protocol.forget_device_info("r1")
    protocol.expect_task("s1")
    protocol.forget_task("s1")
    assert protocol.receive(builders.device_info_response("r1", {}), 101.0) == [
        Unsolicited("DEVICE_INFO_RESPONSE for no request of ours")
    ]
    ack = builders.heartbeat_ack("s1")
    assert protocol.receive(ack, 101.0) == [ServerFrame(ack)]


def test_device_frames_are_refused_on_a_constellation_link_and_passed_on_a_device_link() -> None:
    command = builders.command(session_id="s", task_name="t", actions=[], agent_name="LinuxAgent")
    task = builders.task_end(session_id="s", status=TaskStatus.CONTINUE, result=None)
    task.type = type(task.type)("task")
    constellation = _registered()
    assert constellation.receive(command, 101.0) == [Unsolicited("command frame is not meant for a constellation")]
    assert constellation.receive(task, 101.0) == [Unsolicited("task frame is not meant for a constellation")]
    device = ClientProtocol(Role.DEVICE, "dev", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    device.register(device.device_register("dev", platform="linux", system_info=None))
    device.receive(builders.registration_confirmation(), 0.0)
    assert device.receive(command, 1.0) == [ServerFrame(command)]
    assert device.receive(task, 1.0) == [ServerFrame(task)]


def test_any_frame_even_an_undecodable_one_proves_the_link_alive() -> None:
    protocol = _registered()
    protocol.heartbeat(102.0)
    with pytest.raises(AIPDecodeError):
        protocol.receive_text("not json", 103.0)
    assert protocol.heartbeats.presumed_dead_at is None and protocol.heartbeats.last_frame_at == 103.0
    protocol.heartbeat(104.0)
    ack = builders.heartbeat_ack()
    assert protocol.receive_text(encode_text(ack), 105.0) == [ServerFrame(ack)]
    assert protocol.heartbeats.last_frame_at == 105.0 and protocol.heartbeats.presumed_dead_at is None


# --- the verdict --------------------------------------------------------------------------------------------------


def test_a_rejection_is_final_and_carries_the_servers_text() -> None:
    protocol = ClientProtocol(Role.CONSTELLATION, "t@dev", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    protocol.register(protocol.constellation_register("t", "dev"))
    text = "Target device 'dev' is not connected"
    assert protocol.receive(builders.server_error(text), 1.0) == [Verdict(rejection_outcome(text), text)]
    assert protocol.state is RegistrationState.REJECTED
    protocol.register(protocol.constellation_register("t", "dev"))
    silent = builders.server_error("x")
    silent.error = None
    assert protocol.receive(silent, 2.0) == [Verdict(rejection_outcome("unspecified error"), "unspecified error")]


def test_a_constellation_waits_past_other_frames_for_its_verdict() -> None:
    protocol = ClientProtocol(Role.CONSTELLATION, "t@dev", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    protocol.register(protocol.constellation_register("t", "dev"))
    not_ok = builders.heartbeat_ack()
    not_ok.status = TaskStatus.CONTINUE
    assert protocol.receive(not_ok, 1.0) == [Unsolicited("heartbeat frame before the registration verdict")]
    assert protocol.state is RegistrationState.REGISTERING
    assert protocol.receive(builders.registration_confirmation(), 1.0) == [Verdict(None)]
    assert protocol.state is RegistrationState.REGISTERED


def test_a_device_takes_anything_but_a_confirmation_as_a_broken_server() -> None:
    protocol = ClientProtocol(Role.DEVICE, "dev", heartbeat_interval=2.0, heartbeat_timeout=5.0, now=0.0)
    protocol.register(protocol.device_register("dev", platform="linux", system_info=None))
    frame = builders.device_info_response("r", {})
    assert protocol.receive(frame, 1.0) == [
        Verdict(Outcome("expected a heartbeat/ok registration confirmation, got device_info_response/ok"))
    ]
    assert protocol.state is RegistrationState.REJECTED


def test_a_heartbeat_timeout_under_a_second_is_allowed() -> None:
    assert Heartbeats(0.2, 0.5, 0.0).timeout == 0.5


def test_an_early_beat_keeps_the_cadence_of_the_plan() -> None:
    beats = Heartbeats(2.0, 5.0, 0.0)
    beats.beat_sent(1.0)  # sent before it was due: the next is still one interval after the planned one
    assert beats.heartbeat_due_at == 4.0
    beats.beat_sent(3.5)
    assert beats.heartbeat_due_at == 6.0


def test_a_reply_without_an_id_answers_nothing_whatever_our_ids_are() -> None:
    protocol = _registered()
    protocol.device_info_request("dev", "XXXX")
    protocol.expect_task("XXXX")
    info = builders.device_info_response(None, {})
    assert protocol.receive(info, 101.0) == [Unsolicited("DEVICE_INFO_RESPONSE for no request of ours")]
    end = builders.task_end(session_id="", status=TaskStatus.COMPLETED, result=[])
    end.session_id = None
    assert protocol.receive(end, 101.0) == [Unsolicited("TASK_END for a session that is not ours", end)]
