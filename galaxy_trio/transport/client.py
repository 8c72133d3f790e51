"""The client side of a link (manager and agent): a WebSocket client on wsproto, with no task of its own.

Why not trio-websocket's client, which the server side still uses: it runs a reader task per connection that
feeds a channel, which our own reader then drains, so every frame costs two task switches and an idle link holds
two waiting tasks, a nursery, a channel and the HTTP handshake's state (~16 KiB for a manager holding thousands of
idle links). It also never noticed a server that hung up, or a TLS handshake that failed, before the upgrade: the
caller found out only at its own deadline.

Here the task that calls :meth:`ClientLink.receive` reads the socket itself, feeds wsproto, and answers pings and
the peer's closing handshake as it meets them; the HTTP machinery is dropped once the upgrade is done. Sends from
any task are serialised by one lock, so frames never interleave and nothing follows a close frame.
"""

from __future__ import annotations

import base64
import enum
import functools
import math
import os
import re
import select
import ssl
from types import TracebackType
from typing import Final, NamedTuple
from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, generate_accept_token

from ..aip import ClientMessage, ServerMessage, encode_text
from ..aip.close_codes import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL
from ..errors import BinaryFrame, ConnectFailed, HandshakeRejected, LinkClosed
from ._errors import STREAM_ERRORS, ErrorTable, describe, link_closed, map_exceptions
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, DEFAULT_MAX_FRAME

__all__ = ["ClientLink", "LinkState", "open_link"]

#: Bytes asked of the socket per read. AIP frames are mostly under 1 KiB; a list_tools result is a few KiB.
RECEIVE_BYTES: Final = 16 * 1024

#: The longest response head (status line and headers) accepted for the upgrade.
_MAX_RESPONSE_HEAD: Final = 16 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: [^\r\n]*)?")
#: What the request target and Host header may hold (HTTP's visible ASCII): nothing that could split the request.
_VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")

#: A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5).
_MAX_CLOSE_REASON: Final = 123

#: The error tables of this module's I/O edges (see :mod:`._errors`). No message quotes the URL: it may hold a token.
_BAD_URL: Final[ErrorTable] = {ValueError: lambda exc: ConnectFailed(f"invalid WebSocket URL: {exc}")}


def _tcp_failed(exc: Exception, where: str) -> ConnectFailed:
    """A refused connection says so: trio's own text is "all attempts to connect to H:P failed"."""
    attempts = exc.__cause__.exceptions if isinstance(exc.__cause__, BaseExceptionGroup) else (exc,)
    if all(isinstance(attempt, ConnectionRefusedError) for attempt in attempts):
        return ConnectFailed(f"connection refused by {where}")
    return ConnectFailed(f"connection failed ({describe(exc)})")


_TLS_HANDSHAKE: Final[ErrorTable] = {
    STREAM_ERRORS: lambda exc: ConnectFailed(f"TLS handshake failed ({describe(exc)})"),
}
_UPGRADE: Final[ErrorTable] = {
    STREAM_ERRORS: lambda exc: ConnectFailed(f"connection failed during the WebSocket handshake ({describe(exc)})"),
}
#: wsproto refuses to encode once our close went out or the connection is over; a write fails when the peer left.
_SEND: Final[ErrorTable] = {LocalProtocolError: link_closed, STREAM_ERRORS: link_closed}


class _Target(NamedTuple):
    host: str
    port: int
    secure: bool
    host_header: str
    resource: str


def _parse(url: str) -> _Target:
    """Split a ``ws://`` or ``wss://`` URL. Errors never quote the URL: its query may hold a token."""
    with map_exceptions(_BAD_URL, keep_cause=False):  # the URL's token stays out of every traceback
        parts = urlsplit(url)
        port = parts.port
    if parts.scheme not in ("ws", "wss"):
        raise ConnectFailed(f"invalid WebSocket URL: the scheme must be ws or wss, not {parts.scheme[:16]!r}")
    host = parts.hostname
    if not host:
        raise ConnectFailed("invalid WebSocket URL: no host")
    secure = parts.scheme == "wss"
    default_port = 443 if secure else 80
    if port is None:
        port = default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _VISIBLE_ASCII.fullmatch(resource) or not _VISIBLE_ASCII.fullmatch(host_header):
        raise ConnectFailed("invalid WebSocket URL: a space, control or non-ASCII character in the host, path or query")
    return _Target(host, port, secure, host_header, resource)


class LinkState(enum.Enum):
    """A client link's close state: one value instead of "why it closed" and "socket dropped" kept apart."""

    #: Frames flow both ways.
    OPEN = "open"
    #: Why the link ends is known (a close frame sent or received, a broken or interrupted send); the socket is
    #: still open, for the closing handshake.
    CLOSING = "closing"
    #: The socket is closed.
    DROPPED = "dropped"


class ClientLink:
    """An open client WebSocket; see the module docstring. Made by :func:`open_link`."""

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_max_message_size",
        "_parts",
        "_receiving",
        "_send_lock",
        "_size",
        "_state",
        "_stream",
        "_ws",
    )

    def __init__(self, stream: trio.abc.Stream, ws: Connection, max_message_size: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message_size = max_message_size
        self._send_lock = trio.Lock()
        self._state = LinkState.OPEN
        #: Why the link is over, once it is not OPEN (what receive and send raise from then on).
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._receiving = False
        #: The fragments of a message being received, and its size so far.
        self._parts: list[str] | None = None
        self._size = 0

    @property
    def closed(self) -> bool:
        return self._state is not LinkState.OPEN

    @property
    def state(self) -> LinkState:
        """Where the link is in its life: open, ending (the socket still open) or dropped."""
        return self._state

    def _end(self, code: int | None, reason: str | None) -> bool:
        """Record why the link ends, if it is still open; whether it was (so the caller goes on to close it)."""
        if self._state is not LinkState.OPEN:
            return False
        self._state = LinkState.CLOSING
        self._close_code, self._close_reason = code, reason
        return True

    def has_unread_data(self) -> bool:
        """Whether the peer's bytes wait in the socket, not yet read (the receiving task has not got to them).

        A liveness check on a busy event loop asks this before calling a silent peer dead: an answer that arrived
        in time but was not yet read is not silence.
        """
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream) or self._state is LinkState.DROPPED or not hasattr(select, "poll"):
            return False  # (no poll() on Windows: the check then never spares a link, as before it existed)
        poller = select.poll()
        try:
            poller.register(stream.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        """Send one message as a text frame. Raises :class:`LinkClosed` if the link is gone."""
        await self.send_text(encode_text(message))

    async def send_text(self, text: str) -> None:
        await self._send_event(TextMessage(data=text))

    async def receive(self) -> str:
        """The next text frame. Raises :class:`LinkClosed` when the link ends, :class:`BinaryFrame` on binary.

        Pings are answered and the peer's close is acknowledged here, by the receiving task, as they arrive.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this link")
        self._receiving = True
        try:
            while True:
                for event in self._ws.events():
                    # Once the link is over (an oversized message, our close), what follows is not delivered.
                    if isinstance(event, TextMessage | BytesMessage) and self._state is LinkState.OPEN:
                        message = await self._collect(event)
                        if message is not None:
                            return message
                    elif isinstance(event, Ping) and self._state is LinkState.OPEN:
                        await self._send_event(event.response())
                    elif isinstance(event, CloseConnection):
                        await self._on_close(event)
                if self._state is not LinkState.OPEN:
                    raise self._closed_error()
                await self._read()
        finally:
            self._receiving = False

    async def _collect(self, event: TextMessage | BytesMessage) -> str | None:
        """Add a message fragment; the whole text once it is complete. Bounded by ``max_message_size``."""
        self._size += len(event.data)
        if self._size > self._max_message_size:
            self._size, self._parts = 0, None
            await self._fail(CLOSE_MESSAGE_TOO_BIG, f"message larger than {self._max_message_size} bytes")
            raise self._closed_error()
        if isinstance(event, BytesMessage):
            if event.message_finished:
                size, self._size, self._parts = self._size, 0, None
                raise BinaryFrame(size)
            return None  # a binary message is only counted, never kept
        if not event.message_finished:
            if self._parts is None:
                self._parts = []
            self._parts.append(event.data)
            return None
        parts, self._parts, self._size = self._parts, None, 0
        if parts is None:
            return event.data
        parts.append(event.data)
        return "".join(parts)

    async def _read(self) -> None:
        try:
            data = bytes(await self._stream.receive_some(RECEIVE_BYTES))
        except STREAM_ERRORS:
            data = b""
        self._ws.receive_data(data or None)  # None (EOF) becomes a CloseConnection with code 1006

    async def _on_close(self, event: CloseConnection) -> None:
        """The peer closed, broke the protocol (wsproto reports that as a close too) or went away."""
        if self._end(event.code, event.reason or None):
            # Not our close, nor a broken send: acknowledge it (a no-op after an EOF, which wsproto reports as 1006).
            if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                try:
                    await self._send_event(event.response(), closing=True)
                except LinkClosed:
                    pass
        await self._drop()

    async def _fail(self, code: int, reason: str) -> None:
        """End the link from our side because of what the peer sent: a close frame, then hang up."""
        if self._end(code, reason):
            try:
                await self._send_event(CloseConnection(code=code, reason=reason), closing=True)
            except LinkClosed:
                pass
        await self._drop()

    def _closed_error(self) -> LinkClosed:
        return LinkClosed(self._close_code, self._close_reason)

    async def _send_event(self, event: Event, *, closing: bool = False) -> None:
        """Encode and write one event under the send lock; ``closing`` lets the close frame itself through."""
        async with self._send_lock:
            if self._state is not LinkState.OPEN and not closing:
                raise self._closed_error()
            # A cancellation seen here has sent nothing; past this point, one can cut a frame in half.
            await trio.lowlevel.checkpoint_if_cancelled()
            with map_exceptions(_SEND):
                data = self._ws.send(event)
            try:
                with map_exceptions(_SEND):
                    await self._stream.send_all(data)
            except LinkClosed:
                self._end(None, None)
                raise
            except trio.Cancelled:
                # Cancelled part-way through a frame: nothing more may be written on this stream, not even a close.
                if not self._end(None, "a send was interrupted"):
                    self._close_code, self._close_reason = None, "a send was interrupted"
                raise

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation.

        The peer's answer is awaited only when no other task is receiving (that task sees it instead) and the
        caller is not cancelled; when it is, the close frame is sent and the socket dropped after
        :data:`CANCELLED_CLOSE_GRACE`.
        """
        if self._state is LinkState.DROPPED:
            return
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, shield=True):
            if self._state is LinkState.OPEN and self._ws.state is ConnectionState.OPEN:
                self._end(code, reason)  # what receive and send report from now on
                try:
                    await self._send_event(CloseConnection(code=code, reason=_clip(reason)), closing=True)
                    if not self._receiving and not cancelled:
                        await self._await_peer_close()
                except LinkClosed:
                    pass
        await self._drop()

    async def _await_peer_close(self) -> None:
        while self._ws.state is ConnectionState.LOCAL_CLOSING:
            for _ in self._ws.events():
                pass  # frames the peer sent before it saw our close are of no use any more
            if self._ws.state is not ConnectionState.LOCAL_CLOSING:
                return
            await self._read()

    async def _drop(self) -> None:
        """Close the socket (bounded, shielded); safe to call more than once."""
        if self._state is LinkState.DROPPED:
            return
        self._state = LinkState.DROPPED  # (why stays as recorded; none if the link was still open)
        with trio.move_on_after(CANCELLED_CLOSE_GRACE, shield=True):
            try:
                await self._stream.aclose()
            except STREAM_ERRORS:
                pass


def _clip(reason: str | None) -> str | None:
    if reason is None:
        return None
    encoded = reason.encode()
    if len(encoded) <= _MAX_CLOSE_REASON:
        return reason
    return encoded[: _MAX_CLOSE_REASON - 3].decode(errors="ignore") + "..."


@functools.lru_cache(maxsize=1024)
def _request_parts(host_header: str, resource: str) -> tuple[bytes, bytes]:
    """The upgrade request for one URL, built once: everything before the key and everything after it.

    Byte for byte what wsproto's h11 handshake sends; only ``Sec-WebSocket-Key`` changes per connection.
    """
    head = f"GET {resource} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    return (head + "Sec-WebSocket-Key: ").encode("ascii"), b"\r\nSec-WebSocket-Version: 13\r\n\r\n"


def _invalid(why: str) -> ConnectFailed:
    return ConnectFailed(f"WebSocket handshake failed (invalid response: {why})")


def check_upgrade_response(head: bytes, key: bytes) -> None:
    """Judge the server's answer to the upgrade (its head, up to the blank line) without an HTTP library.

    Raises :class:`HandshakeRejected` for any status but 101, :class:`ConnectFailed` for anything that is not a
    valid WebSocket accept of ``key`` (no extension and no subprotocol, since the request offers none).
    """
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise _invalid("not an HTTP/1.1 status line")
    status = int(match[1])
    if status != 101:
        raise HandshakeRejected(status)
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise _invalid("malformed header line")
        name = name.lower()
        value = value.strip()
        headers[name] = headers[name] + b", " + value if name in headers else value
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        raise _invalid("missing or wrong Upgrade header")
    if b"upgrade" not in (token.strip() for token in headers.get(b"connection", b"").lower().split(b",")):
        raise _invalid("missing or wrong Connection header")
    if headers.get(b"sec-websocket-accept") != generate_accept_token(key):
        raise _invalid("wrong Sec-WebSocket-Accept")
    if b"sec-websocket-extensions" in headers or b"sec-websocket-protocol" in headers:
        raise _invalid("an extension or subprotocol that was not offered")


async def _upgrade(stream: trio.abc.Stream, target: _Target) -> Connection:
    """Send the HTTP upgrade and read the answer; the WebSocket protocol state once the server switched.

    Without h11: the request is built once per URL (:func:`_request_parts`) and the answer is judged by
    :func:`check_upgrade_response`. h11's general HTTP machinery was ~40 % of the manager's CPU per device.
    """
    key = base64.b64encode(os.urandom(16))
    before, after = _request_parts(target.host_header, target.resource)
    await stream.send_all(before + key + after)
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > _MAX_RESPONSE_HEAD:
            raise _invalid(f"no end of the response head within {_MAX_RESPONSE_HEAD} bytes")
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise ConnectFailed("the server closed the connection during the WebSocket handshake")
        received += data
    check_upgrade_response(bytes(received[:end]), key)
    # A frame that came in the same read as the 101 is the WebSocket's first bytes.
    return Connection(ConnectionType.CLIENT, trailing_data=bytes(received[end + 4 :]))


async def connect_link(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
) -> ClientLink:
    """Open a client link; the caller closes it. Prefer :func:`open_link`, which does."""
    target = _parse(url)
    where = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
    with map_exceptions({OSError: functools.partial(_tcp_failed, where=where)}):
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    try:
        if target.secure:
            tls = trio.SSLStream(
                stream, ssl_context or ssl.create_default_context(), server_hostname=target.host, https_compatible=True
            )
            stream = tls
            with map_exceptions(_TLS_HANDSHAKE):
                await tls.do_handshake()
        with map_exceptions(_UPGRADE):
            ws = await _upgrade(stream, target)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
    return ClientLink(stream, ws, max_message_size)


class _OpenLink:
    """The async context manager :func:`open_link` returns (a class: no generator frame kept per link)."""

    __slots__ = ("_link", "_max_message_size", "_ssl_context", "_url")

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None, max_message_size: int) -> None:
        self._url = url
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._link: ClientLink | None = None

    async def __aenter__(self) -> ClientLink:
        self._link = await connect_link(
            self._url, ssl_context=self._ssl_context, max_message_size=self._max_message_size
        )
        return self._link

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._link is not None
        await self._link.aclose()


def open_link(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
) -> _OpenLink:
    """Open a client link to ``url`` (``ws://`` or ``wss://``) and close it on exit: ``async with open_link(…)``.

    The caller's cancel scope bounds the connection and the handshake. Raises :class:`HandshakeRejected` for an
    HTTP error status, :class:`ConnectFailed` for any other failure to connect (refused, reset, closed before the
    upgrade, TLS error, invalid response). The URL (which may hold a token) never appears in an exception.
    """
    return _OpenLink(url, ssl_context, max_message_size)
