"""The server's protocol decisions, without sockets: registration, identity, DEVICE_INFO and TASK rules."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from galaxy_trio import aip, transport
from galaxy_trio.aip import ClientMessage, ClientMessageType, ClientType, TaskStatus, builders
from galaxy_trio.server import rules
from galaxy_trio.server.rules import DeviceInfoAnswer, Registration, Rejection, TaskPlan

from ._peers import client_frame, frame


@dataclass(frozen=True)
class Client:
    client_id: str
    role: ClientType
    target_id: str | None = None
    system_info: dict[str, Any] | None = None


@dataclass
class Sessions:
    """A rules.SessionIndex: who owns which running session id, and how many sessions each device has."""

    owners: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def owner_of(self, session_id: str) -> str | None:
        return self.owners.get(session_id)

    def count_on(self, device_id: str) -> int:
        return self.counts.get(device_id, 0)


DEVICE = Client("capdev", ClientType.DEVICE, system_info={"device_id": "capdev", "platform": "linux"})
BARE_DEVICE = Client("bare", ClientType.DEVICE)
SCOPED = Client("job@capdev", ClientType.CONSTELLATION, target_id="capdev")
UNSCOPED = Client("boss", ClientType.CONSTELLATION)
ONLINE = {c.client_id: c for c in (DEVICE, BARE_DEVICE, SCOPED, UNSCOPED)}


def register(raw: str, clients: dict[str, Client] | None = None) -> Registration | Rejection:
    return rules.check_register(raw, clients if clients is not None else ONLINE, max_client_id_length=64)


# --- REGISTER ------------------------------------------------------------------------------------------------------


def test_recorded_device_register_is_accepted_with_its_metadata() -> None:
    decision = register(frame("device_registration", 1), {})
    metadata = client_frame("device_registration", 1).metadata
    assert metadata is not None
    assert decision == Registration("capdev", ClientType.DEVICE, None, "linux", metadata["system_info"])


def test_device_target_id_is_not_pinned() -> None:
    decision = register('{"type":"register","status":"ok","client_id":"d","target_id":"capdev"}')
    assert decision == Registration("d", ClientType.DEVICE, None, "windows", None)


def test_recorded_constellation_registers() -> None:
    assert register(frame("constellation_registration", 1)) == Registration(
        "cap@capdev", ClientType.CONSTELLATION, "capdev", "windows", None
    )
    assert register(frame("constellation_registration", 3)) == Rejection(
        "Target device 'no_such_device' is not connected", 1000, "target device not connected"
    )
    assert register(frame("constellation_registration", 5), {}) == Registration(
        "cap_notarget", ClientType.CONSTELLATION, None, "windows", None
    )


def test_target_must_be_a_device_and_is_checked_before_duplicates() -> None:
    raw = '{"type":"register","status":"ok","client_type":"constellation","client_id":"boss","target_id":"%s"}'
    assert register(raw % "job@capdev") == Rejection(
        "Target device 'job@capdev' is not connected", 1000, "target device not connected"
    )
    decision = register(raw % "capdev")
    assert isinstance(decision, Rejection)
    assert decision.error == "client_id 'boss' is already registered; duplicate registrations are not allowed"
    assert decision.close_code == 1000


def test_duplicate_across_roles() -> None:
    decision = register(frame("errors", 2), {"dup_dev": UNSCOPED})
    assert isinstance(decision, Rejection) and decision.close_code == 1000


@pytest.mark.parametrize(
    "raw",
    [
        frame("errors", 1),
        "hello",
        '{"type":"register"}',
        '{"type":"register","status":"ok","client_id":null}',
        '{"type":"register","status":"ok","client_id":"' + "x" * 65 + '"}',
        '{"type":"register","status":"ok","client_id":"d","metadata":{"platform":""}}',
    ],
)
def test_bad_first_frames_close_with_1008(raw: str) -> None:
    decision = register(raw)
    assert isinstance(decision, Rejection)
    assert decision.close_code == 1008


def test_bad_first_frame_text_is_bounded() -> None:
    decision = register('{"type":"register","status":"ok","client_id":"' + "é" * 100_000 + '"}')
    assert isinstance(decision, Rejection)
    assert decision.error == "client_id is too long (100000 characters; the limit is 64)"


# --- identity --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "client", "expected"),
    [
        (client_frame("errors", 7), Client("dup_dev", ClientType.DEVICE), rules.CLIENT_ID_MISMATCH),
        (client_frame("errors", 9), Client("dup_dev", ClientType.DEVICE), rules.CLIENT_TYPE_MISMATCH),
        (client_frame("heartbeat", 3), Client("hb@capdev", ClientType.CONSTELLATION), rules.CLIENT_TYPE_MISMATCH),
        (client_frame("heartbeat", 5), Client("hb@capdev", ClientType.CONSTELLATION), None),
        (client_frame("heartbeat", 7), Client("hb@capdev", ClientType.CONSTELLATION), None),
        (ClientMessage(ClientMessageType.HEARTBEAT, TaskStatus.OK), Client("d", ClientType.DEVICE), None),
    ],
)
def test_identity_is_pinned(message: ClientMessage, client: Client, expected: str | None) -> None:
    assert rules.check_identity(message, client) == expected


# --- DEVICE_INFO -----------------------------------------------------------------------------------------------------


def test_device_info_rules() -> None:
    assert rules.check_device_info(client_frame("device_info", 3), SCOPED, ONLINE) == DeviceInfoAnswer(
        {"device_id": "capdev", "platform": "linux"}
    )
    assert rules.check_device_info(client_frame("device_info", 5), SCOPED, ONLINE) == rules.DEVICE_INFO_NOT_AUTHORIZED
    assert rules.check_device_info(client_frame("device_info", 9), UNSCOPED, ONLINE) == DeviceInfoAnswer(
        {"error": "Device ghost_device not found or no system info available"}
    )
    assert rules.check_device_info(client_frame("device_info", 13), DEVICE, ONLINE) == (
        rules.DEVICE_INFO_CONSTELLATIONS_ONLY
    )
    about_bare = builders.device_info_request("boss", "bare", "r")
    assert rules.check_device_info(about_bare, UNSCOPED, ONLINE) == DeviceInfoAnswer(rules.device_not_found("bare"))
    about_constellation = builders.device_info_request("boss", "job@capdev", "r")
    assert rules.check_device_info(about_constellation, UNSCOPED, ONLINE) == DeviceInfoAnswer(
        rules.device_not_found("job@capdev")
    )
    no_target = ClientMessage(ClientMessageType.DEVICE_INFO_REQUEST, TaskStatus.OK, ClientType.CONSTELLATION)
    assert rules.check_device_info(no_target, SCOPED, ONLINE) == DeviceInfoAnswer(DEVICE.system_info or {})
    assert isinstance(rules.check_device_info(no_target, UNSCOPED, ONLINE), str)


# --- TASK ------------------------------------------------------------------------------------------------------------


def check_task(message: ClientMessage, client: Client, owners: dict[str, str] | None = None, limit: int = 10) -> Any:
    ids = iter(["id-1", "id-2"])
    return rules.check_task(
        message, client, ONLINE, Sessions(owners or {}), max_tasks_per_device=limit, make_id=lambda: next(ids)
    )


def constellation_task(client: Client, target: str | None, **fields: Any) -> ClientMessage:
    message = builders.task_request(client.client_id, "x", session_id="s", task_name="galaxy/a/b", request="r")
    return msgspec.structs.replace(message, target_id=target, **fields)


def test_constellation_task_accepted_verbatim_ids() -> None:
    plan = check_task(constellation_task(SCOPED, "capdev"), SCOPED)
    assert plan == TaskPlan("capdev", "s", "galaxy/a/b", "r")


def test_null_ids_become_uuids() -> None:
    plan = check_task(constellation_task(UNSCOPED, "capdev", session_id=None, task_name=None), UNSCOPED)
    assert plan == TaskPlan("capdev", "id-1", "id-2", "r")


@pytest.mark.parametrize(
    ("client", "target", "owners", "expected"),
    [
        (UNSCOPED, None, {}, rules.TASK_NEEDS_TARGET),
        (SCOPED, None, {}, rules.TASK_NEEDS_TARGET),
        (
            SCOPED,
            "bare",
            {},
            "Constellation 'job@capdev' is registered for device 'capdev' and may not send tasks to device 'bare'",
        ),
        (UNSCOPED, "ghost", {}, "Target device 'ghost' is not connected"),
        (UNSCOPED, "job@capdev", {}, rules.TASK_TARGET_NOT_DEVICE),
        (UNSCOPED, "capdev", {"s": "job@capdev"}, "session_id 's' is owned by another client"),
        (UNSCOPED, "capdev", {"s": "boss"}, "session_id 's' already has a task running; wait for its TASK_END"),
    ],
)
def test_constellation_task_refusals(client: Client, target: str | None, owners: dict[str, str], expected: str) -> None:
    assert check_task(constellation_task(client, target), client, owners) == expected


def test_request_and_queue_limit() -> None:
    assert check_task(constellation_task(UNSCOPED, "capdev", request=None), UNSCOPED).startswith(
        "Task requests require a non-empty request"
    )
    busy = Sessions(counts={"capdev": 3, "bare": 2})
    refused = rules.check_task(constellation_task(UNSCOPED, "capdev"), UNSCOPED, ONLINE, busy, max_tasks_per_device=3)
    assert refused == "Device 'capdev' already has 3 tasks running or queued (the limit is 3); try again later"
    # The count is the target device's, not another's; a device's own task counts its own queue.
    bare = rules.check_task(constellation_task(UNSCOPED, "bare"), UNSCOPED, ONLINE, busy, max_tasks_per_device=3)
    assert isinstance(bare, TaskPlan)
    own = ClientMessage(ClientMessageType.TASK, TaskStatus.CONTINUE, request="hostname")
    assert rules.check_task(own, DEVICE, ONLINE, busy, max_tasks_per_device=3) == refused


def test_device_task_rules() -> None:
    assert check_task(client_frame("errors", 16), Client("dup_dev", ClientType.DEVICE)) == rules.DEVICE_TARGETS_OTHER
    own = ClientMessage(ClientMessageType.TASK, TaskStatus.CONTINUE, request="hostname", target_id="capdev")
    assert check_task(own, DEVICE) == TaskPlan("capdev", "id-1", "id-2", "hostname")


def test_long_ids_are_shortened_in_texts() -> None:
    text = check_task(constellation_task(UNSCOPED, "g" * 10_000), UNSCOPED)
    assert text == f"Target device '{'g' * 128}…' is not connected"


def test_unknown_type_uses_the_wire_value() -> None:
    assert rules.unknown_type(ClientMessageType.TASK_END) == "Unknown message type: task_end"


@pytest.mark.parametrize(
    ("platform", "agent"),
    [("linux", "LinuxAgent"), ("windows", "WindowsAgent"), ("Darwin", "MacOSAgent"), ("free bsd", "FreeBsdAgent")],
)
def test_agent_name(platform: str, agent: str) -> None:
    assert rules.agent_name(platform) == agent


# --- layering ------------------------------------------------------------------------------------------------------


def test_rules_build_on_the_protocol_layer_only() -> None:
    """The rules are pure: besides the standard library they import ``aip`` and nothing else of the package (not
    ``transport``, which would bring the WebSocket libraries in with it)."""
    tree = ast.parse(Path(rules.__file__).read_text(encoding="utf-8"))
    package_imports = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    absolute = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    absolute |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert package_imports == {"aip"}
    assert absolute == {"__future__", "collections.abc", "dataclasses", "typing"}


def test_close_codes_come_from_the_protocol_layer_and_transport_re_exports_them() -> None:
    codes = {
        "CLOSE_NORMAL": 1000,
        "CLOSE_GOING_AWAY": 1001,
        "CLOSE_UNSUPPORTED_DATA": 1003,
        "CLOSE_POLICY_VIOLATION": 1008,
        "CLOSE_MESSAGE_TOO_BIG": 1009,
    }
    assert {name: getattr(aip, name) for name in codes} == codes
    assert set(codes) <= set(aip.__all__)
    reexported = set(codes) - {"CLOSE_GOING_AWAY"}
    assert {name: getattr(transport, name) for name in reexported} == {name: codes[name] for name in reexported}
