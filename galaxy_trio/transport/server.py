"""The server's side of links: :func:`serve_links` accepts WebSocket upgrades, :class:`ServerLink` carries AIP.

Each connection is one trio task: TLS first (with an SSL context), then the upgrade request is read and judged
here, without an HTTP library (:func:`check_upgrade_request`); an invalid upgrade is answered by this module (400,
or 426 for another WebSocket version, as wsproto's handshake did; 405 for another method, where it said 400) and
never reaches the caller. A valid one reaches the caller's handler as a :class:`LinkRequest` (target, peer),
which it accepts (a :class:`ServerLink`, the same wsproto core as the client's links: :class:`._wslink.WsLink`)
or rejects with an HTTP status, after which the socket is closed at once.

The server works on at most ``max_concurrent_handshakes`` upgrades at once (:class:`_HandshakeTurn`): a storm of
thousands of connections arriving, or timing out, at the same instant would otherwise put thousands of TLS
handshakes, request parses and 101s, each ~0.3-3 ms, into one pass of trio's scheduler, and every other client's
frames would wait behind them (issue #15 item 3: a bystander's heartbeat p99 reached 0.4-0.6 s). A connection
holds a turn only while the server works on it, never while it waits for its peer, so silent or slow peers cost
no turn and cannot starve the others; ``handshake_deadline`` counts all the while, turn or no turn. The other end
of a connection's life is paced the same way: its links share one :class:`._pacing.PassTurnstile`, so the server
handles at most ``closes_per_pass`` of the closes its peers start in one scheduler pass (5,000 closing at once
otherwise held every other client for 1.3 s).

Until issue #16 this side ran on trio-websocket (h11 for the upgrade, a reader task and a channel per
connection): ~1.7 ms of server CPU per constellation registration. Every failure the peer or the network can
cause surfaces as a :class:`~galaxy_trio.errors.LinkError`, mapped by table (:mod:`._errors`).
"""

from __future__ import annotations

import base64
import binascii
import errno
import http
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, NamedTuple, NoReturn

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from ._errors import STREAM_ERRORS, ErrorTable, link_closed, map_exceptions
from ._link import DEFAULT_MAX_FRAME
from ._pacing import PassTurnstile
from ._wslink import RECEIVE_BYTES, WsLink

__all__ = [
    "LinkHandler",
    "LinkRequest",
    "ServerLink",
    "UpgradeRefused",
    "UpgradeRequest",
    "check_upgrade_request",
    "serve_links",
]

logger = logging.getLogger("galaxy_trio.transport")

#: How many upgrades the server works on at once, by default (see the module docstring). A plain upgrade is a few
#: hundred microseconds of the server's time and a TLS one a few milliseconds: at 8, a storm adds no more than
#: ~10-25 ms to one scheduler pass, and a queue of upgrades still drains at hundreds a second.
DEFAULT_MAX_CONCURRENT_HANDSHAKES: Final = 8

#: How many closes its peers started the server handles per pass of trio's scheduler, by default (:mod:`._pacing`).
#: One close is a few hundred microseconds of the server's time: at 16, a storm of closes adds no more than a few
#: milliseconds to one pass, and thousands of closes still drain in a second or two.
DEFAULT_CLOSES_PER_PASS: Final = 16

#: The longest request head (request line and headers) accepted; h11's default bound is the same.
MAX_REQUEST_HEAD: Final = 16 * 1024

_REQUEST_LINE: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_WEBSOCKET_VERSION: Final = b"13"

#: Writing a response or reading a request: a peer that went away is a closed link.
_IO: Final[ErrorTable] = {STREAM_ERRORS: link_closed}


class ServerLink(WsLink):
    """An accepted WebSocket (the shared core, :class:`._wslink.WsLink`). Made by :meth:`LinkRequest.accept`.

    :meth:`ping` waits for the pong, which the task that receives sees (the server's single reader per
    connection reads all the time the connection is open); the server's keepalive uses :meth:`send_ping` and
    ``heard_at`` instead, and waits for nothing.
    """

    __slots__ = ()


# --- the upgrade request, judged without I/O --------------------------------------------------------------------


class UpgradeRequest(NamedTuple):
    """A valid WebSocket upgrade: its request target (path and query) and its ``Sec-WebSocket-Key``."""

    target: str
    key: bytes


class UpgradeRefused(NamedTuple):
    """An invalid upgrade: the HTTP status to answer, why (the response body), and headers to add."""

    status: int
    why: str
    headers: tuple[tuple[str, str], ...] = ()


def _refused(why: str, status: int = 400, headers: tuple[tuple[str, str], ...] = ()) -> UpgradeRefused:
    return UpgradeRefused(status, why, headers)


def check_upgrade_request(head: bytes) -> UpgradeRequest | UpgradeRefused:
    """Judge an upgrade request's head (up to, not including, the blank line) as RFC 6455 §4.2.1 asks.

    The refusals are wsproto's handshake's: 400 for a malformed request or a missing or wrong ``Host``,
    ``Upgrade``, ``Connection`` or ``Sec-WebSocket-Key``; 426 (with ``Sec-WebSocket-Version: 13``) for another
    WebSocket version; but 405 (with ``Allow: GET``) for a method other than GET, where wsproto said 400.
    Extensions and subprotocols offered are declined (none is supported), as the RFC allows.
    """
    request_line, *lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        return _refused("malformed request line")
    method, target, major, minor = match.groups()
    if (major, minor) != (b"1", b"1"):
        return _refused("a WebSocket upgrade needs HTTP/1.1")
    if method != b"GET":
        return _refused("a WebSocket upgrade is a GET", 405, (("Allow", "GET"),))
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return _refused("malformed header line")
        name = name.lower()
        value = value.strip(b" \t")
        headers[name] = headers[name] + b", " + value if name in headers else value
    if (b"content-length" in headers and headers[b"content-length"] != b"0") or b"transfer-encoding" in headers:
        return _refused("an upgrade request has no body")
    if not headers.get(b"host"):
        return _refused("missing header 'Host'")
    if b"upgrade" not in (token.strip().lower() for token in headers.get(b"connection", b"").split(b",")):
        return _refused("missing header 'Connection: Upgrade'")
    version = headers.get(b"sec-websocket-version")
    if version != _WEBSOCKET_VERSION:
        why = "missing header 'Sec-WebSocket-Version'" if version is None else "unsupported WebSocket version"
        return _refused(why, 400 if version is None else 426, (("Sec-WebSocket-Version", "13"),))
    key = headers.get(b"sec-websocket-key")
    if key is None or not _valid_key(key):
        return _refused("missing or malformed header 'Sec-WebSocket-Key'")
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return _refused("missing header 'Upgrade: websocket'")
    return UpgradeRequest(target.decode("ascii"), key)


def _valid_key(key: bytes) -> bool:
    """A ``Sec-WebSocket-Key`` is 16 random bytes in base64 (24 characters)."""
    try:
        return len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def switching_protocols(key: bytes) -> bytes:
    """The 101 response accepting ``key`` (no extension, no subprotocol)."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
        + generate_accept_token(key)
        + b"\r\n\r\n"
    )


def error_response(status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An HTTP error response with a plain-text body; the server hangs up after it (``Connection: close``)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode("latin-1") + body


# --- one connection ---------------------------------------------------------------------------------------------


class _HandshakeTurn(trio.abc.Stream):
    """One connection's socket as its upgrade sees it, taking a turn of the server's handshake work.

    Each read first waits, without a turn, until the peer has sent something, then waits for a turn (one of
    ``max_concurrent_handshakes``, first come first served) and keeps it while the server works: parsing, TLS,
    the handler's verdict, the answer. So at most that many upgrades run in one scheduler pass however many
    connections arrive together, and a peer that sends nothing, or a byte at a time, holds no turn while it
    dawdles. :meth:`finish` gives the turn back for good once the upgrade is answered, and hands the TLS layer
    (``tls``, which read through this) the socket itself, so a link reads and writes exactly as it did before.
    """

    __slots__ = ("_holding", "_turns", "_upgrading", "stream", "tls")

    def __init__(self, stream: trio.SocketStream, turns: trio.CapacityLimiter) -> None:
        self.stream = stream
        self._turns = turns
        self._holding = False
        self._upgrading = True
        #: The TLS layer over this, if any: it reads through this during the upgrade only.
        self.tls: trio.SSLStream[trio.abc.Stream] | None = None

    async def take(self) -> None:
        """Wait for the peer's bytes, then for a turn (giving back the one held meanwhile)."""
        self._give_back()
        await trio.lowlevel.wait_readable(self.stream.socket)
        await self._turns.acquire_on_behalf_of(self)  # once acquired, no Cancelled: it checkpoints shielded
        self._holding = True

    def _give_back(self) -> None:
        if self._holding:
            self._holding = False
            self._turns.release_on_behalf_of(self)

    def finish(self) -> None:
        """The upgrade is over (answered, refused or failed): give the turn back, and the socket to the TLS layer.

        Called by the connection's own task between two I/O calls, so the TLS layer has none in flight.
        """
        self._upgrading = False
        self._give_back()
        if self.tls is not None and self.tls.transport_stream is self:
            self.tls.transport_stream = self.stream  # (trio's own SSLStream.unwrap reassigns it too)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._upgrading:
            await self.take()
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self.finish()
        await self.stream.aclose()


class LinkRequest:
    """An HTTP upgrade waiting for an answer: :meth:`accept` it, or :meth:`reject` it with an HTTP status."""

    __slots__ = (
        "_answered",
        "_close_turnstile",
        "_key",
        "_leftover",
        "_max_message_size",
        "_stream",
        "_turn",
        "remote",
        "target",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        upgrade: UpgradeRequest,
        leftover: bytes,
        remote: str,
        max_message_size: int,
        turn: _HandshakeTurn,
        close_turnstile: PassTurnstile | None = None,
    ) -> None:
        self._stream = stream
        self._turn = turn
        self._close_turnstile = close_turnstile
        self._key = upgrade.key
        self._leftover = leftover
        self._max_message_size = max_message_size
        self._answered = False
        #: The request target as sent: path and query (which may hold a token: never log it whole).
        self.target = upgrade.target
        #: The peer's address (``host:port``), for logs.
        self.remote = remote

    def _answer(self) -> None:
        if self._answered:
            raise RuntimeError("this upgrade request was already answered")
        self._answered = True

    async def accept(self) -> ServerLink:
        """Switch protocols. Raises :class:`LinkClosed` if the peer went away meanwhile."""
        self._answer()
        try:
            with map_exceptions(_IO):
                await self._stream.send_all(switching_protocols(self._key))
        finally:
            self._turn.finish()  # the upgrade is over: what follows is the handler's
        # Bytes the peer sent after its request (it should wait for the 101, but may not) are WebSocket bytes.
        ws = Connection(ConnectionType.SERVER, trailing_data=self._leftover)
        return ServerLink(self._stream, ws, self._max_message_size, close_turnstile=self._close_turnstile)

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP error, then hang up. Raises :class:`LinkClosed` if the peer went away meanwhile.

        The socket is closed at once: peers without a token cannot hold server sockets open.
        """
        self._answer()
        try:
            with map_exceptions(_IO):
                await self._stream.send_all(error_response(status, body))
        finally:
            self._turn.finish()
            await trio.aclose_forcefully(self._stream)


#: What :func:`serve_links` calls for each upgrade; the connection ends when it returns.
LinkHandler = Callable[[LinkRequest], Awaitable[None]]


def _remote(stream: trio.abc.Stream) -> str:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return "?"
    try:
        address = transport.socket.getpeername()
    except OSError:
        return "?"
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


async def _read_request(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The request head (without its blank line) and what came after it; None if the peer hung up first.

    Raises :class:`_HeadTooLarge` past :data:`MAX_REQUEST_HEAD` bytes.
    """
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_REQUEST_HEAD:
            raise _HeadTooLarge
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        received += data
    return bytes(received[:end]), bytes(received[end + 4 :])


class _HeadTooLarge(Exception):
    """The peer sent more than :data:`MAX_REQUEST_HEAD` bytes without ending its request head."""


async def _upgrade(
    stream: trio.abc.Stream,
    turn: _HandshakeTurn,
    max_message_size: int,
    remote: str,
    deadline: float,
    close_turnstile: PassTurnstile,
) -> LinkRequest | None:
    """Read and judge the upgrade request on ``stream`` within ``deadline``, taking ``turn``; a LinkRequest for
    the handler, or None when the request was refused here (answered) or the peer hung up or was too slow (socket
    to be closed). A plain ``stream`` is read through ``turn``; a TLS one already reads through it."""
    with trio.move_on_after(deadline):
        leftover = b""
        try:
            read = await _read_request(turn if stream is turn.stream else stream)
        except _HeadTooLarge:
            verdict: UpgradeRequest | UpgradeRefused = _refused(f"request head over {MAX_REQUEST_HEAD} bytes", 431)
        except STREAM_ERRORS:
            return None
        else:
            if read is None:
                return None
            verdict, leftover = check_upgrade_request(read[0]), read[1]
        if isinstance(verdict, UpgradeRequest):
            return LinkRequest(stream, verdict, leftover, remote, max_message_size, turn, close_turnstile)
        logger.info("refused an upgrade from %s: %s (HTTP %d)", remote, verdict.why, verdict.status)
        try:
            await stream.send_all(error_response(verdict.status, verdict.why.encode() + b"\n", verdict.headers))
        except STREAM_ERRORS:
            pass
        return None
    logger.info("%s sent no complete upgrade request within %g s; closing", remote, deadline)
    return None


async def _tls_handshake(stream: trio.SSLStream[trio.abc.Stream], deadline: float) -> bool:
    """Finish the TLS handshake before reading the upgrade; False if it fails or takes longer than ``deadline``.

    A plain ``ws://`` client or one that refuses the certificate is then dropped at once, not at the handshake
    deadline.
    """
    with trio.move_on_after(deadline):
        try:
            await stream.do_handshake()
            return True
        except STREAM_ERRORS as exc:
            cause = exc.__cause__ or exc
            logger.info("TLS handshake failed: %s: %s", type(cause).__name__, str(cause)[:200])
            return False
    logger.info("TLS handshake not finished within %g s; closing", deadline)
    return False


async def _serve_connection(
    handler: LinkHandler,
    ssl_context: ssl.SSLContext | None,
    max_message_size: int,
    handshake_deadline: float,
    turns: trio.CapacityLimiter,
    close_turnstile: PassTurnstile,
    stream: trio.SocketStream,
) -> None:
    """One connection, from TCP accept to close. Nothing it raises (but Cancelled) reaches the listener, not even
    an error raised alongside a Cancelled in one exception group.

    The upgrade reads through a :class:`_HandshakeTurn`; the link then reads its socket directly (a TLS link
    through its SSLStream, whose transport the finished turn set back to the socket).
    """
    remote = _remote(stream)
    turn = _HandshakeTurn(stream, turns)
    link_stream: trio.abc.Stream = stream
    try:
        if ssl_context is not None:
            tls: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(
                turn, ssl_context, server_side=True, https_compatible=True
            )
            turn.tls = link_stream = tls
            if not await _tls_handshake(tls, handshake_deadline):
                return
        request = await _upgrade(link_stream, turn, max_message_size, remote, handshake_deadline, close_turnstile)
        if request is not None:
            await handler(request)
    except* Exception as failed:
        # Cancelled is not an Exception: a shutdown's Cancelled goes on, and an error that met it in one group
        # (a handler's task failing as the server is cancelled) stays here rather than escape serve_links.
        reasons = ", ".join(map(repr, failed.exceptions))
        logger.warning("a connection from %s failed in the transport and was dropped: %s", remote, reasons)
    finally:
        turn.finish()
        if link_stream is stream:
            stream.socket.close()  # (a no-op once the link dropped it; no cancel scope for a plain socket)
        else:
            await trio.aclose_forcefully(link_stream)


#: accept() errors that mean "out of descriptors or memory for now": wait and accept again, as trio.serve_listeners.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    code for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS") if (code := getattr(errno, name, None)) is not None
)
_ACCEPT_RETRY_S: Final = 0.1


async def _accept_loop(
    listener: trio.SocketListener, connections: trio.Nursery, serve: Callable[[trio.SocketStream], Awaitable[None]]
) -> NoReturn:
    """trio.serve_listeners' loop without its per-connection wrapper (whose ``aclose_forcefully`` costs a
    cancelled cancel scope per connection): each connection task closes its own socket."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error("accept failed (%s); accepting again in %g s", exc.strerror, _ACCEPT_RETRY_S)
                await trio.sleep(_ACCEPT_RETRY_S)
            else:
                connections.start_soon(serve, stream)


async def serve_links(
    handler: LinkHandler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
    handshake_deadline: float,
    max_concurrent_handshakes: int = DEFAULT_MAX_CONCURRENT_HANDSHAKES,
    closes_per_pass: int = DEFAULT_CLOSES_PER_PASS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket upgrades on ``host:port`` until cancelled; ``nursery.start`` returns the bound port.

    Each upgrade (TLS first, with ``ssl_context``) must arrive within ``handshake_deadline`` seconds; ``handler``
    then runs with its :class:`LinkRequest`. The server works on at most ``max_concurrent_handshakes`` upgrades
    at once, from the peer's first bytes to the handler's answer (module docstring); the others wait their turn,
    their deadline running. Of the closes its peers start (a close frame, or the socket closed), the server handles
    at most ``closes_per_pass`` in one scheduler pass (:mod:`._pacing`), so that a storm of closes does not stop
    every other link for seconds. ``max_message_size`` bounds one incoming message (a bigger one
    closes the link with 1009). One connection's failure never stops the others or the listener.
    """
    close_turnstile = PassTurnstile(closes_per_pass)  # (raises on a bound under 1, before anything listens)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    turns = trio.CapacityLimiter(max_concurrent_handshakes)
    serve = partial(
        _serve_connection, handler, ssl_context, max_message_size, handshake_deadline, turns, close_turnstile
    )
    # Connection tasks live in a nursery of their own, which outlives the listeners inside it.
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, connections, serve)
            task_status.started(bound)
    raise RuntimeError("the WebSocket server stopped serving")  # the accept loops only end by cancellation
