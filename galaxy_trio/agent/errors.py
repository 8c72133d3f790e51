"""Why a device agent stopped, or why one connection of it ended.

Two families: :class:`AgentStopped` subclasses end :meth:`DeviceAgent.run` (retrying cannot help, or the retry
budget is spent); the :class:`~galaxy_trio.errors.LinkError` subclasses here end one connection and lead to a
reconnect with backoff, like the transport's own link errors. :class:`RegistrationRejected` is the package's one
class (``galaxy_trio.errors``), re-exported here.
"""

from __future__ import annotations

from ..aip.client_protocol import Outcome
from ..errors import GalaxyTrioError, LinkError, RegistrationRejected

__all__ = [
    "AgentStopped",
    "AuthenticationRejected",
    "LinkDead",
    "ProtocolViolation",
    "RegistrationRejected",
    "RegistrationTimeout",
    "RetriesExhausted",
    "ServerUnusable",
]


class AgentStopped(GalaxyTrioError):
    """The agent gave up: :meth:`DeviceAgent.run` raises a subclass of this."""


class AuthenticationRejected(AgentStopped):
    """The server refused the WebSocket handshake (HTTP 401/403: wrong or missing token).

    Permanent: the same token will be refused again, so retrying forever (as UFO Galaxy does, §11.15) would only
    hammer the server. The token itself is never part of the message.
    """

    def __init__(self, status_code: int, server: str) -> None:
        super().__init__(
            f"server {server} refused the handshake with HTTP {status_code}: the token is wrong or missing; "
            "not retrying"
        )
        self.status_code = status_code


class ServerUnusable(AgentStopped):
    """What retrying cannot fix, other than the token: an HTTP 404 (no AIP server at that path), another
    permanent handshake answer, or a URL that cannot be dialled (a port out of range). The message names the
    cause, as :mod:`galaxy_trio.aip.client_protocol` classifies it for the manager too."""

    def __init__(self, server: str, cause: str) -> None:
        super().__init__(f"server {server}: {cause}; not retrying")
        self.cause = cause


class RetriesExhausted(AgentStopped):
    """``max_retries`` consecutive attempts failed without a successful registration; ``last`` is how the last
    attempt ended (its :class:`~galaxy_trio.aip.client_protocol.Outcome`)."""

    def __init__(self, failures: int, last: Outcome) -> None:
        super().__init__(f"giving up after {failures} consecutive failed attempts; last error: {last.describe()}")
        self.failures = failures
        self.last = last


class RegistrationTimeout(LinkError):
    """Connecting, the handshake and the registration confirmation together took longer than allowed."""


class LinkDead(LinkError):
    """No frame at all arrived within ``heartbeat_timeout`` after a heartbeat: the server or the path is gone."""


class ProtocolViolation(LinkError):
    """The server sent something that is not an AIP frame (invalid JSON or fields, binary, wrong reply)."""
