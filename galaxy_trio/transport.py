"""A WebSocket link that carries AIP frames, shared by the manager, the server and the agent.

This is the one edge where trio-websocket's and the OS's exceptions become galaxy_trio's own
(:class:`~galaxy_trio.errors.LinkError` and its subclasses), so nothing above it catches library internals.
Timeouts belong to callers: wrap :func:`open_link` or :meth:`Link.receive` in ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio
import trio_websocket
import wsproto.utilities

from .aip import ClientMessage, ServerMessage, encode_text
from .errors import BinaryFrame, ConnectFailed, HandshakeRejected, LinkClosed
from .redact import redact_text

__all__ = ["CLOSE_GRACE", "DEFAULT_MAX_FRAME", "Link", "open_link"]

#: Default bound on one incoming frame. UFO allows 100 MiB (a memory-exhaustion hazard); 1 MiB holds the largest
#: real frame (a list_tools result) several hundred times over.
DEFAULT_MAX_FRAME: Final = 1 << 20

#: How long a closing handshake may take before the socket is simply dropped. Cleanup is bounded, never a hang.
CLOSE_GRACE: Final = 2.0

#: The same bound when the closing task is already cancelled (the peer's reply can no longer be read).
CANCELLED_CLOSE_GRACE: Final = 0.05

#: WebSocket close codes used by galaxy_trio.
CLOSE_NORMAL: Final = 1000
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008


class _RedactTokens(logging.Filter):
    """trio-websocket logs the URL of every connection it opens (at DEBUG), ``?token=`` included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


logging.getLogger("trio-websocket").addFilter(_RedactTokens())


class Link:
    """An open WebSocket carrying AIP text frames.

    Only one task may call :meth:`receive` (trio-websocket already runs a reader task that feeds a bounded queue);
    any task may :meth:`send`.
    """

    __slots__ = ("_ws",)

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    @property
    def closed(self) -> bool:
        return self._ws.closed is not None

    @property
    def remote(self) -> str:
        return str(self._ws.remote)

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


@asynccontextmanager
async def open_link(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[Link]:
    """Open a client link to ``url`` (``ws://`` or ``wss://``) and close it on exit.

    The caller's cancel scope bounds the handshake. Raises :class:`HandshakeRejected` for an HTTP error status,
    :class:`ConnectFailed` for any other failure to connect. The URL (which may hold a token) never appears in
    an exception raised here.
    """
    try:
        cm = trio_websocket.open_websocket_url(
            url,
            ssl_context,
            max_message_size=max_message_size,
            connect_timeout=math.inf,
            disconnect_timeout=CLOSE_GRACE,
        )
    except ValueError as exc:  # bad scheme or port in the URL
        raise ConnectFailed(f"invalid WebSocket URL: {exc}") from None
    link: Link | None = None
    after_close = trio.CancelScope()
    try:
        with after_close:
            async with cm as ws:
                link = Link(ws)
                try:
                    yield link
                finally:
                    await link.aclose()
                    # After a close the peer started, trio-websocket waits without a bound for the peer to drop
                    # the TCP connection: a peer that never does would hold this link (and its caller) forever.
                    after_close.deadline = trio.current_time() + CLOSE_GRACE
    except wsproto.utilities.LocalProtocolError:
        # trio-websocket answers a ping, or refuses an oversized message, even after a close frame went out;
        # wsproto's refusal then escapes its reader task (python-trio/trio-websocket#184). The link is over.
        raise LinkClosed() from None
    except trio_websocket.ConnectionRejected as exc:
        raise HandshakeRejected(exc.status_code) from None
    except trio_websocket.DisconnectionTimeout:
        if link is None:
            raise ConnectFailed("closing handshake timed out") from None
    except trio_websocket.HandshakeError as exc:
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else type(exc).__name__
        raise ConnectFailed(f"WebSocket handshake failed ({detail})") from None
    except (OSError, trio.BrokenResourceError) as exc:
        raise ConnectFailed(f"connection failed ({type(exc).__name__}: {exc})") from None
    finally:
        if link is not None:
            await _close_socket(link._ws)


async def _close_socket(ws: trio_websocket.WebSocketConnection) -> None:
    """Close the TCP stream under a client WebSocket once trio-websocket is done with it.

    When the peer ends the link (a close frame trio-websocket answers, an EOF, a reset), trio-websocket's client
    never closes its own stream, and its ``aclose`` is then a no-op: the socket would stay open (CLOSE_WAIT) until
    the garbage collector finds it. Closing a closed stream is a no-op, so this is safe on every path.
    """
    with trio.move_on_after(CANCELLED_CLOSE_GRACE, shield=True):
        try:
            await ws._stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
