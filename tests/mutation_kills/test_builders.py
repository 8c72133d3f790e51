"""Mutants of ``galaxy_trio/aip/builders.py`` that the suite let live (``tests/mutation.sh builders``): each
builder's frame against the recorded UFO frame, field for field, with only the per-send values (fresh timestamps,
fresh uuids) replaced after checking their form."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from galaxy_trio.aip import (
    ClientMessage,
    ClientType,
    Command,
    Result,
    ResultStatus,
    ServerMessage,
    TaskStatus,
    ToolType,
    builders,
    encode_text,
)

from ..frames import raw

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def _normal(data: dict[str, Any], *, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` with its timestamps and fresh uuids (checked for their form) replaced by placeholders."""
    out = dict(data)
    assert isinstance(out["timestamp"], str) and _TIMESTAMP.fullmatch(out["timestamp"]), out["timestamp"]
    out["timestamp"] = "<timestamp>"
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and "registration_time" in metadata:
        assert _TIMESTAMP.fullmatch(metadata["registration_time"])
        out["metadata"] = {**metadata, "registration_time": "<timestamp>"}
    for key in ("request_id", "response_id"):
        if key not in keep and isinstance(out.get(key), str) and _UUID.fullmatch(out[key]):
            out[key] = "<uuid>"
    return out


def _ours(message: ClientMessage | ServerMessage, **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode_text(message))
    return _normal(data, **kwargs)


def _recorded(scenario: str, step: int, **kwargs: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw(scenario, step))
    return _normal(data, **kwargs)


def test_constellation_register_is_galaxys() -> None:
    assert _ours(builders.constellation_register("rt", "capdev")) == _recorded("task_roundtrip", 1)


def test_device_register_is_the_raw_peers_with_one_time_for_both_stamps() -> None:
    recorded = json.loads(raw("device_registration", 3))
    message = builders.device_register("raw_dev_1", platform="linux", system_info=recorded["metadata"]["system_info"])
    assert _ours(message) == _recorded("device_registration", 3)
    assert message.metadata is not None and message.metadata["registration_time"] == message.timestamp


def test_device_register_without_system_info_leaves_the_key_out() -> None:
    message = builders.device_register("d", platform="android", system_info=None)
    assert message.metadata is not None and set(message.metadata) == {"registration_time", "platform"}
    assert message.metadata["platform"] == "android"


def test_heartbeat_is_a_constellations() -> None:
    message = builders.heartbeat("hb@capdev", ClientType.CONSTELLATION, metadata={"device_id": "capdev"})
    assert _ours(message) == _recorded("heartbeat", 5)


def test_device_info_request_is_galaxys() -> None:
    message = builders.device_info_request("info@capdev", "capdev", "device_info_capdev_1795569991.379882")
    assert _ours(message) == _recorded("device_info", 3)


def test_task_request_is_galaxys() -> None:
    message = builders.task_request(
        "rt@capdev",
        "capdev",
        session_id="rt@task_001",
        task_name="galaxy/rt/task_001",
        request="List the files in the current directory",
    )
    assert _ours(message) == _recorded("task_roundtrip", 3)


def test_device_task_request_is_ufos_device() -> None:
    message = builders.device_task_request(
        "capdev", task_name="api_task_001", request="Show the hostname", platform="linux"
    )
    assert _ours(message) == _recorded("api_dispatch", 2)


def test_command_results_are_the_real_devices() -> None:
    recorded = json.loads(raw("task_roundtrip", 8))
    result = msgspec.convert(recorded["action_results"][0], Result)
    message = builders.command_results(
        "capdev", session_id="rt@task_001", prev_response_id=recorded["prev_response_id"], results=[result]
    )
    assert _ours(message) == _recorded("task_roundtrip", 8)
    assert result.status is ResultStatus.SUCCESS


def test_server_frames_are_ufos() -> None:
    assert _ours(builders.heartbeat_ack("rt@task_001")) == _recorded("task_roundtrip", 4)
    assert _ours(builders.server_error("client_id does not match the registered connection")) == _recorded("errors", 8)
    recorded = json.loads(raw("device_info", 4))
    info = builders.device_info_response(recorded["response_id"], recorded["result"])
    assert _ours(info) == _recorded("device_info", 4)


def test_command_is_ufos() -> None:
    recorded = json.loads(raw("task_roundtrip", 5))
    action = recorded["actions"][0]
    command = builders.command(
        session_id="rt@task_001",
        task_name="galaxy_rt_task_001",
        actions=[
            Command(
                tool_name="list_tools",
                parameters={"tool_type": "action"},
                tool_type=ToolType.ACTION,
                call_id=action["call_id"],
            )
        ],
        agent_name="LinuxAgent",
        response_id=recorded["response_id"],
    )
    assert _ours(command, keep=("response_id",)) == _recorded("task_roundtrip", 5, keep=("response_id",))
    fresh = builders.command(session_id="s", task_name=None, actions=[], agent_name=None)
    assert fresh.response_id is not None and _UUID.fullmatch(fresh.response_id)


@pytest.mark.parametrize("given", [True, False])
def test_task_end_is_ufos_with_the_given_or_a_fresh_response_id(given: bool) -> None:
    recorded = json.loads(raw("task_roundtrip", 11))
    message = builders.task_end(
        session_id="rt@task_001",
        status=TaskStatus.COMPLETED,
        result=recorded["result"],
        response_id=recorded["response_id"] if given else None,
    )
    assert _ours(message) == _recorded("task_roundtrip", 11)
    if given:
        assert message.response_id == recorded["response_id"]


def test_task_end_carries_its_error() -> None:
    message = builders.task_end(session_id="s", status=TaskStatus.FAILED, result=[], error="boom")
    assert (message.error, message.status, message.result) == ("boom", TaskStatus.FAILED, [])


def test_a_task_name_loses_only_its_leading_dots() -> None:
    assert builders.sanitize_task_name("..a.b") == "a.b"
    assert builders.sanitize_task_name("XX.job") == "XX.job"
