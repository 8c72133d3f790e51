"""The client side of AIP as a sans-IO state machine, shared by the manager (constellation) and the agent (device).

In the manner of h11: frames and the time go in, events and frames come out; no trio, no socket. The trio drivers
(``manager/session.py`` + ``manager/activate.py``, ``agent/agent.py``) only move bytes and sleep until the
times this object names. What lives here, once, for both roles:

- the REGISTER frame for the role (:meth:`ClientProtocol.register`) and the verdict on it (PROTOCOL.md §6: AIP has
  no REGISTER-ack; the next ``heartbeat``/``ok`` confirms, the next ``error`` rejects) as a :class:`Verdict`;
- which requests are outstanding: DEVICE_INFO requests by ``request_id``, tasks by ``session_id`` — a reply that
  answers nothing we asked is reported as :class:`Unsolicited`, never attributed to a stranger's request;
- heartbeat scheduling and liveness (:class:`Heartbeats`): a beat every ``interval`` whatever the ``timeout``,
  and the link presumed dead ``timeout`` after the oldest beat that no frame followed — unless unread bytes wait
  in the socket, which is a late reader, not silence;
- ONE classification of why an attempt failed (:func:`handshake_outcome`, :func:`connect_outcome`,
  :func:`rejection_outcome`) into retryable or permanent, as a frozen :class:`Outcome`.
"""

from __future__ import annotations

import enum
import math
from typing import Final

import msgspec

from . import builders
from .codec import AIPDecodeError, decode_server_message, utc_timestamp
from .messages import ClientMessage, ClientType, ServerMessage, ServerMessageType, TaskStatus

__all__ = [
    "PERMANENT_HANDSHAKE_STATUSES",
    "REFUSED_HINT",
    "ClientProtocol",
    "DeviceInfoAnswered",
    "Event",
    "Heartbeats",
    "Outcome",
    "RegistrationState",
    "Role",
    "ServerError",
    "ServerFrame",
    "TaskAcked",
    "TaskEnded",
    "Unsolicited",
    "Verdict",
    "connect_outcome",
    "handshake_outcome",
    "is_duplicate",
    "rejection_outcome",
]

#: Handshake answers that retrying cannot change, and what each one means to the person reading the reason.
PERMANENT_HANDSHAKE_STATUSES: Final = {
    400: "the server refused the WebSocket request as malformed",
    401: "the token is wrong or missing",
    403: "the token is wrong or missing",
    404: "nothing serves AIP at that path (an AIP server listens on /ws)",
}

_TARGET_PREFIX: Final = "Target device "
_TARGET_SUFFIX: Final = " is not connected"


class Role(enum.Enum):
    """Who registers: a constellation client (the manager, for one target device) or the device itself."""

    CONSTELLATION = "constellation"
    DEVICE = "device"


class Outcome(msgspec.Struct, frozen=True):
    """Why an attempt ended, and whether waiting and retrying can change it; ``hint`` names the likely cause and
    what to check, for the person reading it."""

    reason: str
    permanent: bool = False
    hint: str | None = None

    def describe(self) -> str:
        return self.reason if self.hint is None else f"{self.reason}: {self.hint}"


def handshake_outcome(status_code: int) -> Outcome:
    """The server answered the WebSocket handshake with an HTTP error status."""
    cause = PERMANENT_HANDSHAKE_STATUSES.get(status_code)
    if cause is not None:
        return Outcome(f"handshake rejected with HTTP {status_code}", permanent=True, hint=cause)
    return Outcome(f"handshake rejected with HTTP {status_code}", permanent=False)


#: What to check when nothing accepts the connection (the transport words it "connection refused by HOST:PORT").
REFUSED_HINT: Final = "is the AIP server running? check the host and port of the server URL"


def connect_outcome(detail: str, *, invalid_url: bool) -> Outcome:
    """The connection could not be opened; only a URL that cannot be dialled (bad port, bad scheme) is permanent.

    A refused connection is retryable (the server may be starting) and comes with what to check.
    """
    if invalid_url:
        return Outcome(detail, permanent=True, hint="fix the server URL")
    if "refused" in detail:
        return Outcome(detail, permanent=False, hint=REFUSED_HINT)
    return Outcome(detail, permanent=False)


def rejection_outcome(text: str) -> Outcome:
    """The server answered REGISTER with an ERROR frame carrying ``text``.

    The one rejection that time fixes is a constellation's target device that has not connected yet (or is
    reconnecting). A duplicate client id or anything else stays refused until an operator acts; a driver may
    still decide, knowing its own history, that a duplicate is its own stale link (:meth:`Outcome.permanent`
    is the protocol's view, not the last word).
    """
    retryable = text.startswith(_TARGET_PREFIX) and text.endswith(_TARGET_SUFFIX)
    return Outcome(text, permanent=not retryable)


def is_duplicate(text: str) -> bool:
    """Whether a rejection says the client id is already registered (UFO's text, PROTOCOL.md §8.9)."""
    return "is already registered" in text


class Heartbeats:
    """When the next heartbeat is due and when the link is presumed dead; pure arithmetic on the times given.

    Beats keep a fixed cadence (``interval`` after the previous one was due) whatever ``timeout`` is, so
    ``interval < timeout`` still beats every ``interval``. The link is presumed dead ``timeout`` after the oldest
    beat that no frame from the server has followed; a frame (any frame) clears that.
    """

    __slots__ = ("_awaiting_since", "_due", "interval", "last_frame_at", "timeout")

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        if not (interval > 0 and timeout > 0 and math.isfinite(interval) and math.isfinite(timeout)):
            raise ValueError(f"heartbeat interval and timeout must be positive seconds, got {interval}, {timeout}")
        self.interval = interval
        self.timeout = timeout
        self._due = now + interval
        self._awaiting_since: float | None = None
        self.last_frame_at = now

    @property
    def heartbeat_due_at(self) -> float:
        return self._due

    @property
    def presumed_dead_at(self) -> float | None:
        """When silence since the oldest unanswered beat becomes a dead link; ``None`` when nothing is awaited."""
        return None if self._awaiting_since is None else self._awaiting_since + self.timeout

    @property
    def wake_at(self) -> float:
        """The next time the driver has anything to do: a beat, or a liveness check."""
        dead = self.presumed_dead_at
        return self._due if dead is None else min(self._due, dead)

    def beat_sent(self, now: float) -> None:
        """A heartbeat went out at ``now``: plan the next one, start awaiting an answer if none is awaited."""
        if self._awaiting_since is None:
            self._awaiting_since = now
        self._due += self.interval
        if self._due <= now:  # the driver fell behind (a blocked host): one beat, not a burst
            self._due = now + self.interval

    def frame_received(self, now: float) -> None:
        self.last_frame_at = now
        self._awaiting_since = None

    def is_dead(self, now: float, *, unread: bool) -> bool:
        """Whether the link is dead at ``now``. ``unread``: bytes from the server wait unread in the socket.

        Unread bytes are an answer the reader has not got to yet (a loaded loop): the window restarts at ``now``
        instead of dropping a live link into the very backlog that delayed it.
        """
        dead_at = self.presumed_dead_at
        if dead_at is None or now < dead_at:
            return False
        if unread:
            self._awaiting_since = now
            return False
        return True


class RegistrationState(enum.Enum):
    """Where the registration of this link stands."""

    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    REJECTED = "rejected"


# --- events -------------------------------------------------------------------------------------------------------


class Verdict(msgspec.Struct, frozen=True):
    """The server's answer to REGISTER: ``outcome`` is ``None`` when confirmed, else why and whether to retry.
    ``text`` is the server's error text of a rejection, as it sent it."""

    outcome: Outcome | None
    text: str | None = None

    @property
    def confirmed(self) -> bool:
        return self.outcome is None


class DeviceInfoAnswered(msgspec.Struct, frozen=True):
    """The answer to our DEVICE_INFO request ``request_id`` (an ERROR frame answers every pending one)."""

    request_id: str
    frame: ServerMessage


class TaskAcked(msgspec.Struct, frozen=True):
    """The server accepted our task ``session_id`` (``frame``: the heartbeat carrying it)."""

    session_id: str
    frame: ServerMessage


class TaskEnded(msgspec.Struct, frozen=True):
    """TASK_END for our task ``session_id``."""

    session_id: str
    frame: ServerMessage


class ServerError(msgspec.Struct, frozen=True):
    """An ERROR frame outside registration; AIP gives it no correlation id (PROTOCOL.md §6)."""

    text: str


class ServerFrame(msgspec.Struct, frozen=True):
    """Any other frame for the driver: a heartbeat ack, a COMMAND or a pushed TASK for a device, ..."""

    frame: ServerMessage


class Unsolicited(msgspec.Struct, frozen=True):
    """A reply to nothing we asked (or a frame this role does not take); ``why`` says which."""

    why: str
    frame: ServerMessage | None = None


Event = Verdict | DeviceInfoAnswered | TaskAcked | TaskEnded | ServerError | ServerFrame | Unsolicited


class ClientProtocol:
    """One link's client side of AIP, for ``role``; see the module docstring.

    The driver calls :meth:`register` and sends the frame, feeds every received frame to :meth:`receive` and acts
    on the events returned, and sends :meth:`heartbeat` frames when ``heartbeats.heartbeat_due_at`` comes.
    """

    __slots__ = ("_info_requests", "_tasks", "client_id", "heartbeats", "role", "state")

    def __init__(self, role: Role, client_id: str, *, heartbeat_interval: float, heartbeat_timeout: float, now: float):
        self.role = role
        self.client_id = client_id
        self.state = RegistrationState.UNREGISTERED
        self.heartbeats = Heartbeats(heartbeat_interval, heartbeat_timeout, now)
        self._info_requests: set[str] = set()
        self._tasks: set[str] = set()

    # --- frames out ---------------------------------------------------------------------------------------------

    def register(self, frame: ClientMessage) -> ClientMessage:
        """Arm the verdict for ``frame`` (built by :meth:`constellation_register` / :meth:`device_register`)."""
        self.state = RegistrationState.REGISTERING
        return frame

    @staticmethod
    def constellation_register(task_name: str, device_id: str) -> ClientMessage:
        return builders.constellation_register(task_name, device_id)

    @staticmethod
    def device_register(device_id: str, *, platform: str, system_info: dict[str, object] | None) -> ClientMessage:
        return builders.device_register(device_id, platform=platform, system_info=system_info)

    def heartbeat(self, now: float, frame: ClientMessage | None = None) -> ClientMessage:
        """The heartbeat to send at ``now`` (``frame`` reuses a driver's cached one, restamped)."""
        if frame is None:
            client_type = ClientType.CONSTELLATION if self.role is Role.CONSTELLATION else ClientType.DEVICE
            frame = builders.heartbeat(self.client_id, client_type)
        else:
            frame.timestamp = utc_timestamp()
        self.heartbeats.beat_sent(now)
        return frame

    def device_info_request(self, device_id: str, request_id: str) -> ClientMessage:
        self._info_requests.add(request_id)
        return builders.device_info_request(self.client_id, device_id, request_id)

    def forget_device_info(self, request_id: str) -> None:
        self._info_requests.discard(request_id)

    def expect_task(self, session_id: str) -> None:
        """A task with ``session_id`` is being sent on this link: its ack and end are ours to report."""
        self._tasks.add(session_id)

    def forget_task(self, session_id: str) -> None:
        self._tasks.discard(session_id)

    # --- frames in ----------------------------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, now: float) -> list[Event]:
        """Decode and :meth:`receive` one frame; raises :class:`AIPDecodeError` for one that is not AIP.

        Any frame, decodable or not, proves the link alive.
        """
        try:
            frame = decode_server_message(text)
        except AIPDecodeError:
            self.heartbeats.frame_received(now)
            raise
        return self.receive(frame, now)

    def receive(self, frame: ServerMessage, now: float) -> list[Event]:
        self.heartbeats.frame_received(now)
        kind = frame.type
        if self.state is RegistrationState.REGISTERING:
            return [self._verdict(frame)]
        if kind is ServerMessageType.HEARTBEAT:
            sid = frame.session_id
            if sid is not None and sid in self._tasks:
                return [TaskAcked(sid, frame)]
            return [ServerFrame(frame)]
        if kind is ServerMessageType.DEVICE_INFO_RESPONSE:
            rid = frame.response_id or ""
            if rid in self._info_requests:
                self._info_requests.discard(rid)
                return [DeviceInfoAnswered(rid, frame)]
            return [Unsolicited("DEVICE_INFO_RESPONSE for no request of ours")]
        if kind is ServerMessageType.TASK_END:
            sid = frame.session_id or ""
            if sid in self._tasks:
                self._tasks.discard(sid)
                return [TaskEnded(sid, frame)]
            return [Unsolicited("TASK_END for a session that is not ours", frame)]
        if kind is ServerMessageType.ERROR:
            # No correlation id: it answers every DEVICE_INFO request outstanding, and is reported as such.
            text = frame.error or "unspecified error"
            events: list[Event] = [DeviceInfoAnswered(rid, frame) for rid in sorted(self._info_requests)]
            self._info_requests.clear()
            events.append(ServerError(text))
            return events
        if self.role is Role.CONSTELLATION and kind in (ServerMessageType.COMMAND, ServerMessageType.TASK):
            return [Unsolicited(f"{kind.value} frame is not meant for a constellation")]
        return [ServerFrame(frame)]

    def _verdict(self, frame: ServerMessage) -> Event:
        kind = frame.type
        if kind is ServerMessageType.ERROR:
            self.state = RegistrationState.REJECTED
            text = frame.error or "(no error text)"
            return Verdict(rejection_outcome(text), text)
        if kind is ServerMessageType.HEARTBEAT and frame.status is TaskStatus.OK:
            self.state = RegistrationState.REGISTERED
            return Verdict(None)
        if self.role is Role.DEVICE:
            # A device's server answers REGISTER first (§8.1): anything else is a broken server, and retryable.
            self.state = RegistrationState.REJECTED
            got = f"{kind.value}/{frame.status.value}"
            return Verdict(Outcome(f"expected a heartbeat/ok registration confirmation, got {got}"))
        # A constellation's server may send other frames before the verdict; they are not the verdict (§6).
        return Unsolicited(f"{kind.value} frame before the registration verdict")
