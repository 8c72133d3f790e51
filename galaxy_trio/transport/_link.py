"""What every AIP link offers, whichever WebSocket implementation carries it, and the bounds they share.

Close codes are a protocol decision and live in :mod:`galaxy_trio.aip.close_codes`.
"""

from __future__ import annotations

from typing import Final, Protocol

from ..aip import ClientMessage, ServerMessage
from ..aip.close_codes import CLOSE_NORMAL

__all__ = [
    "CANCELLED_CLOSE_GRACE",
    "CLOSE_GRACE",
    "DEFAULT_MAX_FRAME",
    "Link",
]

#: Default bound on one incoming frame. UFO allows 100 MiB (a memory-exhaustion hazard); 1 MiB holds the largest
#: real frame (a list_tools result) several hundred times over.
DEFAULT_MAX_FRAME: Final = 1 << 20

#: How long a closing handshake may take before the socket is simply dropped. Cleanup is bounded, never a hang.
CLOSE_GRACE: Final = 2.0

#: The same bound when the closing task is already cancelled (the peer's reply can no longer be read).
CANCELLED_CLOSE_GRACE: Final = 0.05


class Link(Protocol):
    """An open WebSocket carrying AIP text frames.

    Only one task may call :meth:`receive` at a time; any task may :meth:`send`. Every failure is a
    :class:`~galaxy_trio.errors.LinkError`: :class:`~galaxy_trio.errors.LinkClosed` when the link is gone,
    :class:`~galaxy_trio.errors.BinaryFrame` for a binary frame. Timeouts belong to the caller's cancel scope.
    """

    @property
    def closed(self) -> bool:
        """True once either side started closing, or the connection broke."""
        ...

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        """Send one message as a text frame."""
        ...

    async def send_text(self, text: str) -> None:
        """Send an already encoded frame."""
        ...

    async def receive(self) -> str:
        """The next text frame."""
        ...

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation."""
        ...
