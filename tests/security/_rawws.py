"""A WebSocket end driven frame by frame (wsproto over a trio stream), client or server.

A WebSocket library never sends what these tests need to send: a ping after the other side's close frame, a
close and a ping in one write, a message after a close. Frames are encoded by wsproto ahead of time
(:meth:`RawWebSocket.prepare`), while our side is still OPEN, and written whenever the test decides.
"""

from __future__ import annotations

import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Request,
    TextMessage,
)

__all__ = ["RawWebSocket"]


class RawWebSocket:
    """One raw WebSocket connection; see the module docstring."""

    def __init__(self, stream: trio.abc.Stream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self._ws = ws
        self._parts: list[str | bytes] = []

    @classmethod
    async def connect(cls, host: str, port: int, target: str) -> RawWebSocket:
        stream = await trio.open_tcp_stream(host, port)
        raw = cls(stream, wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
        await raw.send(Request(host=f"{host}:{port}", target=target))
        event = await raw.next_event()
        assert isinstance(event, AcceptConnection), event
        return raw

    @classmethod
    async def accept(cls, stream: trio.abc.Stream) -> RawWebSocket:
        raw = cls(stream, wsproto.WSConnection(wsproto.ConnectionType.SERVER))
        event = await raw.next_event()
        assert isinstance(event, Request), event
        await raw.send(AcceptConnection())
        return raw

    def prepare(self, *events: Event) -> bytes:
        """The bytes of ``events``, encoded now (our side must still be OPEN); write them later with :meth:`write`."""
        return b"".join(self._ws.send(event) for event in events)

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def write_late(self, data: bytes) -> None:
        """Write bytes the peer may no longer want: a peer that drops the connection meanwhile is fine too."""
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async def send(self, *events: Event) -> None:
        await self.write(self.prepare(*events))

    async def next_event(self) -> Event | None:
        """The next event (a whole message for text and binary), or None when the peer closed the TCP stream."""
        while True:
            for event in self._ws.events():
                if isinstance(event, Message):
                    self._parts.append(event.data)
                    if not event.message_finished:
                        continue
                    parts, self._parts = self._parts, []
                    if isinstance(event, TextMessage):
                        return TextMessage(data="".join(str(p) for p in parts))
                    return BytesMessage(data=b"".join(bytes(p) for p in parts))
                return event
            try:
                data = await self.stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._ws.receive_data(data)

    async def next_text(self) -> str:
        event = await self.next_event()
        assert isinstance(event, TextMessage), event
        return event.data

    async def until_close(self) -> CloseConnection:
        """Read (and drop) messages until the peer's close frame; it is not answered."""
        while True:
            event = await self.next_event()
            assert event is not None, "the peer dropped the connection without a close frame"
            if isinstance(event, CloseConnection):
                return event

    async def until_eof(self) -> None:
        """Read until the peer closes the TCP stream (bytes arriving after our close frame are ignored)."""
        while True:
            try:
                data = await self.stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
