"""Raw AIP test peers for the server tests: recorded frames in, every server frame checked on the way out.

A :class:`Peer` is a bare trio-websocket client (which answers pings by itself); a :class:`RawPeer` is a TCP
stream driven through wsproto that answers nothing unless told to, for the keepalive tests. Peers send recorded
frames from ``shared/aip/frames`` (or frames built with the aip builders) and check that every frame the server
sends decodes as a ServerMessage and re-encodes to the very same bytes, the property every UFO frame has
(PROTOCOL.md §3).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import msgspec
import trio
import trio_websocket
import wsproto
import wsproto.events

from galaxy_trio.aip import (
    ClientMessage,
    ClientType,
    Result,
    ResultStatus,
    ServerMessage,
    ServerMessageType,
    TaskStatus,
    builders,
    decode_client_message,
    decode_server_message,
    encode,
    encode_text,
)
from galaxy_trio.redact import url_with_token
from galaxy_trio.server import AIPServer, serve_aip

from ..frames import load, raw

TOKEN = "test-token-5f2c9e"
#: Virtual seconds a :class:`RawPeer` waits for the server's next event before the test fails instead of hanging.
RAW_GUARD = 1000.0


def frame(scenario: str, step: int) -> str:
    """The exact text of a recorded frame."""
    return raw(scenario, step)


def _line(scenario: str, step: int) -> dict[str, Any]:
    return next(line for line in load(scenario) if line["step"] == step)


def client_frame(scenario: str, step: int) -> ClientMessage:
    line = _line(scenario, step)
    assert line["dir"] == "C->S"
    return decode_client_message(line["raw"])


def server_frame(scenario: str, step: int) -> ServerMessage:
    line = _line(scenario, step)
    assert line["dir"] == "S->C"
    return decode_server_message(line["raw"])


def assert_like_recorded(ours: ServerMessage, scenario: str, step: int) -> None:
    """Ours equals the recorded server frame, except the per-send fields (timestamp; fresh uuid response_id)."""
    recorded = server_frame(scenario, step)
    ours_fields = {f: getattr(ours, f) for f in ours.__struct_fields__ if f != "timestamp"}
    recorded_fields = {f: getattr(recorded, f) for f in recorded.__struct_fields__ if f != "timestamp"}
    if recorded.type is not ServerMessageType.DEVICE_INFO_RESPONSE:
        assert_uuid(ours_fields.pop("response_id"))
        recorded_fields.pop("response_id")
    assert ours_fields == recorded_fields


def assert_uuid(value: object) -> None:
    assert isinstance(value, str) and len(value) == 36 and value.count("-") == 4 and value == value.lower()


async def start_server(nursery: trio.Nursery, **kwargs: Any) -> AIPServer:
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=TOKEN, **kwargs))
    return server


class Peer:
    """One raw client connection."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def send(self, message: ClientMessage) -> None:
        await self.ws.send_message(encode_text(message))

    async def receive(self) -> ServerMessage:
        """The next server frame, which must be text and re-encode byte-identically."""
        data = await self.ws.get_message()
        assert isinstance(data, str), f"server sent a binary frame: {data!r}"
        message = decode_server_message(data)
        assert encode(message) == data.encode(), f"server frame does not re-encode identically: {data}"
        return message

    async def expect(self, type_: ServerMessageType, **fields: Any) -> ServerMessage:
        message = await self.receive()
        assert message.type is type_, message
        for name, value in fields.items():
            assert getattr(message, name) == value, (name, message)
        return message

    async def expect_error(self, text: str | None = None) -> str:
        message = await self.expect(ServerMessageType.ERROR, status=TaskStatus.ERROR, session_id=None)
        assert_uuid(message.response_id)
        assert isinstance(message.error, str)
        if text is not None:
            assert message.error == text
        return message.error

    async def expect_ack(self, session_id: str | None = None) -> ServerMessage:
        message = await self.expect(
            ServerMessageType.HEARTBEAT, status=TaskStatus.OK, session_id=session_id, error=None, result=None
        )
        assert_uuid(message.response_id)
        return message

    async def expect_closed(self) -> trio_websocket.CloseReason:
        """The server closes next: no further frame arrives before the close."""
        try:
            data = await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return exc.reason
        raise AssertionError(f"expected the server to close, got a frame: {data!r}")

    async def expect_closed_maybe_after(
        self, type_: ServerMessageType
    ) -> tuple[ServerMessage | None, trio_websocket.CloseReason]:
        """The server closes next, or sends one frame of ``type_`` and then closes: (that frame or None, close)."""
        try:
            data = await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return None, exc.reason
        assert isinstance(data, str), f"server sent a binary frame: {data!r}"
        message = decode_server_message(data)
        assert message.type is type_, message
        return message, await self.expect_closed()

    async def register(self, raw: str | ClientMessage) -> ServerMessage:
        """Send a REGISTER and expect the heartbeat/ok confirmation."""
        await (self.send_raw(raw) if isinstance(raw, str) else self.send(raw))
        return await self.expect_ack()

    async def assert_quiet(self, client_id: str, client_type: ClientType) -> None:
        """Nothing was sent in reply to the previous frames: a heartbeat's ack is the very next frame.

        The server reads each connection with one task and answers in order, so this proves silence without
        waiting for a timeout.
        """
        await self.send(builders.heartbeat(client_id, client_type))
        await self.expect_ack()


@asynccontextmanager
async def open_peer(server: AIPServer, *, token: str | None = TOKEN, path: str | None = None) -> AsyncIterator[Peer]:
    url = url_with_token(server.url, token)
    if path is not None:
        url = url.replace("/ws", path, 1)
    async with trio_websocket.open_websocket_url(url, max_message_size=16 << 20) as ws:
        yield Peer(ws)


class RawPeer:
    """A connection whose every answer is the test's choice: it pongs, reads and writes only when told to.

    It runs no task of its own, so the server's task tree holds only the server's tasks.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._events: list[wsproto.events.Event] = []
        self._ping: wsproto.events.Ping | None = None

    @classmethod
    async def open(cls, server: AIPServer, *, rcvbuf: int | None = None) -> RawPeer:
        """Connect and upgrade (no REGISTER yet); ``rcvbuf`` shrinks the socket's receive buffer (a peer whose
        TCP window fills fast)."""
        if rcvbuf is None:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        else:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            await sock.connect(("127.0.0.1", server.port))
            stream = trio.SocketStream(sock)
        peer = cls(stream)
        await peer.stream.send_all(peer.ws.send(wsproto.events.Request(host="127.0.0.1", target=f"/ws?token={TOKEN}")))
        assert isinstance(await peer._next_event(), wsproto.events.AcceptConnection)
        return peer

    @classmethod
    async def device(cls, server: AIPServer, device_id: str) -> RawPeer:
        """Connected and registered as device ``device_id`` (its confirmation read)."""
        peer = await cls.open(server)
        await peer.send(builders.device_register(device_id, platform="linux", system_info=None))
        await peer.expect_ack()
        return peer

    async def _next_event(self) -> wsproto.events.Event:
        with trio.fail_after(RAW_GUARD):
            while not self._events:
                data = await self.stream.receive_some()
                self.ws.receive_data(data or None)
                self._events.extend(self.ws.events())
        return self._events.pop(0)

    async def send(self, message: ClientMessage) -> None:
        await self.stream.send_all(self.ws.send(wsproto.events.TextMessage(data=encode_text(message))))

    def frames(self, message: ClientMessage, count: int) -> bytes:
        """``count`` copies of ``message``'s text frame, to write at once."""
        event = wsproto.events.TextMessage(data=encode_text(message))
        return b"".join(self.ws.send(event) for _ in range(count))

    async def send_binary(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(wsproto.events.BytesMessage(data=data)))

    async def receive(self) -> ServerMessage:
        """The next event, which must be a text frame; decoded."""
        event = await self._next_event()
        assert isinstance(event, wsproto.events.TextMessage), f"expected a text frame, got {event!r}"
        return decode_server_message(event.data)

    async def expect_ack(self) -> None:
        message = await self.receive()
        assert (message.type, message.status) == (ServerMessageType.HEARTBEAT, TaskStatus.OK), message

    async def heartbeat(self, client_id: str) -> None:
        """A device HEARTBEAT, and its answer as the very next event (no ping came first)."""
        await self.send(builders.heartbeat(client_id, ClientType.DEVICE))
        await self.expect_ack()

    async def expect_ping(self) -> None:
        """The next event is a ping (kept, for :meth:`pong`)."""
        event = await self._next_event()
        assert isinstance(event, wsproto.events.Ping), f"expected a ping, got {event!r}"
        self._ping = event

    async def pong(self) -> None:
        """Answer the last ping."""
        assert self._ping is not None
        await self.stream.send_all(self.ws.send(self._ping.response()))

    async def expect_close(self) -> tuple[int, str | None]:
        """The next event is the server's close frame: its code and reason."""
        event = await self._next_event()
        assert isinstance(event, wsproto.events.CloseConnection), f"expected a close, got {event!r}"
        return event.code, event.reason or None

    async def close(self) -> None:
        """Close the link as a client does, and wait for the server's answer and its hang-up."""
        await self.stream.send_all(self.ws.send(wsproto.events.CloseConnection(code=1000)))
        assert (await self.expect_close())[0] == 1000
        with trio.fail_after(RAW_GUARD):
            while await self.stream.receive_some():
                pass
        await self.stream.aclose()

    async def assert_nothing_for(self, seconds: float) -> None:
        """The server sends nothing at all (not even a ping) for ``seconds``."""
        with trio.move_on_after(seconds):
            event = await self._next_event()
            raise AssertionError(f"the server sent {event!r}")


def results_for(command: ServerMessage, device_id: str, results: Sequence[Result]) -> ClientMessage:
    """A device's COMMAND_RESULTS answering ``command``: call_ids echoed, prev_response_id = its response_id."""
    assert command.type is ServerMessageType.COMMAND and command.actions is not None
    assert len(results) == len(command.actions)
    echoed = [
        Result(status=r.status, error=r.error, result=r.result, namespace=r.namespace, call_id=a.call_id)
        for r, a in zip(results, command.actions, strict=True)
    ]
    return builders.command_results(
        device_id, session_id=command.session_id, prev_response_id=command.response_id, results=echoed
    )


def ok(result: Any, namespace: str | None = "Tools") -> Result:
    return Result(status=ResultStatus.SUCCESS, result=result, namespace=namespace)


def tool_info(name: str, tool_type: str = "action") -> dict[str, Any]:
    """An MCP tool-info object as UFO's device lists it (§5.3)."""
    return {
        "tool_key": f"{tool_type}::{name}",
        "tool_name": name,
        "title": None,
        "namespace": "Tools",
        "tool_type": tool_type,
        "description": f"{name} tool",
        "input_schema": {"properties": {}, "type": "object"},
        "output_schema": None,
        "meta": None,
        "annotations": None,
    }


ToolImpl = Callable[[dict[str, Any] | None], Result]


async def serve_device(
    device: Peer,
    device_id: str,
    tools: dict[str, ToolImpl],
    *,
    task_ends: int = 1,
    log: list[ServerMessage] | None = None,
) -> list[ServerMessage]:
    """Act as a UFO device: answer every COMMAND (list_tools from ``tools``) until ``task_ends`` TASK_ENDs came.

    Returns (and appends to ``log``) every frame received, in order.
    """
    received: list[ServerMessage] = [] if log is None else log
    ended = 0
    while ended < task_ends:
        message = await device.receive()
        received.append(message)
        if message.type is ServerMessageType.TASK_END:
            ended += 1
            continue
        assert message.type is ServerMessageType.COMMAND, message
        assert message.actions is not None
        answers = []
        for action in message.actions:
            if action.tool_name == "list_tools":
                answers.append(ok([tool_info(name) for name in tools], namespace=None))
            else:
                answers.append(tools[action.tool_name](action.parameters))
        await device.send(results_for(message, device_id, answers))
    return received


def normalized(message: ServerMessage, *, keep_response_id: bool = False) -> dict[str, Any]:
    """A server frame with its per-send values (timestamp, fresh uuids) replaced by placeholders, for comparing
    our frames with the recorded ones field by field."""
    data: dict[str, Any] = msgspec.to_builtins(message)
    data["timestamp"] = "<timestamp>"
    if not keep_response_id:
        assert_uuid(data["response_id"])
        data["response_id"] = "<uuid>"
    for action in data["actions"] or []:
        assert_uuid(action["call_id"])
        action["call_id"] = "<uuid>"
    return data
