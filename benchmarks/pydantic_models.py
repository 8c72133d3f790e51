"""The AIP schema as pydantic v2 models, the way UFO declares it: the baseline the codec benchmark compares with.

UFO validates and serialises every frame with pydantic ``BaseModel``s (``model_validate_json`` to decode,
``model_dump_json`` to encode). To make the comparison fair, these models carry exactly the schema of
``galaxy_trio.aip.messages``: the same enums (``str``-valued, so pydantic checks the wire value and writes it back),
the same fields in the same wire order, the same defaults, ``None`` for every optional field, default config
(unknown keys ignored, nothing excluded on dump), and ``timestamp`` kept as ``str``. With that, ``model_dump_json``
of a decoded golden frame is the frame itself, byte for byte, as with UFO's own models.

Only the benchmarks use this module; pydantic is in the ``bench`` extra, not a runtime dependency.
"""

from __future__ import annotations

from typing import Any

import _common  # noqa: F401  (puts the repository root on sys.path before galaxy_trio is imported)
from pydantic import BaseModel

from galaxy_trio.aip import ClientMessageType, ClientType, ResultStatus, ServerMessageType, TaskStatus, ToolType

__all__ = ["ClientMessage", "Command", "Result", "ServerMessage"]


class Command(BaseModel):
    """One tool call in ``ServerMessage.actions``; the required ``tool_type`` follows an optional field."""

    tool_name: str
    parameters: dict[str, Any] | None = None
    tool_type: ToolType
    call_id: str | None = None


class Result(BaseModel):
    """One tool outcome in ``ClientMessage.action_results``."""

    status: ResultStatus
    error: str | None = None
    result: Any = None
    namespace: str | None = None
    call_id: str | None = None


class ClientMessage(BaseModel):
    """Client → server frame, 14 fields in wire order."""

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


class ServerMessage(BaseModel):
    """Server → client frame, 14 fields in wire order."""

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
