"""A scripted AIP server for manager tests: it replays UFO's recorded frames on 127.0.0.1, port 0.

It checks what the manager sends (every frame must decode and re-encode byte-identically, as UFO's would), records
it, and answers from the recordings in ``shared/aip/frames/``: the registration confirmation, the "target not
connected" and duplicate rejections, heartbeat acks, DEVICE_INFO responses and TASK_ENDs — with ids patched in.
Knobs let a test make it reject, stall, go silent or restart.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import trio
import trio_websocket

from galaxy_trio.aip import (
    ClientMessage,
    ClientMessageType,
    ServerMessage,
    decode_client_message,
    decode_server_message,
    encode,
    encode_text,
    new_id,
)

from .. import frames

CONFIRMATION = frames.raw("constellation_registration", 2)
TARGET_NOT_CONNECTED = frames.raw("constellation_registration", 4)  # "Target device 'no_such_device' ..."
DUPLICATE = frames.raw("errors", 5)
HEARTBEAT_ACK = frames.raw("heartbeat", 6)
DEVICE_INFO_RESPONSE = decode_server_message(frames.raw("device_info", 4))
TASK_END_COMPLETED = decode_server_message(frames.raw("task_roundtrip", 11))
TASK_ACK = decode_server_message(frames.raw("task_roundtrip", 4))
SYSTEM_INFO: dict[str, Any] = DEVICE_INFO_RESPONSE.result


def patched(frame: ServerMessage, **changes: Any) -> str:
    return encode_text(msgspec.structs.replace(frame, **changes))


@dataclass(eq=False)
class Conn:
    """One accepted connection, as the peer sees it."""

    ws: trio_websocket.WebSocketConnection
    client_id: str | None = None
    received: list[ClientMessage] = field(default_factory=list)
    #: trio.current_time() at which each frame in ``received`` arrived.
    received_at: list[float] = field(default_factory=list)

    async def send(self, text: str) -> None:
        await self.ws.send_message(text)


TaskHandler = Callable[["ScriptedPeer", Conn, ClientMessage], Awaitable[None]]


async def complete_at_once(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
    """Ack the TASK, then end it ``completed`` with the recorded TASK_END payload."""
    await conn.send(patched(TASK_ACK, session_id=task.session_id))
    await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id()))


class ScriptedPeer:
    """See the module docstring. ``await nursery.start(peer.serve)``; ``peer.url`` has the token in it."""

    def __init__(self, token: str = "s3cret-token") -> None:
        self.token = token
        self.port = 0
        self.handshakes = 0  # upgrade requests seen, accepted or not
        self.connections: list[Conn] = []
        #: REGISTER n (1-based, over the peer's life) → None to accept, or the raw ERROR frame to reject with.
        self.register_verdict: Callable[[int], str | None] = lambda n: None
        self.answer_register = True
        self.answer_heartbeats = True
        self.answer_device_info = True
        self.silent = False  # read everything, answer nothing
        self.system_info: dict[str, Any] | None = SYSTEM_INFO
        self.task_handler: TaskHandler = complete_at_once
        self.registers = 0
        self.live: set[Conn] = set()
        self.changed = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={self.token}"

    def heartbeat_times(self) -> list[tuple[float, ClientMessage]]:
        """When each HEARTBEAT arrived (trio's clock), over every connection, in order."""
        return sorted(
            (
                (at, m)
                for c in self.connections
                for at, m in zip(c.received_at, c.received, strict=True)
                if m.type is ClientMessageType.HEARTBEAT
            ),
            key=lambda pair: pair[0],
        )

    def frames_of(self, kind: ClientMessageType) -> list[ClientMessage]:
        return [m for c in self.connections for m in c.received if m.type is kind]

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or :meth:`stop` (then :meth:`serve` may be started again on the same port)."""
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                server = await nursery.start(trio_websocket.serve_websocket, self._handle, "127.0.0.1", self.port, None)
                self.port = server.port
                task_status.started()

    def stop(self) -> None:
        """Stop listening and drop every connection abruptly, as a crashed server would."""
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.handshakes += 1
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            await request.reject(403)
            self._notify()
            return
        ws = await request.accept()
        conn = Conn(ws)
        self.connections.append(conn)
        self.live.add(conn)
        self._notify()
        try:
            while True:
                try:
                    text = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                assert isinstance(text, str), "the manager sent a binary frame"
                message = decode_client_message(text)
                assert encode(message).decode() == text, f"frame does not re-encode identically: {text}"
                conn.received.append(message)
                conn.received_at.append(trio.current_time())
                self._notify()
                if not await self._answer(conn, message):
                    return
        finally:
            self.live.discard(conn)
            self._notify()

    async def _answer(self, conn: Conn, message: ClientMessage) -> bool:
        """Answer one frame; ``False`` to end the connection."""
        if self.silent:
            return True
        kind = message.type
        if kind is ClientMessageType.REGISTER:
            self.registers += 1
            if not self.answer_register:
                return True
            verdict = self.register_verdict(self.registers)
            if verdict is not None:
                await conn.send(verdict)
                await conn.ws.aclose(1000)
                return False
            conn.client_id = message.client_id
            await conn.send(CONFIRMATION)
        elif kind is ClientMessageType.HEARTBEAT:
            if self.answer_heartbeats:
                await conn.send(HEARTBEAT_ACK)
        elif kind is ClientMessageType.DEVICE_INFO_REQUEST:
            if self.answer_device_info:
                result = self.system_info or {"error": f"Device {message.target_id} not found or no system info"}
                await conn.send(patched(DEVICE_INFO_RESPONSE, response_id=message.request_id, result=result))
        elif kind is ClientMessageType.TASK:
            assert self._nursery is not None
            self._nursery.start_soon(self.task_handler, self, conn, message)
        return True
