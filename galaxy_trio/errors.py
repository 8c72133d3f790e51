"""Exceptions galaxy_trio raises to its users (the protocol's own :class:`AIPDecodeError` lives in ``aip``)."""

from __future__ import annotations

__all__ = [
    "BinaryFrame",
    "ConnectFailed",
    "GalaxyTrioError",
    "HandshakeRejected",
    "LinkClosed",
    "LinkError",
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
