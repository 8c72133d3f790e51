"""The AIP codec against every frame recorded from UFO, and its error reporting."""

from __future__ import annotations

import pytest

from galaxy_trio.aip import (
    AIPDecodeError,
    ClientMessage,
    ClientMessageType,
    ClientType,
    Command,
    ServerMessage,
    TaskStatus,
    builders,
    decode_client_message,
    decode_server_message,
    encode,
)

from . import frames

ALL = frames.all_frames()


def test_the_recordings_are_all_there() -> None:
    assert len(ALL) == 126


@pytest.mark.parametrize("frame", ALL, ids=lambda f: f"{f['scenario']}#{f['step']}")
def test_every_recorded_frame_round_trips_byte_identically(frame: dict[str, str]) -> None:
    raw = frame["raw"]
    message = decode_client_message(raw) if frame["dir"] == "C->S" else decode_server_message(raw)
    assert encode(message).decode("utf-8") == raw


def test_decoding_fills_the_fields_of_the_protocol() -> None:
    register = decode_client_message(frames.raw("device_registration", 1))
    assert register.type is ClientMessageType.REGISTER
    assert register.client_type is ClientType.DEVICE
    assert register.metadata is not None
    assert list(register.metadata) == ["system_info", "registration_time", "platform"]
    command = decode_server_message(frames.raw("task_roundtrip", 5))
    assert command.actions is not None and isinstance(command.actions[0], Command)
    assert command.actions[0].tool_name == "list_tools"


def test_minimal_register_takes_defaults_and_absent_client_type_means_device() -> None:
    message = decode_client_message('{"type":"register","status":"ok","client_id":"x"}')
    assert message.client_type is ClientType.DEVICE
    assert message.metadata is None
    assert encode(message).count(b":null") == 10  # the ten other fields present, null


def test_unknown_keys_are_ignored() -> None:
    message = decode_server_message('{"type":"heartbeat","status":"ok","brand_new_field":[1,2]}')
    assert message.status is TaskStatus.OK


@pytest.mark.parametrize(
    ("frame", "path", "words"),
    [
        ("not json", "$", "malformed"),
        (b"\x00\x01binary", "$", "malformed"),
        ("[1, 2]", "$", "object"),
        ('{"type":"heartbeat"}', "$", "status"),
        ('{"type":"REGISTER","status":"ok"}', "$.type", "REGISTER"),
        ('{"type":"register","status":"ok","client_type":null}', "$.client_type", "null"),
        ('{"type":"register","status":"ok","client_id":7}', "$.client_id", "str"),
        (
            '{"type":"command_results","status":"continue","action_results":[{"status":"done"}]}',
            "$.action_results[0].status",
            "done",
        ),
    ],
)
def test_invalid_frames_raise_one_error_type_naming_the_path(frame: str | bytes, path: str, words: str) -> None:
    with pytest.raises(AIPDecodeError) as caught:
        decode_client_message(frame)
    assert caught.value.path == path
    assert path in str(caught.value)
    assert words in str(caught.value)


def test_error_message_of_a_huge_bad_value_is_bounded() -> None:
    frame = '{"type":"' + "x" * 100_000 + '","status":"ok"}'
    with pytest.raises(AIPDecodeError) as caught:
        decode_client_message(frame)
    assert len(str(caught.value)) < 300


def test_builders_make_frames_shaped_like_the_recorded_ones() -> None:
    recorded = decode_client_message(frames.raw("constellation_registration", 1))
    ours = builders.constellation_register("cap", "capdev")
    assert ours.client_id == recorded.client_id == "cap@capdev"
    assert ours.target_id == recorded.target_id
    assert ours.metadata == recorded.metadata
    # Same keys in the same order once encoded, timestamps aside.
    ours.timestamp = recorded.timestamp
    assert encode(ours) == encode(recorded)


def test_server_error_has_every_other_field_null() -> None:
    error = builders.server_error("boom")
    decoded = decode_server_message(encode(error))
    assert decoded.error == "boom" and decoded.response_id and decoded.timestamp
    assert isinstance(decoded, ServerMessage)
    assert [name for name in ServerMessage.__struct_fields__ if getattr(decoded, name) is not None] == [
        "type",
        "status",
        "error",
        "timestamp",
        "response_id",
    ]


def test_timestamps_use_isoformat_with_offset_not_z() -> None:
    stamp = builders.heartbeat("a@b", ClientType.CONSTELLATION).timestamp
    assert stamp is not None and stamp.endswith("+00:00")


def test_sanitize_task_name_matches_ufo() -> None:
    assert builders.sanitize_task_name("galaxy/rt/task_001") == "galaxy_rt_task_001"
    assert builders.sanitize_task_name("..a b") == "a_b"


def test_client_message_defaults_are_what_the_protocol_says() -> None:
    message = ClientMessage(type=ClientMessageType.HEARTBEAT, status=TaskStatus.OK)
    assert message.client_type is ClientType.DEVICE
    assert len(ClientMessage.__struct_fields__) == 14 == len(ServerMessage.__struct_fields__)
