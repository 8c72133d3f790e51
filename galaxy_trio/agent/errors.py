"""Why a device agent stopped, or why one connection of it ended.

Two families: :class:`AgentStopped` subclasses end :meth:`DeviceAgent.run` (retrying cannot help, or the retry
budget is spent); the :class:`~galaxy_trio.errors.LinkError` subclasses here end one connection and lead to a
reconnect with backoff, like the transport's own link errors.
"""

from __future__ import annotations

from ..errors import GalaxyTrioError, LinkError

__all__ = [
    "AgentStopped",
    "AuthenticationRejected",
    "LinkDead",
    "ProtocolViolation",
    "RegistrationRejected",
    "RegistrationTimeout",
    "RetriesExhausted",
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


class RetriesExhausted(AgentStopped):
    """``max_retries`` consecutive attempts failed without a successful registration."""

    def __init__(self, failures: int, last_error: BaseException) -> None:
        super().__init__(f"giving up after {failures} consecutive failed attempts; last error: {last_error}")
        self.failures = failures
        self.last_error = last_error


class RegistrationRejected(LinkError):
    """The server answered REGISTER with an ERROR frame (e.g. the device id is already registered)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"registration rejected by the server: {text}")
        self.text = text


class RegistrationTimeout(LinkError):
    """Connecting, the handshake and the registration confirmation together took longer than allowed."""


class LinkDead(LinkError):
    """No frame at all arrived within ``heartbeat_timeout`` after a heartbeat: the server or the path is gone."""


class ProtocolViolation(LinkError):
    """The server sent something that is not an AIP frame (invalid JSON or fields, binary, wrong reply)."""
