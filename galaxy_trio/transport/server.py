"""The server's side of a link: a trio-websocket server connection behind the :class:`Link` interface."""

from __future__ import annotations

import math

import trio
import trio_websocket

from ..aip import ClientMessage, ServerMessage, encode_text
from ..errors import BinaryFrame, LinkClosed
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, CLOSE_NORMAL

__all__ = ["ServerLink"]


class ServerLink:
    """A trio-websocket connection accepted by ``serve_aip``, speaking AIP text frames.

    trio-websocket already runs a reader task that feeds a bounded queue; :meth:`receive` takes from that queue.
    """

    __slots__ = ("_ws",)

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    @property
    def closed(self) -> bool:
        return self._ws.closed is not None

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        """Send one message as a text frame. Raises :class:`LinkClosed` if the link is gone."""
        await self.send_text(encode_text(message))

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise LinkClosed() from None

    async def receive(self) -> str:
        """The next text frame. Raises :class:`LinkClosed` when the link closes, :class:`BinaryFrame` on binary."""
        try:
            message = await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None
        if isinstance(message, bytes):
            raise BinaryFrame(len(message))
        return message

    async def ping(self) -> None:
        """Send a ping and wait for its pong (the caller's scope bounds the wait). Raises :class:`LinkClosed`."""
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise LinkClosed() from None

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation.

        When the caller is already cancelled, the link's reader is being cancelled too and can no longer see the
        peer's answer, so the close frame is sent and the socket dropped after :data:`CANCELLED_CLOSE_GRACE`.
        """
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, shield=True):
            try:
                await self._ws.aclose(code, reason)
            except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def _closed(exc: trio_websocket.ConnectionClosed) -> LinkClosed:
    reason = exc.reason
    if reason is None:
        return LinkClosed()
    return LinkClosed(reason.code, reason.reason)
