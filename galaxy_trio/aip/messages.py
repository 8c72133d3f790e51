"""AIP message types, exactly as UFO puts them on the wire.

Field order, defaults and enum values follow ``shared/aip/PROTOCOL.md`` §4–§5. The order matters: UFO encodes
every field, ``null`` included, in declaration order, and re-encoding a recorded frame must give back the same
bytes. That is also why ``timestamp`` is a plain ``str`` (a ``datetime`` would come back with ``Z`` instead of
``+00:00``) and why no Struct sets ``omit_defaults``.

Every Struct is ``gc=False``: a message never refers back to itself, so the cyclic collector need not track
the thousands in flight in a busy manager or server (only their payload dicts are tracked, as any dict is).

This module imports nothing else from the package: the protocol is the bottom layer.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = [
    "ClientMessage",
    "ClientMessageType",
    "ClientType",
    "Command",
    "Result",
    "ResultStatus",
    "ServerMessage",
    "ServerMessageType",
    "TaskStatus",
    "ToolType",
]


class ClientMessageType(enum.StrEnum):
    """``type`` of a frame sent by a device or a constellation."""

    TASK = "task"
    HEARTBEAT = "heartbeat"
    COMMAND_RESULTS = "command_results"
    ERROR = "error"
    REGISTER = "register"
    TASK_END = "task_end"
    DEVICE_INFO_REQUEST = "device_info_request"
    DEVICE_INFO_RESPONSE = "device_info_response"


class ServerMessageType(enum.StrEnum):
    """``type`` of a frame sent by the server."""

    TASK = "task"
    HEARTBEAT = "heartbeat"
    TASK_END = "task_end"
    COMMAND = "command"
    ERROR = "error"
    DEVICE_INFO_REQUEST = "device_info_request"
    DEVICE_INFO_RESPONSE = "device_info_response"


class ClientType(enum.StrEnum):
    """The role a client registers with; pinned to its connection by the server."""

    DEVICE = "device"
    CONSTELLATION = "constellation"


class TaskStatus(enum.StrEnum):
    """``status`` of both message kinds (UFO uses one enum for registration, tasks and errors alike)."""

    CONTINUE = "continue"
    COMPLETED = "completed"
    FAILED = "failed"
    OK = "ok"
    ERROR = "error"


class ResultStatus(enum.StrEnum):
    """Outcome of one tool call inside COMMAND_RESULTS."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"
    NONE = "none"


class ToolType(enum.StrEnum):
    """Whether a tool only reads (``data_collection``) or changes the device (``action``)."""

    DATA_COLLECTION = "data_collection"
    ACTION = "action"


class Command(msgspec.Struct, kw_only=True, gc=False):
    """One tool call the server asks a device to run (an element of ``ServerMessage.actions``).

    ``kw_only`` because the required ``tool_type`` follows the optional ``parameters`` on the wire.
    """

    tool_name: str
    parameters: dict[str, Any] | None = None
    tool_type: ToolType
    call_id: str | None = None


class Result(msgspec.Struct, gc=False):
    """The device's answer to one Command, matched by ``call_id``."""

    status: ResultStatus
    error: str | None = None
    result: Any = None
    namespace: str | None = None
    call_id: str | None = None


class ClientMessage(msgspec.Struct, gc=False):
    """A frame from a client (device or constellation) to the server. Always 14 keys on the wire."""

    type: ClientMessageType
    status: TaskStatus
    client_type: ClientType = ClientType.DEVICE
    session_id: str | None = None
    task_name: str | None = None
    client_id: str | None = None
    target_id: str | None = None
    request: str | None = None
    action_results: list[Result] | None = None
    timestamp: str | None = None
    request_id: str | None = None
    prev_response_id: str | None = None
    error: str | None = None
    metadata: dict[str, Any] | None = None


class ServerMessage(msgspec.Struct, gc=False):
    """A frame from the server to a client. Always 14 keys on the wire."""

    type: ServerMessageType
    status: TaskStatus
    user_request: str | None = None
    agent_name: str | None = None
    process_name: str | None = None
    root_name: str | None = None
    actions: list[Command] | None = None
    messages: list[str] | None = None
    error: str | None = None
    session_id: str | None = None
    task_name: str | None = None
    timestamp: str | None = None
    response_id: str | None = None
    result: Any = None
