"""Why a device agent stopped, or why one connection of it ended.

Two families: :class:`AgentStopped` subclasses end :meth:`DeviceAgent.run` (retrying cannot help, or the retry
budget is spent); the :class:`~galaxy_trio.errors.LinkError` subclasses here end one connection and lead to a
reconnect with backoff, like the transport's own link errors.
"""

from __future__ import annotations

from ..errors import GalaxyTrioError, LinkError, RegistrationRejected

__all__ = [
    "AgentStopped",
    "AuthenticationRejected",
    "HandshakeRefused",
    "LinkDead",
    "ProtocolViolation",
    "RegistrationRejected",
    "RegistrationTimeout",
    "RetriesExhausted",
]


class AgentStopped(GalaxyTrioError):
    """The agent gave up: :meth:`DeviceAgent.run` raises a subclass of this."""


class HandshakeRefused(AgentStopped):
    """The server answered the WebSocket handshake with an HTTP status that retrying cannot change.

    Which statuses those are, and what each means, is decided in one place for both AIP clients
    (:func:`galaxy_trio.aip.client_protocol.handshake_outcome`): 401/403 a wrong or missing token, 404 a path
    where nothing serves AIP, 400/405/410/426 not an AIP endpoint. The message names the cause; the URL in it is
    redacted.
    """

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationRejected(HandshakeRefused):
    """HTTP 401/403 at the handshake: the token is wrong or missing.

    Permanent: the same token will be refused again, so retrying forever (as UFO Galaxy does, §11.15) would only
    hammer the server. The token itself is never part of the message.
    """


class RetriesExhausted(AgentStopped):
    """``max_retries`` consecutive attempts failed without a successful registration."""

    def __init__(self, failures: int, last_error: BaseException) -> None:
        super().__init__(f"giving up after {failures} consecutive failed attempts; last error: {last_error}")
        self.failures = failures
        self.last_error = last_error


class RegistrationTimeout(LinkError):
    """Connecting, the handshake and the registration confirmation together took longer than allowed."""


class LinkDead(LinkError):
    """No frame at all arrived within ``heartbeat_timeout`` after a heartbeat: the server or the path is gone."""


class ProtocolViolation(LinkError):
    """The server sent something that is not an AIP frame (invalid JSON or fields, binary, wrong reply)."""
