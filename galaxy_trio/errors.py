"""Exceptions galaxy_trio raises to its users (the protocol's own :class:`AIPDecodeError` lives in ``aip``)."""

from __future__ import annotations

from .aip.client_protocol import rejection_outcome

__all__ = [
    "BinaryFrame",
    "ConnectFailed",
    "GalaxyTrioError",
    "HandshakeRejected",
    "LinkClosed",
    "LinkError",
    "RegistrationRejected",
]


class GalaxyTrioError(Exception):
    """Base of every galaxy_trio error."""


class LinkError(GalaxyTrioError):
    """A WebSocket link could not be opened or broke; retrying may help."""


class ConnectFailed(LinkError):
    """The TCP connection or the WebSocket handshake failed (refused, reset, TLS error, bad response)."""


class HandshakeRejected(LinkError):
    """The server answered the handshake with an HTTP error status (403: wrong or missing token)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"handshake rejected with HTTP {status_code}")
        self.status_code = status_code


class LinkClosed(LinkError):
    """The link closed; ``code`` and ``reason`` are the WebSocket close frame's, when there was one."""

    def __init__(self, code: int | None = None, reason: str | None = None) -> None:
        detail = "connection closed" if code is None else f"connection closed ({code}{': ' + reason if reason else ''})"
        super().__init__(detail)
        self.code = code
        self.reason = reason


class BinaryFrame(LinkError):
    """The peer sent a binary frame; AIP frames are JSON text only."""

    def __init__(self, size: int) -> None:
        super().__init__(f"binary frame of {size} bytes received; AIP frames are JSON text")
        self.size = size


class RegistrationRejected(LinkError):
    """The server answered REGISTER with an ERROR frame (the one class for the manager and the agent).

    ``reason`` is the server's text; ``retryable`` is true only when waiting can help (a constellation's target
    device not connected yet), as :func:`galaxy_trio.aip.client_protocol.rejection_outcome` decides.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"registration rejected by the server: {reason}")
        self.reason = reason
        self.text = reason
        self.retryable = not rejection_outcome(reason).permanent
