"""The client side of AIP as pure decisions: what a verdict means, when to beat, when a link is dead, what to retry.

Both AIP clients we ship — the manager's constellation link and the device agent's link — are thin trio drivers of
this module, so they cannot disagree on the protocol (they used to: the agent retried an HTTP 404 forever, the
manager failed it at once). Nothing here does I/O or reads a clock: frames and the time come in, decisions go out,
and every rule is tested without a socket (as :mod:`galaxy_trio.server.rules` is for the server side).

What lives here:

- :func:`registration_verdict` — AIP has no REGISTER-ack: the next ``heartbeat``/``ok`` frame confirms, the next
  ``error`` frame rejects (PROTOCOL.md §6). Whether a rejection is worth retrying depends on who registers.
- :func:`url_problem` and :func:`handshake_outcome` — the one classification of a failed WebSocket handshake
  into *retryable* (time may fix it: a restarting server, a 503) and *permanent* (a wrong token, a wrong path, a
  port that cannot exist), with a message that names the cause and what to check.
- :class:`HeartbeatClock` — the heartbeat cadence and the liveness rule: a heartbeat every ``interval`` whatever the
  reply window (``timeout``) is, and a link presumed dead when no frame at all arrived within ``timeout`` of the
  oldest unanswered heartbeat — unless bytes wait unread in the socket (the driver is behind, the peer is not
  silent).
"""

from __future__ import annotations

import enum
import math
from typing import Final
from urllib.parse import urlsplit

import msgspec

from .messages import ClientType, ServerMessage, ServerMessageType, TaskStatus

__all__ = [
    "PERMANENT_HANDSHAKE_STATUSES",
    "Beat",
    "HeartbeatClock",
    "Outcome",
    "RegistrationVerdict",
    "answers_register",
    "handshake_outcome",
    "is_duplicate_rejection",
    "registration_verdict",
    "url_problem",
]


class Outcome(msgspec.Struct, frozen=True):
    """Why an attempt (or one link) ended, and whether trying again can help."""

    reason: str
    permanent: bool = False


# --- registration ----------------------------------------------------------------------------------------------

_TARGET_PREFIX: Final = "Target device "
_TARGET_SUFFIX: Final = " is not connected"
_DUPLICATE_MARK: Final = "is already registered"


def is_duplicate_rejection(reason: str) -> bool:
    """Whether a rejection says the client id is already registered (UFO's text, PROTOCOL.md §8.9)."""
    return _DUPLICATE_MARK in reason


def _is_target_not_connected(reason: str) -> bool:
    return reason.startswith(_TARGET_PREFIX) and reason.endswith(_TARGET_SUFFIX)


class RegistrationVerdict(msgspec.Struct, frozen=True):
    """The server's answer to REGISTER. ``reason`` is the rejection text (``None`` when confirmed)."""

    confirmed: bool
    reason: str | None = None
    #: Whether registering again later can succeed without anyone changing anything.
    retryable: bool = False
    #: The rejection says our client id is taken (possibly by our own previous, not yet dropped, link).
    duplicate: bool = False


def answers_register(frame: ServerMessage) -> bool:
    """Whether ``frame`` answers a pending REGISTER (PROTOCOL.md §6): an ``error`` or a ``heartbeat/ok``."""
    kind = frame.type
    return kind is ServerMessageType.ERROR or (kind is ServerMessageType.HEARTBEAT and frame.status is TaskStatus.OK)


def registration_verdict(frame: ServerMessage, role: ClientType) -> RegistrationVerdict | None:
    """What ``frame`` says about a pending REGISTER sent as ``role``; ``None`` if it is not an answer to it.

    Retry policy, by role:

    - a constellation (the manager) is refused for good unless the target device is merely not connected yet
      (UFO's ``Target device … is not connected``): a duplicate id or any other refusal needs an operator. (The
      manager's driver may still retry a duplicate shortly after losing its own link: the server may hold it.)
    - a device (the agent) retries every refusal with backoff: the most common one, a duplicate id, is usually a
      previous incarnation of the same device whose socket the server has not dropped yet; ``max_retries`` bounds
      it for callers who prefer to stop.
    """
    if frame.type is ServerMessageType.ERROR:
        reason = frame.error or "(no error text)"
        duplicate = is_duplicate_rejection(reason)
        if role is ClientType.DEVICE:
            retryable = True
        else:
            retryable = _is_target_not_connected(reason)
        return RegistrationVerdict(confirmed=False, reason=reason, retryable=retryable, duplicate=duplicate)
    return RegistrationVerdict(confirmed=True) if answers_register(frame) else None


# --- the handshake -----------------------------------------------------------------------------------------------

#: Handshake answers that retrying cannot change, and what each one most likely means.
_PERMANENT_STATUS_CAUSES: Final[dict[int, str]] = {
    400: "the server refused the WebSocket upgrade request (is this an AIP server?)",
    401: "the token is wrong or missing",
    403: "the token is wrong or missing",
    404: "nothing serves AIP at this path (UFO's and galaxy_trio's servers listen on /ws)",
    405: "this URL does not accept a WebSocket upgrade (is this an AIP server?)",
    410: "this endpoint is gone",
    426: "the server wants another protocol version",
}

PERMANENT_HANDSHAKE_STATUSES: Final = frozenset(_PERMANENT_STATUS_CAUSES)


def handshake_outcome(status_code: int, server: str) -> Outcome:
    """Classify an HTTP answer (not 101) to the WebSocket upgrade; ``server`` is the redacted URL, for the message.

    Permanent: the statuses in :data:`PERMANENT_HANDSHAKE_STATUSES` (a client error that the same request will
    meet again). Everything else — 5xx, 408, 429, a proxy's hiccup — is worth retrying with backoff.
    """
    cause = _PERMANENT_STATUS_CAUSES.get(status_code)
    if cause is not None:
        return Outcome(f"{server} refused the handshake with HTTP {status_code}: {cause}; not retrying", True)
    return Outcome(f"{server} answered the handshake with HTTP {status_code}; retrying", False)


def url_problem(url: str) -> str | None:
    """What makes ``url`` a WebSocket URL that can never connect (``None`` if nothing): checked before the first try.

    A port outside 1-65535 or a missing host is not something time fixes; without this check a client would retry
    it forever. The answer never quotes the URL (its query may carry a token).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL ({exc})"
    if parts.scheme not in ("ws", "wss"):
        return f"must be a ws:// or wss:// URL, not {parts.scheme[:16]!r}"
    if not parts.hostname:
        return "the URL has no host"
    if port == 0:
        return "port 0 cannot be connected to (ports are 1-65535)"
    return None


# --- heartbeats and liveness --------------------------------------------------------------------------------------


class Beat(enum.Enum):
    """What the heartbeat driver should do now (see :meth:`HeartbeatClock.poll`)."""

    WAIT = "wait"  #: nothing is due: sleep until :attr:`HeartbeatClock.wake_at`
    SEND = "send"  #: send a heartbeat, then report it with :meth:`HeartbeatClock.sent`
    DEAD = "dead"  #: no frame within the window of a heartbeat: the link is presumed dead


class HeartbeatClock:
    """Heartbeat cadence and liveness for one link, on the driver's clock (``trio.current_time()`` in practice).

    The cadence is fixed: beats are due at ``start + k * interval`` whatever ``timeout`` is — shorter, equal or
    longer than the interval — because the reply window of one beat never delays the next. A driver that fell
    behind (a blocked host) sends one beat, not a burst. The window runs from the *oldest* unanswered beat, so
    a peer that falls silent is detected between ``timeout`` and ``interval + timeout`` after its last frame.
    """

    __slots__ = ("_awaiting_since", "_next_beat", "interval", "timeout")

    def __init__(self, interval: float, timeout: float, *, now: float) -> None:
        if not (interval > 0 and timeout > 0):
            raise ValueError(f"heartbeat interval and timeout must be > 0, got {interval!r} and {timeout!r}")
        self.interval = interval
        self.timeout = timeout
        self._next_beat = now + interval
        self._awaiting_since: float | None = None

    @property
    def heartbeat_due_at(self) -> float:
        """When the next heartbeat is due."""
        return self._next_beat

    @property
    def presumed_dead_at(self) -> float | None:
        """When the link counts as dead if no frame arrives first; ``None`` while no beat awaits an answer."""
        return None if self._awaiting_since is None else self._awaiting_since + self.timeout

    @property
    def wake_at(self) -> float:
        """The next moment :meth:`poll` can answer something other than ``WAIT``."""
        dead_at = self.presumed_dead_at
        return self._next_beat if dead_at is None else min(self._next_beat, dead_at)

    def frame_received(self) -> None:
        """Any frame from the peer answers every beat sent so far."""
        self._awaiting_since = None

    def poll(self, now: float, *, last_frame_at: float = -math.inf, unread: bool = False) -> Beat:
        """Decide at ``now``. ``last_frame_at``: when the driver last read a frame (it may call
        :meth:`frame_received` instead); ``unread``: whether bytes from the peer wait unread in the socket.
        """
        awaiting = self._awaiting_since
        if awaiting is not None and last_frame_at >= awaiting:
            self._awaiting_since = awaiting = None
        if awaiting is not None and now >= awaiting + self.timeout:
            if not unread:
                return Beat.DEAD
            # The peer did answer and the driver has not read it yet: give the reader one more window rather
            # than drop a live link (under load that would re-register it into the very backlog that delayed it).
            self._awaiting_since = now
        return Beat.SEND if now >= self._next_beat else Beat.WAIT

    def sent(self, now: float) -> None:
        """A heartbeat went out at ``now``; plan the next one on the fixed cadence."""
        if self._awaiting_since is None:
            self._awaiting_since = now
        self._next_beat += self.interval
        if self._next_beat <= now:  # the driver fell behind: one beat now, not a burst to catch up
            self._next_beat = now + self.interval
