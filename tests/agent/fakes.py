"""A scripted fake AIP server for the device agent's tests, and the recorded frames they compare against.

The agent must not depend on galaxy_trio's own server (written in parallel, and a different layer), so each test
plays the server itself: it takes the agent's connections one by one from :meth:`FakeServer.accept` and sends
exactly the frames the scenario needs. Every frame the agent sends is checked on arrival: it must decode as a
ClientMessage and re-encode to the very same bytes (PROTOCOL.md §3), so a test cannot pass with an agent that
sends sloppy JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio
import trio_websocket

from galaxy_trio.aip import (
    ClientMessage,
    ClientMessageType,
    ServerMessage,
    builders,
    decode_client_message,
    encode_text,
)


@dataclass(slots=True)
class Received:
    """One frame the agent sent, with the (virtual) time it arrived."""

    text: str
    message: ClientMessage
    at: float


class FakeConnection:
    """One agent connection, driven by the test."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, accepted_at: float) -> None:
        self.ws = ws
        self.accepted_at = accepted_at
        self.received: list[Received] = []
        self.done = trio.Event()

    async def receive(self) -> ClientMessage:
        """The agent's next frame, checked for the re-encoding property."""
        text = await self.ws.get_message()
        assert isinstance(text, str), f"the agent sent a binary frame of {len(text)} bytes"
        message = decode_client_message(text)
        assert encode_text(message) == text, f"frame does not re-encode byte-identically: {text}"
        self.received.append(Received(text, message, trio.current_time()))
        return message

    async def receive_type(self, kind: ClientMessageType) -> ClientMessage:
        message = await self.receive()
        assert message.type is kind, f"expected {kind.value}, got {message.type.value}: {message}"
        return message

    async def register(self) -> ClientMessage:
        """Take the REGISTER and confirm it as UFO's server does (a heartbeat/ok frame)."""
        message = await self.receive_type(ClientMessageType.REGISTER)
        await self.send(builders.registration_confirmation())
        return message

    async def send(self, message: ServerMessage) -> None:
        await self.ws.send_message(encode_text(message))

    async def send_raw(self, payload: str | bytes) -> None:
        await self.ws.send_message(payload)

    async def drain_until_closed(self) -> trio_websocket.CloseReason:
        """Read (and check) frames until the agent closes the connection; returns the close reason."""
        try:
            while True:
                await self.receive()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return exc.reason

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self.ws.aclose(code, reason)
        self.done.set()


@dataclass
class FakeServer:
    """A WebSocket server on 127.0.0.1 whose connections the test takes with :meth:`accept`.

    ``reject_status`` refuses every handshake with that HTTP status (403: bad token); ``reject_next`` refuses
    only the next handshakes, one status each. :meth:`stop` then :meth:`start` (same port) is a server restart.
    """

    reject_status: int | None = None
    reject_next: list[int] = field(default_factory=list)
    port: int = 0
    handshakes: int = 0
    connections: list[FakeConnection] = field(default_factory=list)
    _send: trio.MemorySendChannel[FakeConnection] | None = None
    _receive: trio.MemoryReceiveChannel[FakeConnection] | None = None
    _scope: trio.CancelScope | None = None

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[FakeConnection](math.inf)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token=s3cret-token"

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                ws_server = await nursery.start(
                    trio_websocket.serve_websocket, self._handle, "127.0.0.1", self.port, None
                )
                self.port = ws_server.port
                task_status.started()

    def stop(self) -> None:
        """Drop the listener and every connection at once, like a crashed server."""
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.handshakes += 1
        status = self.reject_next.pop(0) if self.reject_next else self.reject_status
        if status is not None:
            await request.reject(status)
            return
        ws = await request.accept()
        connection = FakeConnection(ws, trio.current_time())
        self.connections.append(connection)
        assert self._send is not None
        await self._send.send(connection)
        # Keep the socket open until the test is done with it (trio-websocket closes it when the handler returns).
        await connection.done.wait()

    async def accept(self) -> FakeConnection:
        """The agent's next connection."""
        assert self._receive is not None
        return await self._receive.receive()
