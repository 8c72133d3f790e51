"""The registry of online clients and of the sessions between them: who is connected, under which pinned
identity, doing what.

A record lives exactly as long as its connection is registered: the connection adds it after an accepted REGISTER
and removes it when it ends, however it ends, so the registry never holds a half-dead client. What belongs to one
device hangs off its record (its link, its FIFO lock, its outstanding COMMANDs); which sessions run on a device and
which ones a client asked for are the registry's indices, so a record knows nothing of sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..aip import ClientType, Result
from ..transport import Link
from .rules import Registration

__all__ = ["ClientInfo", "ClientRecord", "ClientRegistry", "DeviceLoad", "PendingCommand", "RegisteredSession"]


#: A read-only snapshot of one online client (for tests, the CLI and logs): what its REGISTER pinned.
ClientInfo = Registration


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """Sessions on one device: running now (never above 1), the most ever running at once, and waiting."""

    active: int
    peak: int
    queued: int


@dataclass(eq=False, slots=True)
class PendingCommand:
    """One COMMAND waiting for its COMMAND_RESULTS, keyed by the COMMAND's ``response_id`` on the device record."""

    session_id: str
    done: trio.Event = field(default_factory=trio.Event)
    results: list[Result] | None = None
    #: Its session was cancelled after it went out: the device may still be running it, so the device's next
    #: session waits for its results (or the device's disconnection, which sets ``done``).
    abandoned: bool = False


@dataclass(eq=False, slots=True)
class ClientRecord:
    """One registered connection. Device-only fields stay empty on a constellation."""

    client_id: str
    role: ClientType
    target_id: str | None
    platform: str
    system_info: dict[str, Any] | None
    link: Link
    #: Constellations registered for this device (target_id); told when it goes away.
    scoped: set[ClientRecord] = field(default_factory=set)
    #: Ends this client's connection because its target device went away (set by the connection).
    on_target_gone: Callable[[], None] | None = None
    #: Outstanding COMMANDs on this device, by the COMMAND's response_id.
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    #: Serialises sessions on this device; trio.Lock is fair, so they run in FIFO order.
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Sessions holding the lock now (0 or 1), and the most that ever did at once (a check that stays at 1).
    active: int = 0
    peak: int = 0
    #: Set when its connection ends: nothing it was sent will be answered any more.
    gone: bool = False

    @classmethod
    def from_registration(cls, registration: Registration, link: Link) -> ClientRecord:
        return cls(
            client_id=registration.client_id,
            role=registration.role,
            target_id=registration.target_id,
            platform=registration.platform,
            system_info=registration.system_info,
            link=link,
        )

    def enter_session(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def leave_session(self) -> None:
        self.active -= 1

    def info(self) -> ClientInfo:
        return Registration(self.client_id, self.role, self.target_id, self.platform, self.system_info)


class RegisteredSession(Protocol):
    """What the registry indexes a session by, and what ending a connection does to it
    (:class:`~galaxy_trio.server.sessions.Session` is one; the registry never runs a session itself)."""

    @property
    def session_id(self) -> str: ...
    @property
    def requester(self) -> ClientRecord: ...
    @property
    def device(self) -> ClientRecord: ...
    def cancel_device_gone(self) -> None:
        """The device went away: fail the session at once towards its requester."""
        ...

    def cancel_requester_gone(self) -> None:
        """The requester went away: cancel the session; its device is still told."""
        ...


class ClientRegistry:
    """Online clients by id (devices and constellations share one namespace), and the sessions not yet ended: by
    id, by the device they run (or wait) on, and by the client that asked for them.

    The per-record indices are keyed by the record, not by its id: a device that reconnects under the same id
    while its old sessions are still being settled gets a fresh, empty queue. They keep arrival order, so a
    disconnect settles sessions in the order they were accepted.
    """

    __slots__ = ("_asked_by", "_clients", "_on_device", "_sessions")

    def __init__(self) -> None:
        self._clients: dict[str, ClientRecord] = {}
        self._sessions: dict[str, RegisteredSession] = {}
        self._on_device: dict[ClientRecord, dict[str, RegisteredSession]] = {}
        self._asked_by: dict[ClientRecord, dict[str, RegisteredSession]] = {}

    # --- clients ----------------------------------------------------------------------------------------------------

    @property
    def clients(self) -> Mapping[str, ClientRecord]:
        return self._clients

    def get(self, client_id: str) -> ClientRecord | None:
        return self._clients.get(client_id)

    def add(self, record: ClientRecord) -> None:
        if record.client_id in self._clients:
            raise KeyError(f"client_id {record.client_id!r} is already registered")
        self._clients[record.client_id] = record

    def remove(self, record: ClientRecord) -> bool:
        """Remove ``record`` if it is the current holder of its id (never someone else's live registration).

        Its sessions stay indexed until each one settles (the connection cancels them through
        :meth:`sessions_on` and :meth:`sessions_asked_by`)."""
        if self._clients.get(record.client_id) is record:
            del self._clients[record.client_id]
            return True
        return False

    # --- sessions ---------------------------------------------------------------------------------------------------

    @property
    def sessions(self) -> Mapping[str, RegisteredSession]:
        """Every session not yet ended, by session_id."""
        return self._sessions

    def add_session(self, session: RegisteredSession) -> None:
        session_id = session.session_id
        if session_id in self._sessions:
            raise KeyError(f"session_id {session_id!r} already names a running session")
        self._sessions[session_id] = session
        self._on_device.setdefault(session.device, {})[session_id] = session
        self._asked_by.setdefault(session.requester, {})[session_id] = session

    def remove_session(self, session: RegisteredSession) -> None:
        """Forget ``session`` (idempotent; a later session that reuses its id is left alone)."""
        session_id = session.session_id
        if self._sessions.get(session_id) is not session:
            return
        del self._sessions[session_id]
        _discard(self._on_device, session.device, session_id)
        _discard(self._asked_by, session.requester, session_id)

    def sessions_on(self, device: ClientRecord) -> list[RegisteredSession]:
        """The sessions running or queued on ``device``, oldest first (a copy: cancelling one changes the index)."""
        return list(self._on_device.get(device, {}).values())

    def sessions_asked_by(self, client: ClientRecord) -> list[RegisteredSession]:
        """The sessions ``client`` asked for (their TASK_END goes to it), oldest first (a copy)."""
        return list(self._asked_by.get(client, {}).values())

    def load(self, device: ClientRecord) -> DeviceLoad:
        queued = len(self._on_device.get(device, ()))
        return DeviceLoad(device.active, device.peak, queued - device.active)

    # --- what the rules ask (rules.SessionIndex) ----------------------------------------------------------------

    def owner_of(self, session_id: str) -> str | None:
        session = self._sessions.get(session_id)
        return session.requester.client_id if session is not None else None

    def count_on(self, device_id: str) -> int:
        device = self._clients.get(device_id)
        return len(self._on_device.get(device, ())) if device is not None else 0


def _discard(index: dict[ClientRecord, dict[str, RegisteredSession]], record: ClientRecord, session_id: str) -> None:
    entries = index.get(record)
    if entries is None:
        return
    entries.pop(session_id, None)
    if not entries:
        del index[record]
