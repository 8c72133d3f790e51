"""Phase 2 — open the WebSocket to the device's agent server.

The handshake is bounded by the caller's cancel scope (the manager sets ``connect_timeout`` on it). What a retry
cannot fix is told apart by :mod:`galaxy_trio.aip.client_protocol`, one classification for the manager and the
agent: an HTTP 401/403 (bad token) or 404 (wrong path) answer to the handshake, or a URL that cannot be dialled
(a port out of range), is permanent, so the device goes FAILED at once instead of hammering the server (UFO
retried a bad token five times).
"""

from __future__ import annotations

import ssl
from typing import Final

from ..aip.client_protocol import PERMANENT_HANDSHAKE_STATUSES, Outcome, connect_outcome, handshake_outcome
from ..errors import ConnectFailed, HandshakeRejected, LinkError
from ..transport import connect_link, open_link

__all__ = ["PERMANENT_HANDSHAKE_STATUSES", "classify", "client_ssl_context", "connect_link", "open_link"]

_INVALID_URL: Final = "invalid WebSocket URL"


def classify(exc: LinkError) -> Outcome:
    """Why opening the link failed, retryable or not, by the protocol's one classification (shared with the agent)."""
    if isinstance(exc, HandshakeRejected):
        return handshake_outcome(exc.status_code)
    return connect_outcome(str(exc), invalid_url=isinstance(exc, ConnectFailed) and str(exc).startswith(_INVALID_URL))


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for ``wss://``: the system CAs, or only ``ca_file`` when one is configured."""
    if ca_file is None:
        return None
    return ssl.create_default_context(cafile=ca_file)
