"""The registry of online clients: who is connected, under which pinned identity, doing what.

A record lives exactly as long as its connection is registered: the connection adds it after an accepted REGISTER
and removes it when it ends, however it ends, so the registry never holds a half-dead client. Everything a
session needs to find about a device (its link, its FIFO lock, its outstanding COMMANDs) hangs off the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from ..aip import ClientType, Result
from ..transport import Link
from .rules import Registration

if TYPE_CHECKING:
    from .sessions import Session

__all__ = ["ClientInfo", "ClientRecord", "ClientRegistry", "DeviceLoad", "PendingCommand"]


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


@dataclass(eq=False, slots=True)
class ClientRecord:
    """One registered connection. Device-only fields stay empty on a constellation."""

    client_id: str
    role: ClientType
    target_id: str | None
    platform: str
    system_info: dict[str, Any] | None
    link: Link
    #: Sessions executing (or queued) on this device.
    sessions: set[Session] = field(default_factory=set)
    #: Sessions this client asked for (their TASK_END goes to it).
    owned: set[Session] = field(default_factory=set)
    #: Constellations registered for this device (target_id); told when it goes away.
    scoped: set[ClientRecord] = field(default_factory=set)
    #: Ends this client's connection because its target device went away (set by the connection).
    on_target_gone: Callable[[], None] | None = None
    #: Outstanding COMMANDs on this device, by the COMMAND's response_id.
    pending: dict[str, PendingCommand] = field(default_factory=dict)
    #: Serialises sessions on this device; trio.Lock is fair, so they run in FIFO order.
    lock: trio.Lock = field(default_factory=trio.Lock)
    active: int = 0
    peak: int = 0

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

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    def enter_session(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def leave_session(self) -> None:
        self.active -= 1

    def info(self) -> ClientInfo:
        return Registration(self.client_id, self.role, self.target_id, self.platform, self.system_info)

    def load(self) -> DeviceLoad:
        return DeviceLoad(self.active, self.peak, len(self.sessions) - self.active)


class ClientRegistry:
    """Online clients by id (devices and constellations share one namespace) and running sessions by id."""

    __slots__ = ("_clients", "_sessions")

    def __init__(self) -> None:
        self._clients: dict[str, ClientRecord] = {}
        self._sessions: dict[str, Session] = {}

    @property
    def clients(self) -> Mapping[str, ClientRecord]:
        return self._clients

    @property
    def sessions(self) -> Mapping[str, Session]:
        return self._sessions

    @property
    def session_owners(self) -> Mapping[str, str]:
        """session_id → the client_id that asked for it, for the running sessions."""
        return _SessionOwners(self._sessions)

    def get(self, client_id: str) -> ClientRecord | None:
        return self._clients.get(client_id)

    def add(self, record: ClientRecord) -> None:
        if record.client_id in self._clients:
            raise KeyError(f"client_id {record.client_id!r} is already registered")
        self._clients[record.client_id] = record

    def remove(self, record: ClientRecord) -> bool:
        """Remove ``record`` if it is the current holder of its id (never someone else's live registration)."""
        if self._clients.get(record.client_id) is record:
            del self._clients[record.client_id]
            return True
        return False

    def add_session(self, session: Session) -> None:
        self._sessions[session.session_id] = session

    def remove_session(self, session: Session) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]


class _SessionOwners(Mapping[str, str]):
    """A live read-only view session_id → owner id, without copying the session table per TASK."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: dict[str, Session]) -> None:
        self._sessions = sessions

    def __getitem__(self, session_id: str) -> str:
        return self._sessions[session_id].requester.client_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)
