"""``serve_aip``: the AIP WebSocket server, in trio's ``serve_*`` style.

Start it with ``server = await nursery.start(partial(serve_aip, token=..., port=0))``; it runs until its nursery
is cancelled. The HTTP upgrade is where the token is checked (in constant time, before any WebSocket exists) and
where unknown paths are refused, so an unauthenticated peer never reaches AIP at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from functools import partial
from typing import Any, NoReturn, cast
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket

from ..aip import ClientType
from ..transport import CLOSE_GRACE, DEFAULT_MAX_FRAME
from .clients import ClientInfo, ClientRegistry, DeviceLoad
from .connection import ServerContext, handle_connection
from .drivers import default_driver
from .rules import shown
from .sessions import SessionDriver
from .settings import ServerSettings

__all__ = ["AIP_PATH", "AIPServer", "serve_aip"]

logger = logging.getLogger("galaxy_trio.server")

#: The single WebSocket endpoint (PROTOCOL.md §2).
AIP_PATH = "/ws"

_REJECT_NOT_FOUND = b"Not Found: the AIP endpoint is /ws\n"
_REJECT_FORBIDDEN = b"Forbidden: missing or wrong token\n"
_PEER_GONE = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class AIPServer:
    """A running AIP server: where it listens, and a read-only view of who is connected.

    Returned by ``nursery.start(serve_aip, ...)``. ``url`` never contains the token; add it with
    :func:`galaxy_trio.redact.url_with_token` when connecting.
    """

    __slots__ = ("_ctx", "_token_digest", "host", "port", "settings", "url")

    def __init__(self, *, host: str, token: str, driver: SessionDriver, settings: ServerSettings) -> None:
        self.host = host
        self.port = 0
        self.url = ""
        self.settings = settings
        self._ctx = ServerContext(ClientRegistry(), settings, driver)
        # Only a digest is kept: the token itself cannot end up in a repr, a log or a traceback from here.
        self._token_digest = _digest(token)

    def __repr__(self) -> str:
        return f"<AIPServer {self.url or 'not listening'} clients={len(self._ctx.registry.clients)}>"

    # --- inspection (read-only snapshots) -----------------------------------------------------------------------

    def online_clients(self) -> dict[str, ClientType]:
        """Every registered client id with its role, devices and constellations alike."""
        return {client_id: record.role for client_id, record in self._ctx.registry.clients.items()}

    def client_info(self, client_id: str) -> ClientInfo | None:
        record = self._ctx.registry.get(client_id)
        return record.info() if record is not None else None

    def system_info(self, device_id: str) -> Mapping[str, Any] | None:
        """The system_info a connected device sent in its REGISTER (None if unknown or not sent)."""
        record = self._ctx.registry.get(device_id)
        if record is None or record.role is not ClientType.DEVICE:
            return None
        return record.system_info

    def device_load(self, device_id: str) -> DeviceLoad | None:
        """Active (never above 1), peak and queued sessions of a connected device."""
        record = self._ctx.registry.get(device_id)
        if record is None or record.role is not ClientType.DEVICE:
            return None
        return self._ctx.registry.load(record)

    def running_sessions(self) -> dict[str, str]:
        """session_id → the device it runs (or waits) on, for every session not yet ended."""
        return {sid: s.device.client_id for sid, s in self._ctx.registry.sessions.items()}

    # --- the HTTP upgrade ---------------------------------------------------------------------------------------

    def _token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(_digest(candidate), self._token_digest)

    async def _handle_request(self, request: trio_websocket.WebSocketRequest) -> None:
        """trio-websocket's per-connection handler. Nothing a peer does may raise out of here: that would stop
        the whole server."""
        remote = str(request.remote)
        try:
            target = urlsplit(request.path)
            if target.path != AIP_PATH:
                logger.info("refused %s: unknown path %s (HTTP 404)", remote, shown(target.path))
                await request.reject(404, body=_REJECT_NOT_FOUND)
                _hang_up()
                return
            tokens = [value for key, value in parse_qsl(target.query, keep_blank_values=True) if key == "token"]
            if len(tokens) != 1 or not self._token_ok(tokens[0]):
                logger.warning("refused %s on %s: missing or wrong token (HTTP 403)", remote, AIP_PATH)
                await request.reject(403, body=_REJECT_FORBIDDEN)
                _hang_up()
                return
            ws = await request.accept()
        except _PEER_GONE:
            logger.debug("%s went away during the handshake", remote)
            return
        except Exception:
            logger.exception("internal error during the handshake with %s", remote)
            return
        logger.debug("accepted %s on %s", remote, AIP_PATH)
        try:
            await handle_connection(self._ctx, ws, remote)
        except Exception:
            logger.exception("internal error on the connection from %s", remote)

    def _listening(self, ws_server: trio_websocket.WebSocketServer, *, tls: bool) -> None:
        endpoint = ws_server.listeners[0]
        self.port = endpoint.port if isinstance(endpoint, trio_websocket.Endpoint) else 0
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'wss' if tls else 'ws'}://{host}:{self.port}{AIP_PATH}"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class _ContainedConnections:
    """Where trio-websocket starts each connection's task: one connection's failure never stops the server.

    Our handler catches everything a peer can cause in our code, but trio-websocket runs its own reader task
    beside it, and that task can fail too: it answers a ping, or refuses an oversized message, even after a close
    frame went out, and wsproto's refusal escapes (python-trio/trio-websocket#184). In a plain nursery that
    exception would tear down every connection and the listener with them. Each task also runs in a cancel scope
    of its own, so that a refused handshake can end it (:func:`_hang_up`).
    """

    __slots__ = ("_handshake_deadline", "_nursery")

    def __init__(self, nursery: trio.Nursery, handshake_deadline: float) -> None:
        self._nursery = nursery
        self._handshake_deadline = handshake_deadline

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        self._nursery.start_soon(_contained, self._handshake_deadline, fn, *args)


#: The cancel scope of the connection task being served, for :func:`_hang_up`.
_CONNECTION: ContextVar[trio.CancelScope] = ContextVar("galaxy_trio_aip_connection")


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
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            cause = exc.__cause__ or exc
            logger.info("TLS handshake failed: %s: %s", type(cause).__name__, shown(str(cause)))
    await trio.aclose_forcefully(stream)
    return False


def _hang_up() -> None:
    """End the current connection's task, which closes its socket.

    After a refused handshake, trio-websocket keeps the socket open (and a task reading it) until the peer closes
    it: without this, peers without a token could hold as many server sockets as they like.
    """
    connection = _CONNECTION.get(None)
    if connection is not None:
        connection.cancel()


async def serve_aip(
    *,
    host: str = "127.0.0.1",
    port: int = 5005,
    token: str,
    driver: SessionDriver = default_driver,
    max_frame_size: int = DEFAULT_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    settings: ServerSettings | None = None,
    task_status: trio.TaskStatus[AIPServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve AIP on ``ws://host:port/ws`` (``wss://`` with ``ssl_context``) until cancelled.

    ``token`` is the shared key clients put in ``?token=``; a missing or wrong one gets HTTP 403 at the upgrade.
    ``port=0`` picks a free port (read it from the returned :class:`AIPServer`). ``max_frame_size`` bounds one
    incoming frame (a bigger one closes the connection with 1009). ``driver`` runs each task session; see
    :mod:`galaxy_trio.server.sessions`. ``settings`` holds the server's deadlines and limits.
    """
    if not token:
        raise ValueError("serve_aip needs a non-empty token")
    if max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
    settings = settings if settings is not None else ServerSettings()
    server = AIPServer(host=host, token=token, driver=driver, settings=settings)
    # Connection tasks live in a nursery of their own, which outlives the listener inside it.
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as nursery:
            ws_server: trio_websocket.WebSocketServer = await nursery.start(
                partial(
                    trio_websocket.serve_websocket,
                    server._handle_request,
                    host,
                    port,
                    ssl_context,
                    # trio.serve_listeners takes any object with start_soon as its handler nursery.
                    handler_nursery=cast(trio.Nursery, _ContainedConnections(connections, settings.handshake_deadline)),
                    max_message_size=max_frame_size,
                    connect_timeout=settings.handshake_deadline,
                    disconnect_timeout=CLOSE_GRACE,
                )
            )
            server._listening(ws_server, tls=ssl_context is not None)
            logger.info("AIP server listening on %s", server.url)
            task_status.started(server)
    raise RuntimeError("the WebSocket server stopped serving")  # serve_websocket only ends by cancellation
