"""The server's protocol decisions, free of I/O: who may register, speak, ask and send a task.

Every function here takes a decoded frame and a read-only view of the registry and returns a decision (accept with
the values to use, or the exact error text), so the rules of PROTOCOL.md §7–§8 are tested without a socket and the
connection code only carries them out. Error texts are UFO's where a client may display them (§8.9); where UFO
leaks internals (§11.8) we put the wire value instead of a Python enum member name, and every client-supplied
value quoted in a text is shortened so that an error never echoes a huge input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..aip import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    AIPDecodeError,
    ClientMessage,
    ClientMessageType,
    ClientType,
    decode_client_message,
    new_id,
)

__all__ = [
    "CLIENT_ID_MISMATCH",
    "CLIENT_TYPE_MISMATCH",
    "DEVICE_INFO_CONSTELLATIONS_ONLY",
    "DEVICE_INFO_NOT_AUTHORIZED",
    "DEVICE_TARGETS_OTHER",
    "FRAME_RATE_EXCEEDED",
    "TASK_NEEDS_TARGET",
    "TASK_TARGET_NOT_DEVICE",
    "ClientView",
    "DeviceInfoAnswer",
    "FrameBudget",
    "Registration",
    "Rejection",
    "SessionIndex",
    "TaskPlan",
    "agent_name",
    "check_device_info",
    "check_identity",
    "check_register",
    "check_task",
    "device_not_found",
    "duplicate_client",
    "shown",
    "target_not_connected",
    "unknown_type",
]

CLIENT_ID_MISMATCH: Final = "client_id does not match the registered connection"
CLIENT_TYPE_MISMATCH: Final = "client_type does not match the registered connection"
TASK_NEEDS_TARGET: Final = "Constellation task requests require target_id"
TASK_TARGET_NOT_DEVICE: Final = "Constellation tasks may only target device clients"
DEVICE_TARGETS_OTHER: Final = "Device clients may not target other devices"
DEVICE_INFO_CONSTELLATIONS_ONLY: Final = "DEVICE_INFO_REQUEST is permitted only for constellation clients"
DEVICE_INFO_NOT_AUTHORIZED: Final = "Not authorized to request device info for this device"
#: The close reason of a connection that spent its frame budget.
FRAME_RATE_EXCEEDED: Final = "frame rate exceeded"

#: How much of a client-supplied id an error text or a log line quotes.
_SHOWN_CHARS: Final = 128

_AGENT_NAMES: Final = {
    "linux": "LinuxAgent",
    "windows": "WindowsAgent",
    "darwin": "MacOSAgent",
    "macos": "MacOSAgent",
    "android": "MobileAgent",
    "ios": "MobileAgent",
}


class ClientView(Protocol):
    """What the rules need to know about a registered client (the registry's records satisfy it)."""

    @property
    def client_id(self) -> str: ...
    @property
    def role(self) -> ClientType: ...
    @property
    def target_id(self) -> str | None: ...
    @property
    def system_info(self) -> dict[str, Any] | None: ...


class SessionIndex(Protocol):
    """What the rules need to know about the sessions not yet ended (the registry satisfies it)."""

    def owner_of(self, session_id: str) -> str | None:
        """The client_id that asked for the session named ``session_id``, or None if none runs under that id."""
        ...

    def count_on(self, device_id: str) -> int:
        """Sessions running or queued on the connected device ``device_id``."""
        ...


@dataclass(frozen=True, slots=True)
class Registration:
    """An accepted REGISTER: the identity pinned to the connection from now on."""

    client_id: str
    role: ClientType
    target_id: str | None
    platform: str
    system_info: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused REGISTER: send ``error`` in an ERROR frame, then close with ``close_code`` and ``close_reason``."""

    error: str
    close_code: int
    close_reason: str


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """An accepted TASK: the session to run, on which device, under which ids."""

    device_id: str
    session_id: str
    task_name: str
    request: str


@dataclass(frozen=True, slots=True)
class DeviceInfoAnswer:
    """The ``result`` of a DEVICE_INFO_RESPONSE (system_info, or UFO's not-found object)."""

    result: dict[str, Any]


def shown(value: str) -> str:
    """A client-supplied value as quoted in texts: cut to a readable length, so no error echoes a huge input."""
    return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"


def target_not_connected(device_id: str) -> str:
    return f"Target device '{shown(device_id)}' is not connected"


def duplicate_client(client_id: str) -> str:
    return f"client_id '{shown(client_id)}' is already registered; duplicate registrations are not allowed"


def unknown_type(message_type: ClientMessageType) -> str:
    """UFO prints ``ClientMessageType.TASK_END``; we print the wire value (§11.8)."""
    return f"Unknown message type: {message_type.value}"


def device_not_found(device_id: str) -> dict[str, Any]:
    """UFO's DEVICE_INFO answer for an unknown device or one without system_info (status ok, error null)."""
    return {"error": f"Device {shown(device_id)} not found or no system info available"}


def agent_name(platform: str) -> str:
    """The ``agent_name`` of COMMAND frames for a device platform (UFO: ``LinuxAgent`` for linux)."""
    known = _AGENT_NAMES.get(platform.lower())
    if known is not None:
        return known
    letters = "".join(ch for ch in platform.title() if ch.isalnum())
    return f"{letters or 'Device'}Agent"


def check_register(
    frame: str,
    clients: Mapping[str, ClientView],
    *,
    max_client_id_length: int,
) -> Registration | Rejection:
    """Decide on the first frame of a connection (PROTOCOL.md §7.2–§7.5).

    Unlike UFO, which goes silent and leaves the socket open (§11.3), a first frame that is not a valid REGISTER
    gets an error that says what was wrong and a close with 1008.
    """
    try:
        msg = decode_client_message(frame)
    except AIPDecodeError as exc:
        return _bad_first_frame(f"First frame must be a REGISTER message: {exc}")
    if msg.type is not ClientMessageType.REGISTER:
        return _bad_first_frame(f"First frame must be a REGISTER message, got '{msg.type.value}'")
    client_id = msg.client_id
    if not client_id:
        return _bad_first_frame("REGISTER requires a non-empty client_id")
    if len(client_id) > max_client_id_length:
        return _bad_first_frame(
            f"client_id is too long ({len(client_id)} characters; the limit is {max_client_id_length})"
        )
    metadata = msg.metadata or {}
    platform = metadata.get("platform", "windows")
    if not isinstance(platform, str) or not platform:
        return _bad_first_frame("REGISTER metadata.platform must be a non-empty string")
    system_info = metadata.get("system_info")
    if system_info is not None and not isinstance(system_info, dict):
        return _bad_first_frame("REGISTER metadata.system_info must be an object")

    if msg.client_type is ClientType.CONSTELLATION and msg.target_id is not None:
        target = clients.get(msg.target_id)
        if target is None or target.role is not ClientType.DEVICE:
            return Rejection(target_not_connected(msg.target_id), CLOSE_NORMAL, "target device not connected")
    if client_id in clients:
        return Rejection(duplicate_client(client_id), CLOSE_NORMAL, "duplicate client_id")

    if msg.client_type is ClientType.DEVICE:
        return Registration(client_id, ClientType.DEVICE, None, platform, system_info)
    return Registration(client_id, ClientType.CONSTELLATION, msg.target_id, platform, None)


def _bad_first_frame(error: str) -> Rejection:
    return Rejection(error, CLOSE_POLICY_VIOLATION, "first frame must be a valid REGISTER")


def check_identity(msg: ClientMessage, client: ClientView) -> str | None:
    """The identity pinned at REGISTER (§7.7): a null ``client_id`` means the registered one; the role must match."""
    if msg.client_id is not None and msg.client_id != client.client_id:
        return CLIENT_ID_MISMATCH
    if msg.client_type is not client.role:
        return CLIENT_TYPE_MISMATCH
    return None


def check_device_info(
    msg: ClientMessage, client: ClientView, clients: Mapping[str, ClientView]
) -> DeviceInfoAnswer | str:
    """DEVICE_INFO_REQUEST (§8.4): constellations only, a scoped one only about its own device.

    The answer is the system_info stored at registration; an unknown device, or one that registered without
    system_info, gets UFO's not-found object. A request without ``target_id`` asks about the constellation's
    registered device.
    """
    if client.role is not ClientType.CONSTELLATION:
        return DEVICE_INFO_CONSTELLATIONS_ONLY
    device_id = msg.target_id if msg.target_id is not None else client.target_id
    if device_id is None:
        return "DEVICE_INFO_REQUEST requires target_id (the device to describe)"
    if client.target_id is not None and device_id != client.target_id:
        return DEVICE_INFO_NOT_AUTHORIZED
    device = clients.get(device_id)
    if device is None or device.role is not ClientType.DEVICE or device.system_info is None:
        return DeviceInfoAnswer(device_not_found(device_id))
    return DeviceInfoAnswer(device.system_info)


def check_task(
    msg: ClientMessage,
    client: ClientView,
    clients: Mapping[str, ClientView],
    sessions: SessionIndex,
    *,
    max_tasks_per_device: int,
    make_id: Callable[[], str] = new_id,
) -> TaskPlan | str:
    """A TASK (§8.6): from a constellation for a device, or from a device for itself.

    UFO's checks, in UFO's order, plus two it lacks: a constellation registered for one device may only send tasks
    to that device (UFO checks this for DEVICE_INFO but not for TASK, §11.14), and a session_id can only name one
    running task. ``session_id`` is used verbatim, a uuid4 when null; so is ``task_name``.
    """
    if client.role is ClientType.CONSTELLATION:
        device_id = msg.target_id
        if device_id is None:
            return TASK_NEEDS_TARGET
        if client.target_id is not None and device_id != client.target_id:
            return (
                f"Constellation '{shown(client.client_id)}' is registered for device '{shown(client.target_id)}' "
                f"and may not send tasks to device '{shown(device_id)}'"
            )
        device = clients.get(device_id)
        if device is None:
            return target_not_connected(device_id)
        if device.role is not ClientType.DEVICE:
            return TASK_TARGET_NOT_DEVICE
    else:
        if msg.target_id is not None and msg.target_id != client.client_id:
            return DEVICE_TARGETS_OTHER
        device_id = client.client_id

    session_id = msg.session_id if msg.session_id is not None else make_id()
    owner = sessions.owner_of(session_id)
    if owner is not None and owner != client.client_id:
        return f"session_id '{shown(session_id)}' is owned by another client"
    if owner is not None:
        return f"session_id '{shown(session_id)}' already has a task running; wait for its TASK_END"
    if not msg.request:
        return "Task requests require a non-empty request (the task text)"
    queued = sessions.count_on(device_id)
    if queued >= max_tasks_per_device:
        return (
            f"Device '{shown(device_id)}' already has {queued} tasks running or queued "
            f"(the limit is {max_tasks_per_device}); try again later"
        )
    task_name = msg.task_name if msg.task_name is not None else make_id()
    return TaskPlan(device_id, session_id, task_name, msg.request)


class FrameBudget:
    """One connection's frame budget: a token bucket of ``burst`` frames, refilled at ``rate`` frames a second.

    Pure: the caller passes the time (``trio.current_time()`` on the server), so the decision is tested without a
    clock. The bucket starts full; each frame takes one token; a frame that finds less than one token is refused.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token for a frame arriving at ``now``; False (nothing spent) when the budget is exhausted."""
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def refusal(self) -> str:
        """The ERROR text for a peer that exceeded the budget."""
        return (
            f"Too many frames: this connection may send {self.burst} frames at once "
            f"and {self.rate:g} frames per second after that"
        )
