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

import math
import select
import ssl
from types import TracebackType
from typing import Final, NamedTuple
from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..aip import ClientMessage, ServerMessage, encode_text
from ..errors import BinaryFrame, ConnectFailed, HandshakeRejected, LinkClosed
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, DEFAULT_MAX_FRAME

__all__ = ["ClientLink", "open_link"]

#: Bytes asked of the socket per read. AIP frames are mostly under 1 KiB; a list_tools result is a few KiB.
RECEIVE_BYTES: Final = 16 * 1024

#: A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5).
_MAX_CLOSE_REASON: Final = 123

_STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Target(NamedTuple):
    host: str
    port: int
    secure: bool
    host_header: str
    resource: str


def _parse(url: str) -> _Target:
    """Split a ``ws://`` or ``wss://`` URL. Errors never quote the URL: its query may hold a token."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectFailed(f"invalid WebSocket URL: {exc}") from None
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
    return _Target(host, port, secure, host_header, resource)


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    error = cause if isinstance(exc, trio.BrokenResourceError) and cause is not None else exc
    return f"{type(error).__name__}: {error}"


class ClientLink:
    """An open client WebSocket; see the module docstring. Made by :func:`open_link`."""

    __slots__ = (
        "_close",
        "_dropped",
        "_max_message_size",
        "_parts",
        "_receiving",
        "_send_lock",
        "_size",
        "_stream",
        "_ws",
    )

    def __init__(self, stream: trio.abc.Stream, ws: Connection, max_message_size: int) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message_size = max_message_size
        self._send_lock = trio.Lock()
        #: Why the link is over, once it is (what receive and send raise from then on).
        self._close: LinkClosed | None = None
        self._dropped = False
        self._receiving = False
        #: The fragments of a message being received, and its size so far.
        self._parts: list[str] | None = None
        self._size = 0

    @property
    def closed(self) -> bool:
        return self._close is not None

    def has_unread_data(self) -> bool:
        """Whether the peer's bytes wait in the socket, not yet read (the receiving task has not got to them).

        A liveness check on a busy event loop asks this before calling a silent peer dead: an answer that arrived
        in time but was not yet read is not silence.
        """
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream) or self._dropped or not hasattr(select, "poll"):
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
                    if isinstance(event, TextMessage | BytesMessage) and self._close is None:
                        message = await self._collect(event)
                        if message is not None:
                            return message
                    elif isinstance(event, Ping) and self._close is None:
                        await self._send_event(event.response())
                    elif isinstance(event, CloseConnection):
                        await self._on_close(event)
                if self._close is not None:
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
        except _STREAM_ERRORS:
            data = b""
        self._ws.receive_data(data or None)  # None (EOF) becomes a CloseConnection with code 1006

    async def _on_close(self, event: CloseConnection) -> None:
        """The peer closed, broke the protocol (wsproto reports that as a close too) or went away."""
        if self._close is None:
            # Not our close, nor a broken send: acknowledge it (a no-op after an EOF, which wsproto reports as 1006).
            self._close = LinkClosed(event.code, event.reason or None)
            if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                try:
                    await self._send_event(event.response(), closing=True)
                except LinkClosed:
                    pass
        await self._drop()

    async def _fail(self, code: int, reason: str) -> None:
        """End the link from our side because of what the peer sent: a close frame, then hang up."""
        if self._close is None:
            self._close = LinkClosed(code, reason)
            try:
                await self._send_event(CloseConnection(code=code, reason=reason), closing=True)
            except LinkClosed:
                pass
        await self._drop()

    def _closed_error(self) -> LinkClosed:
        assert self._close is not None
        return LinkClosed(self._close.code, self._close.reason)

    async def _send_event(self, event: Event, *, closing: bool = False) -> None:
        """Encode and write one event under the send lock; ``closing`` lets the close frame itself through."""
        async with self._send_lock:
            if self._close is not None and not closing:
                raise self._closed_error()
            # A cancellation seen here has sent nothing; past this point, one can cut a frame in half.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = self._ws.send(event)
            except LocalProtocolError:  # our close already went out, or the connection is over
                raise LinkClosed() from None
            try:
                await self._stream.send_all(data)
            except _STREAM_ERRORS:
                if self._close is None:
                    self._close = LinkClosed()
                raise LinkClosed() from None
            except trio.Cancelled:
                # Cancelled part-way through a frame: nothing more may be written on this stream, not even a close.
                self._close = LinkClosed(None, "a send was interrupted")
                raise

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation.

        The peer's answer is awaited only when no other task is receiving (that task sees it instead) and the
        caller is not cancelled; when it is, the close frame is sent and the socket dropped after
        :data:`CANCELLED_CLOSE_GRACE`.
        """
        if self._dropped:
            return
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, shield=True):
            if self._close is None and self._ws.state is ConnectionState.OPEN:
                self._close = LinkClosed(code, reason)  # what receive and send report from now on
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
        if self._dropped:
            return
        self._dropped = True
        with trio.move_on_after(CANCELLED_CLOSE_GRACE, shield=True):
            try:
                await self._stream.aclose()
            except _STREAM_ERRORS:
                pass
        if self._close is None:
            self._close = LinkClosed()


def _clip(reason: str | None) -> str | None:
    if reason is None:
        return None
    encoded = reason.encode()
    if len(encoded) <= _MAX_CLOSE_REASON:
        return reason
    return encoded[: _MAX_CLOSE_REASON - 3].decode(errors="ignore") + "..."


async def _upgrade(stream: trio.abc.Stream, target: _Target) -> Connection:
    """Send the HTTP upgrade and read the answer; the WebSocket protocol state once the server switched."""
    handshake = H11Handshake(ConnectionType.CLIENT)
    await stream.send_all(handshake.send(Request(host=target.host_header, target=target.resource)))
    while True:
        data = bytes(await stream.receive_some(RECEIVE_BYTES))
        if not data:
            raise ConnectFailed("the server closed the connection during the WebSocket handshake")
        try:
            handshake.receive_data(data)
        except RemoteProtocolError as exc:
            raise ConnectFailed(f"WebSocket handshake failed (invalid response: {exc})") from None
        for event in handshake.events():
            if isinstance(event, AcceptConnection):
                connection = handshake.connection
                assert connection is not None
                return connection
            if isinstance(event, RejectConnection):
                raise HandshakeRejected(event.status_code)


async def connect_link(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
) -> ClientLink:
    """Open a client link; the caller closes it. Prefer :func:`open_link`, which does."""
    target = _parse(url)
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ConnectFailed(f"connection failed ({type(exc).__name__}: {exc})") from None
    try:
        if target.secure:
            tls = trio.SSLStream(
                stream, ssl_context or ssl.create_default_context(), server_hostname=target.host, https_compatible=True
            )
            stream = tls
            try:
                await tls.do_handshake()
            except _STREAM_ERRORS as exc:
                raise ConnectFailed(f"TLS handshake failed ({_describe(exc)})") from None
        try:
            ws = await _upgrade(stream, target)
        except _STREAM_ERRORS as exc:
            raise ConnectFailed(f"connection failed during the WebSocket handshake ({_describe(exc)})") from None
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
