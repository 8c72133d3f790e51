"""Phase 2 — open the WebSocket to the device's agent server.

The handshake is bounded by the caller's cancel scope (the manager sets ``connect_timeout`` on it). What a retry
cannot fix is told apart here: an HTTP 401/403 (bad token) or 404 (wrong path) answer to the handshake is
permanent, so the device goes FAILED at once instead of hammering the server (UFO retried a bad token five times).
"""

from __future__ import annotations

import ssl
from typing import Final

from ..errors import HandshakeRejected, LinkError
from ..transport import open_link

__all__ = ["PERMANENT_HANDSHAKE_STATUSES", "client_ssl_context", "is_permanent", "open_link"]

#: Handshake answers that retrying cannot change.
PERMANENT_HANDSHAKE_STATUSES: Final = frozenset({400, 401, 403, 404})


def is_permanent(exc: LinkError) -> bool:
    """Whether a failed connection attempt should fail the device rather than be retried."""
    return isinstance(exc, HandshakeRejected) and exc.status_code in PERMANENT_HANDSHAKE_STATUSES


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for ``wss://``: the system CAs, or only ``ca_file`` when one is configured."""
    if ca_file is None:
        return None
    return ssl.create_default_context(cafile=ca_file)
