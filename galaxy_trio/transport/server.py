"""The server's side of links: :func:`serve_links` accepts WebSocket upgrades, :class:`ServerLink` carries AIP.

trio-websocket does the WebSocket work here; nothing above this module imports it. Each incoming upgrade reaches
the caller's handler as a :class:`LinkRequest` (path, peer), which it accepts (a :class:`ServerLink`) or rejects
with an HTTP status. Every failure the peer or the network can cause surfaces as a
:class:`~galaxy_trio.errors.LinkError`, mapped by table (:mod:`._errors`) with the original as its cause.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Final, NoReturn, cast

import trio
import trio_websocket

from ..aip import ClientMessage, ServerMessage, encode_text
from ..aip.close_codes import CLOSE_NORMAL
from ..errors import BinaryFrame, LinkClosed
from ._errors import STREAM_ERRORS, ErrorTable, link_closed, map_exceptions
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, DEFAULT_MAX_FRAME

__all__ = ["LinkHandler", "LinkRequest", "ServerLink", "serve_links"]

logger = logging.getLogger("galaxy_trio.transport")


def _closed(exc: Exception) -> LinkClosed:
    reason = cast(trio_websocket.ConnectionClosed, exc).reason
    if reason is None:
        return LinkClosed()
    return LinkClosed(reason.code, reason.reason)


#: trio-websocket reports the peer's (or our) close with the close frame; a broken stream has none.
_LINK: Final[ErrorTable] = {trio_websocket.ConnectionClosed: _closed, STREAM_ERRORS: link_closed}


class ServerLink:
    """An accepted WebSocket, speaking AIP text frames (made by :meth:`LinkRequest.accept`).

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
        with map_exceptions(_LINK):
            await self._ws.send_message(text)

    async def receive(self) -> str:
        """The next text frame. Raises :class:`LinkClosed` when the link closes, :class:`BinaryFrame` on binary."""
        with map_exceptions(_LINK):
            message = await self._ws.get_message()
        if isinstance(message, bytes):
            raise BinaryFrame(len(message))
        return message

    async def ping(self) -> None:
        """Send a ping and wait for its pong (the caller's scope bounds the wait). Raises :class:`LinkClosed`."""
        with map_exceptions(_LINK):
            await self._ws.ping()

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation.

        When the caller is already cancelled, the link's reader is being cancelled too and can no longer see the
        peer's answer, so the close frame is sent and the socket dropped after :data:`CANCELLED_CLOSE_GRACE`.
        """
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, shield=True):
            try:
                with map_exceptions(_LINK):
                    await self._ws.aclose(code, reason)
            except LinkClosed:
                pass  # already closed or broken: nothing left to close gracefully


class LinkRequest:
    """An HTTP upgrade waiting for an answer: :meth:`accept` it, or :meth:`reject` it with an HTTP status."""

    __slots__ = ("_request",)

    def __init__(self, request: trio_websocket.WebSocketRequest) -> None:
        self._request = request

    @property
    def target(self) -> str:
        """The request target as sent: path and query (which may hold a token: never log it whole)."""
        return str(self._request.path)

    @property
    def remote(self) -> str:
        """The peer's address for logs, ``127.0.0.1:50774`` or ``[::1]:50774`` (not trio-websocket's repr)."""
        peer = self._request.remote
        address, port = getattr(peer, "address", None), getattr(peer, "port", None)
        if address is None or port is None:
            return str(peer)
        return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"

    async def accept(self) -> ServerLink:
        """Switch protocols. Raises :class:`LinkClosed` if the peer went away meanwhile."""
        with map_exceptions(_LINK):
            return ServerLink(await self._request.accept())

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP error, then hang up. Raises :class:`LinkClosed` if the peer went away meanwhile.

        trio-websocket would keep the socket (and a task reading it) open until the peer closes it: without the
        hang-up, peers without a token could hold as many server sockets as they like.
        """
        try:
            with map_exceptions(_LINK):
                await self._request.reject(status, body=body)
        finally:
            connection = _CONNECTION.get(None)
            if connection is not None:
                connection.cancel()


#: What :func:`serve_links` calls for each upgrade; the connection ends when it returns.
LinkHandler = Callable[[LinkRequest], Awaitable[None]]

#: The cancel scope of the connection task being served (trio-websocket runs the handler in a child task).
_CONNECTION: ContextVar[trio.CancelScope] = ContextVar("galaxy_trio_link_connection")


class _ContainedConnections:
    """Where trio-websocket starts each connection's task: one connection's failure never stops the server.

    The handler is expected to catch what a peer can cause, but trio-websocket runs its own reader task beside
    it, and that task can fail too: it answers a ping, or refuses an oversized message, even after a close frame
    went out, and wsproto's refusal escapes (python-trio/trio-websocket#184). In a plain nursery that exception
    would tear down every connection and the listener with them. Each task also runs in a cancel scope of its
    own, so that a rejected upgrade can end it (:meth:`LinkRequest.reject`).
    """

    __slots__ = ("_handshake_deadline", "_nursery")

    def __init__(self, nursery: trio.Nursery, handshake_deadline: float) -> None:
        self._nursery = nursery
        self._handshake_deadline = handshake_deadline

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self._nursery.start_soon(_contained, self._handshake_deadline, fn, *args)


async def _contained(handshake_deadline: float, fn: Callable[..., Awaitable[object]], *args: object) -> None:
    with trio.CancelScope() as connection:
        _CONNECTION.set(connection)
        tls = next((arg for arg in args if isinstance(arg, trio.SSLStream)), None)
        if tls is not None and not await _tls_handshake(tls, handshake_deadline):
            return
        try:
            await fn(*args)
        except Exception as exc:  # Cancelled is not an Exception: a server shutdown still goes through
            logger.warning("a connection failed inside the WebSocket library and was dropped: %r", exc)


async def _tls_handshake(stream: trio.SSLStream[trio.abc.Stream], deadline: float) -> bool:
    """Finish the TLS handshake before trio-websocket sees the stream; False (socket closed) if it fails.

    trio-websocket would do it lazily in its reader and, when it fails (a plain ``ws://`` client, an unknown
    certificate), keep waiting for an upgrade request that cannot come until its handshake deadline.
    """
    with trio.move_on_after(deadline):
        try:
            await stream.do_handshake()
            return True
        except STREAM_ERRORS as exc:
            cause = exc.__cause__ or exc
            logger.info("TLS handshake failed: %s: %s", type(cause).__name__, str(cause)[:200])
    await trio.aclose_forcefully(stream)
    return False


async def serve_links(
    handler: LinkHandler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
    handshake_deadline: float,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket upgrades on ``host:port`` until cancelled; ``nursery.start`` returns the bound port.

    Each upgrade (TLS first, with ``ssl_context``) must arrive within ``handshake_deadline`` seconds; ``handler``
    then runs with its :class:`LinkRequest`. ``max_message_size`` bounds one incoming message (a bigger one
    closes the link with 1009). One connection's failure never stops the others or the listener.
    """

    async def on_request(request: trio_websocket.WebSocketRequest) -> None:
        await handler(LinkRequest(request))

    # Connection tasks live in a nursery of their own, which outlives the listener inside it.
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as nursery:
            ws_server: trio_websocket.WebSocketServer = await nursery.start(
                partial(
                    trio_websocket.serve_websocket,
                    on_request,
                    host,
                    port,
                    ssl_context,
                    # trio.serve_listeners takes any object with start_soon as its handler nursery.
                    handler_nursery=cast(trio.Nursery, _ContainedConnections(connections, handshake_deadline)),
                    max_message_size=max_message_size,
                    connect_timeout=handshake_deadline,
                    disconnect_timeout=CLOSE_GRACE,
                )
            )
            endpoint = ws_server.listeners[0]
            task_status.started(endpoint.port if isinstance(endpoint, trio_websocket.Endpoint) else 0)
    raise RuntimeError("the WebSocket server stopped serving")  # serve_websocket only ends by cancellation
