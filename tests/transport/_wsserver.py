"""A scripted raw WebSocket server for client-side tests: a trio TCP listener on 127.0.0.1, port 0, whose
connections the test drives byte by byte through a server-side wsproto connection (:class:`Peer`)."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psutil
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import Opcode, XorMaskerSimple

from galaxy_trio.transport import DEFAULT_MAX_FRAME, ClientLink
from galaxy_trio.transport.client import connect_link

TOKEN = "s3cret-t0ken-value"

#: Virtual seconds after which a step that should not wait at all (or wait a known, shorter time) fails.
GUARD = 60.0


def client_sockets(port: int) -> list[Any]:
    """This process's TCP sockets connected to ``port``: the client's ends of links to a test server."""
    return [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]


class Peer:
    """The server's end of one connection, driven by the test (wsproto, server side)."""

    def __init__(self, stream: trio.abc.Stream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.ws = WSConnection(ConnectionType.SERVER)
        #: Every byte the client sent after its upgrade request, whether or not wsproto still looked at it.
        self.inbound = bytearray()
        self._parts: list[str] = []

    async def read_request(self) -> Request:
        """The client's upgrade request (not answered), within :data:`GUARD`."""
        with trio.fail_after(GUARD):
            while True:
                for event in self.ws.events():
                    assert isinstance(event, Request), event
                    return event
                data = await self.stream.receive_some(1 << 16)
                assert data, "the client hung up before its upgrade request"
                self.ws.receive_data(data)

    async def accept(self, *events: Event) -> Request:
        """Read the upgrade request and answer 101, with ``events`` in the same write."""
        request = await self.read_request()
        await self.send(AcceptConnection(), *events)
        return request

    def encode(self, *events: Event) -> bytes:
        return b"".join(self.ws.send(event) for event in events)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, *events: Event) -> None:
        """``events`` encoded in one write."""
        await self.write(self.encode(*events))

    async def next_event(self) -> Event | None:
        """The next event, frame by frame (a text frame may come in parts), within :data:`GUARD`; None once the
        client hung up."""
        with trio.fail_after(GUARD):
            while True:
                for event in self.ws.events():
                    return event
                try:
                    data = await self.stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    return None
                self.inbound += data
                self.ws.receive_data(data)

    async def next_message(self) -> str:
        """The next whole text message."""
        while True:
            event = await self.next_event()
            assert isinstance(event, TextMessage), event
            self._parts.append(event.data)
            if event.message_finished:
                text, self._parts = "".join(self._parts), []
                return text

    async def until_eof(self) -> list[tuple[Any, ...]]:
        """Read until the client hangs up (within :data:`GUARD`), check it keeps no socket to us; the wire."""
        with trio.fail_after(GUARD):
            while True:
                try:
                    data = await self.stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                self.inbound += data
        assert client_sockets(self.port) == []
        return self.wire()

    def wire(self) -> list[tuple[Any, ...]]:
        """Every frame the client sent after the upgrade, decoded afresh from the raw bytes (not by wsproto, which
        stops at a close frame): ``("text", str)``, ``("close", code, reason)``, ``("pong", bytes)``… Each frame
        must be whole, final and masked: a byte after the last frame, or a cut frame, fails here."""
        data, frames, at = bytes(self.inbound), [], 0
        while at < len(data):
            head, size = data[at : at + 2], data[at + 1] & 0x7F
            assert head[0] & 0xF0 == 0x80 and head[1] & 0x80, f"not a final masked frame: {head!r}"
            at += 2
            if size >= 126:
                width = 2 if size == 126 else 8
                size = int.from_bytes(data[at : at + width], "big")
                at += width
            mask, at = data[at : at + 4], at + 4
            payload, at = XorMaskerSimple(mask).process(data[at : at + size]), at + size
            assert len(payload) == size, "a frame cut short"
            opcode = Opcode(head[0] & 0x0F)
            if opcode is Opcode.TEXT:
                frames.append(("text", payload.decode()))
            elif opcode is Opcode.CLOSE:
                frames.append(("close", int.from_bytes(payload[:2], "big"), payload[2:].decode()))
            else:
                frames.append((opcode.name.lower(), bytes(payload)))
        return frames

    async def reset(self) -> None:
        """Hang up with a TCP reset (SO_LINGER 0) instead of a FIN."""
        assert isinstance(self.stream, trio.SocketStream)
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()


class Server:
    """A TCP listener on 127.0.0.1 whose connections the test accepts one by one (TLS first, with ``tls``)."""

    def __init__(self, listener: trio.SocketListener, tls: ssl.SSLContext | None) -> None:
        self.listener = listener
        self.port: int = listener.socket.getsockname()[1]
        self.tls = tls
        self.streams: list[trio.SocketStream] = []

    def url(self, resource: str = f"/ws?token={TOKEN}") -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{resource}"

    async def accept(self) -> Peer:
        stream = await self.listener.accept()
        self.streams.append(stream)
        if self.tls is None:
            return Peer(stream, self.port)
        tls = trio.SSLStream(stream, self.tls, server_side=True)
        await tls.do_handshake()
        return Peer(tls, self.port)


@asynccontextmanager
async def serving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    # Inherited by accepted sockets: a fixed receive buffer (no autotuning) bounds what a peer that does not read
    # can hold, so that a HUGE send is sure to block.
    listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server = Server(listener, tls)
    try:
        yield server
    finally:
        for stream in server.streams:
            await trio.aclose_forcefully(stream)
        await listener.aclose()


async def connect(
    server: Server,
    resource: str = f"/ws?token={TOKEN}",
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_FRAME,
) -> tuple[ClientLink, Peer]:
    """A link to ``server`` and the server's end of it, the upgrade accepted."""
    peers: list[Peer] = []

    async def accept() -> None:
        peer = await server.accept()
        await peer.accept()
        peers.append(peer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        try:
            link = await connect_link(server.url(resource), ssl_context=ssl_context, max_message_size=max_message_size)
        except BaseException:
            nursery.cancel_scope.cancel()
            raise
    return link, peers[0]
