"""The client side of a link (manager and agent): the TCP connection, the HTTP upgrade, then the shared core.

The link itself is :class:`._wslink.WsLink` (wsproto directly, no task of its own; the server's links are the same
core). What is client-only lives here: an IP-literal host is connected with a single ``connect`` (no resolver, no
happy-eyeballs nursery and task per attempt: that machinery was ~15 % of the manager's CPU per device); the
upgrade request is built once per URL and the 101 judged without an HTTP library (:func:`check_upgrade_response`).
trio-websocket's client never noticed a server that hung up, or a TLS handshake that failed, before the upgrade;
here the caller learns it at once, with its cause.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import re
import socket
import ssl
from types import TracebackType
from typing import Final, NamedTuple
from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from ..errors import ConnectFailed, HandshakeRejected
from ._errors import STREAM_ERRORS, ErrorTable, describe, map_exceptions
from ._link import DEFAULT_MAX_FRAME
from ._wslink import RECEIVE_BYTES, LinkState, WsLink

__all__ = ["ClientLink", "LinkState", "open_link"]

#: The longest response head (status line and headers) accepted for the upgrade.
_MAX_RESPONSE_HEAD: Final = 16 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 ([0-9]{3})(?: [^\r\n]*)?")
#: What the request target and Host header may hold (HTTP's visible ASCII): nothing that could split the request.
_VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")

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


class ClientLink(WsLink):
    """An open client WebSocket (the shared core, :class:`._wslink.WsLink`). Made by :func:`open_link`."""

    __slots__ = ()


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
        stream: trio.abc.Stream = await _open_tcp(target.host, target.port)
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


@functools.lru_cache(maxsize=1024)
def _ip_family(host: str) -> int | None:
    """The address family of an IP-literal host (``127.0.0.1``, ``::1``), or None for a name to resolve."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to ``host:port``: one ``connect`` for an IP literal, trio's resolver and happy eyeballs
    for a name. Raises OSError (the caller maps it) when the connection fails."""
    family = _ip_family(host)
    if family is None:
        return await trio.open_tcp_stream(host, port)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


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
