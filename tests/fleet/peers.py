"""A scripted AIP server that enforces the server's duplicate-client_id rule, and a TCP proxy that can be cut.

``FencedPeer`` extends the manager tests' :class:`ScriptedPeer`: a REGISTER whose client_id is already registered
on another live connection is refused with UFO's duplicate error and the connection closed, as the real server
does (PROTOCOL.md §7 rule 5). It also keeps, per client_id, when each registration started and ended (trio time),
so a test can check that two managers never drove one device at the same moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import trio
import trio_websocket

from galaxy_trio.aip import ClientMessage, ClientMessageType, decode_server_message

from ..manager.peer import DUPLICATE, Conn, ScriptedPeer, patched

_DUPLICATE_FRAME = decode_server_message(DUPLICATE)


@dataclass
class Registration:
    client_id: str
    conn: Conn
    started: float
    ended: float | None = None


class FencedPeer(ScriptedPeer):
    def __init__(self, token: str = "s3cret-token") -> None:
        super().__init__(token)
        self.registrations: list[Registration] = []
        self.duplicates_refused: list[tuple[float, str]] = []

    def registered(self) -> dict[str, list[Registration]]:
        """Live registrations by client_id."""
        live: dict[str, list[Registration]] = {}
        for registration in self.registrations:
            if registration.ended is None:
                live.setdefault(registration.client_id, []).append(registration)
        return live

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        try:
            await super()._handle(request)
        finally:
            now = trio.current_time()
            for registration in self.registrations:
                if registration.ended is None and registration.conn not in self.live:
                    registration.ended = now
            self._notify()

    async def _answer(self, conn: Conn, message: ClientMessage) -> bool:
        if message.type is ClientMessageType.REGISTER and not self.silent and message.client_id:
            client_id = message.client_id
            if client_id in self.registered():
                self.registers += 1
                self.duplicates_refused.append((trio.current_time(), client_id))
                error = f"client_id '{client_id}' is already registered; duplicate registrations are not allowed"
                await conn.send(patched(_DUPLICATE_FRAME, error=error))
                await conn.ws.aclose(1000)
                return False
            self.registrations.append(Registration(client_id, conn, trio.current_time()))
        return await super()._answer(conn, message)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port. ``cut()`` drops every connection and refuses new ones (the
    member behind it is partitioned from Redis); ``restore()`` forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.is_cut = False
        self.accepted = 0
        self._pipes: set[trio.CancelScope] = set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    def cut(self) -> None:
        self.is_cut = True
        for scope in self._pipes:
            scope.cancel()

    def restore(self) -> None:
        self.is_cut = False

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        if self.is_cut:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._pipes.add(scope)
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with upstream, client, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._pipes.discard(scope)
        await client.aclose()


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        # 4 KiB reads, as faults/proxy.py's: a bigger buffer shrunk to the few bytes a Redis reply has leaves holes
        # in the heap, which showed as RSS creep when the fleet soak carried a member's Redis link through here.
        while data := await source.receive_some(4096):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
