"""The WebSocket close codes (RFC 6455 §7.4.1) that AIP peers use, and what each one means in AIP.

They live in the protocol layer, not in ``transport``, because choosing a code is a protocol decision (the server's
rules and the client protocol pick them without any I/O); the transport only puts them on the wire.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
]

#: The link has done its job, or the peer is refused for a reason it can act on (duplicate id, target not
#: connected, target device gone): UFO's server closes these cases with 1000.
CLOSE_NORMAL: Final = 1000
#: The endpoint is shutting down (a server stopping, a client leaving).
CLOSE_GOING_AWAY: Final = 1001
#: A binary frame: AIP frames are JSON text.
CLOSE_UNSUPPORTED_DATA: Final = 1003
#: A frame that breaks the protocol (a first frame that is not a valid REGISTER, no REGISTER in time, a peer that
#: stopped reading).
CLOSE_POLICY_VIOLATION: Final = 1008
#: A frame larger than the receiver's limit.
CLOSE_MESSAGE_TOO_BIG: Final = 1009
