"""Constructors for every frame galaxy_trio sends, shaped as UFO's peers shape them (PROTOCOL.md §8).

Keeping the shapes here, free of I/O, means the manager, the server and the agent cannot drift apart on what a
REGISTER or a TASK_END looks like, and the shapes are tested against the recorded frames without a socket.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from .codec import new_id, utc_timestamp
from .messages import (
    ClientMessage,
    ClientMessageType,
    ClientType,
    Command,
    Result,
    ServerMessage,
    ServerMessageType,
    TaskStatus,
)

__all__ = [
    "CONSTELLATION_CAPABILITIES",
    "DEVICE_DISCONNECTED",
    "SERVER_SHUTTING_DOWN",
    "command",
    "command_results",
    "constellation_client_id",
    "constellation_register",
    "device_info_request",
    "device_info_response",
    "device_register",
    "device_task_request",
    "heartbeat",
    "heartbeat_ack",
    "registration_confirmation",
    "sanitize_task_name",
    "server_error",
    "task_end",
    "task_request",
]

#: What UFO Galaxy advertises in a constellation REGISTER; servers do not interpret it.
CONSTELLATION_CAPABILITIES = ("task_distribution", "session_management", "device_coordination")

_UNSAFE_TASK_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


#: TASK_END error texts for a task cut off rather than run and failed (the manager maps them to
#: ``device_disconnection``): UFO's when the task's device dropped (PROTOCOL.md §8.8), and galaxy_trio's server's
#: when it shuts down with the task running.
DEVICE_DISCONNECTED: Final = "Task was cancelled because target device disconnected"
SERVER_SHUTTING_DOWN: Final = "Task was cancelled because the server is shutting down"


def constellation_client_id(task_name: str, device_id: str) -> str:
    """The id a constellation registers under: one connection per (task, device) pair."""
    return f"{task_name}@{device_id}"


def sanitize_task_name(task_name: str) -> str:
    """UFO's server-side task name: characters outside ``[A-Za-z0-9._-]`` become ``_``, leading dots go."""
    return _UNSAFE_TASK_NAME_CHARS.sub("_", task_name).lstrip(".")


# --- client → server -----------------------------------------------------------------------------------------


def device_register(device_id: str, *, platform: str, system_info: dict[str, Any] | None) -> ClientMessage:
    """A device's REGISTER: ``metadata`` keys in UFO's order (system_info, registration_time, platform)."""
    now = utc_timestamp()
    metadata: dict[str, Any] = {}
    if system_info is not None:
        metadata["system_info"] = system_info
    metadata["registration_time"] = now
    metadata["platform"] = platform
    return ClientMessage(
        type=ClientMessageType.REGISTER,
        status=TaskStatus.OK,
        client_type=ClientType.DEVICE,
        client_id=device_id,
        timestamp=now,
        metadata=metadata,
    )


def constellation_register(task_name: str, device_id: str) -> ClientMessage:
    """A constellation's REGISTER for one device, with the metadata UFO Galaxy sends."""
    return ClientMessage(
        type=ClientMessageType.REGISTER,
        status=TaskStatus.OK,
        client_type=ClientType.CONSTELLATION,
        client_id=constellation_client_id(task_name, device_id),
        target_id=device_id,
        timestamp=utc_timestamp(),
        metadata={
            "type": "constellation_client",
            "task_name": task_name,
            "targeted_device_id": device_id,
            "capabilities": list(CONSTELLATION_CAPABILITIES),
            "version": "2.0",
        },
    )


def heartbeat(client_id: str, client_type: ClientType, *, metadata: dict[str, Any] | None = None) -> ClientMessage:
    """A client heartbeat. Unlike UFO Galaxy, a constellation labels it ``constellation`` (PROTOCOL.md §8.5)."""
    return ClientMessage(
        type=ClientMessageType.HEARTBEAT,
        status=TaskStatus.OK,
        client_type=client_type,
        client_id=client_id,
        timestamp=utc_timestamp(),
        metadata=metadata,
    )


def device_info_request(client_id: str, device_id: str, request_id: str) -> ClientMessage:
    """Ask the server for a device's registration-time system_info; the answer echoes ``request_id``."""
    return ClientMessage(
        type=ClientMessageType.DEVICE_INFO_REQUEST,
        status=TaskStatus.OK,
        client_type=ClientType.CONSTELLATION,
        client_id=client_id,
        target_id=device_id,
        timestamp=utc_timestamp(),
        request_id=request_id,
    )


def task_request(client_id: str, device_id: str, *, session_id: str, task_name: str, request: str) -> ClientMessage:
    """A constellation TASK; TASK_END comes back on the same socket with the same ``session_id``."""
    return ClientMessage(
        type=ClientMessageType.TASK,
        status=TaskStatus.CONTINUE,
        client_type=ClientType.CONSTELLATION,
        session_id=session_id,
        task_name=task_name,
        client_id=client_id,
        target_id=device_id,
        request=request,
        timestamp=utc_timestamp(),
    )


def device_task_request(device_id: str, *, task_name: str | None, request: str, platform: str) -> ClientMessage:
    """A device's own TASK, as UFO's device sends it on a server-pushed TASK (PROTOCOL.md §8.7 step 2).

    ``session_id`` stays null (the server creates the session and acks with its id); ``metadata`` carries the
    platform, from which the server picks the agent type.
    """
    return ClientMessage(
        type=ClientMessageType.TASK,
        status=TaskStatus.CONTINUE,
        client_type=ClientType.DEVICE,
        task_name=task_name,
        client_id=device_id,
        request=request,
        timestamp=utc_timestamp(),
        request_id=new_id(),
        metadata={"platform": platform},
    )


def command_results(
    client_id: str,
    *,
    session_id: str | None,
    prev_response_id: str | None,
    results: list[Result],
    status: TaskStatus = TaskStatus.CONTINUE,
) -> ClientMessage:
    """A device's answer to one COMMAND: one Result per Command, correlated by ``prev_response_id``."""
    return ClientMessage(
        type=ClientMessageType.COMMAND_RESULTS,
        status=status,
        client_type=ClientType.DEVICE,
        session_id=session_id,
        client_id=client_id,
        action_results=results,
        timestamp=utc_timestamp(),
        request_id=new_id(),
        prev_response_id=prev_response_id,
    )


# --- server → client -----------------------------------------------------------------------------------------


def registration_confirmation() -> ServerMessage:
    """AIP has no REGISTER-ack type: a ``heartbeat``/``ok`` frame confirms a registration."""
    return heartbeat_ack()


def heartbeat_ack(session_id: str | None = None) -> ServerMessage:
    """``heartbeat``/``ok``: confirms a registration, answers a heartbeat, or (with a session id) acks a TASK."""
    return ServerMessage(
        type=ServerMessageType.HEARTBEAT,
        status=TaskStatus.OK,
        session_id=session_id,
        timestamp=utc_timestamp(),
        response_id=new_id(),
    )


def server_error(text: str) -> ServerMessage:
    """An ERROR frame: every other field null, as UFO's server sends them."""
    return ServerMessage(
        type=ServerMessageType.ERROR,
        status=TaskStatus.ERROR,
        error=text,
        timestamp=utc_timestamp(),
        response_id=new_id(),
    )


def device_info_response(request_id: str | None, result: Any) -> ServerMessage:
    """The answer to DEVICE_INFO_REQUEST; ``response_id`` is the request's ``request_id``."""
    return ServerMessage(
        type=ServerMessageType.DEVICE_INFO_RESPONSE,
        status=TaskStatus.OK,
        timestamp=utc_timestamp(),
        response_id=request_id,
        result=result,
    )


def command(
    *,
    session_id: str,
    task_name: str | None,
    actions: Sequence[Command],
    agent_name: str | None,
    response_id: str | None = None,
) -> ServerMessage:
    """A COMMAND to a device; the device echoes ``response_id`` as ``prev_response_id``."""
    return ServerMessage(
        type=ServerMessageType.COMMAND,
        status=TaskStatus.CONTINUE,
        agent_name=agent_name,
        process_name="",
        root_name="",
        actions=list(actions),
        session_id=session_id,
        task_name=task_name,
        timestamp=utc_timestamp(),
        response_id=response_id or new_id(),
    )


def task_end(
    *,
    session_id: str,
    status: TaskStatus,
    result: Any,
    error: str | None = None,
    response_id: str | None = None,
) -> ServerMessage:
    """TASK_END, sent to the constellation and then (same ``response_id``) to the device."""
    return ServerMessage(
        type=ServerMessageType.TASK_END,
        status=status,
        error=error,
        session_id=session_id,
        timestamp=utc_timestamp(),
        response_id=response_id or new_id(),
        result=result,
    )
