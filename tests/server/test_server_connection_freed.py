"""A closed connection is freed by reference counting alone, however it ended (issue #15 item 3).

Why it matters: objects in a reference cycle wait for the cyclic collector, so every full collection walks the
dead connections of a busy server, and ``gc.freeze()`` (which the CLI applies to a settled fleet) would keep the
cyclic remains of every connection open at the time of the freeze for ever. Each test turns the collector off,
opens connections on 127.0.0.1, port 0, ends them one way, and checks that every object the server made for them
(the connection, its bounded link, the WebSocket link: whatever of ``galaxy_trio.server.connection`` and the
server's links supports a weak reference) is gone without a collection, and, where the peers are our own raw
wsproto ones, that a collection would then find nothing at all: no exception's traceback, trio object or wsproto
state of the connection was left in a cycle either.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import trio
import trio.testing

from galaxy_trio.aip import ClientType, ServerMessageType, TaskStatus, builders
from galaxy_trio.server import AIPServer, ServerSettings
from galaxy_trio.server import connection as connection_module
from galaxy_trio.transport import ServerLink

from ._peers import RawPeer, open_peer, start_server


@contextmanager
def collector_off() -> Iterator[None]:
    """No cyclic collection while the test runs (what was garbage before it is collected first)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def cyclic_garbage() -> list[str]:
    """What a collection would free now (the types of the unreachable objects): nothing, if every object that
    died since the collector was turned off was freed by its reference count."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def server_connection_objects() -> list[object]:
    """Every live object the server made for a connection that a weak reference can follow."""
    return [
        o
        for o in gc.get_objects()
        if (type(o).__module__ == connection_module.__name__ or isinstance(o, ServerLink)) and type(o).__weakrefoffset__
    ]


class Survivors:
    """Weak references to the server's connection objects while the connections are open."""

    def __init__(self, at_least: int) -> None:
        self.refs = [weakref.ref(o) for o in server_connection_objects()]
        assert len(self.refs) >= at_least, [type(ref()).__name__ for ref in self.refs]

    def alive(self) -> list[str]:
        return sorted(type(o).__qualname__ for ref in self.refs if (o := ref()) is not None)

    async def assert_freed(self, server: AIPServer) -> None:
        """Once every task is blocked: no client left on ``server``, none of the objects alive, no cyclic garbage."""
        await settled()
        assert server.online_clients() == {}
        assert self.alive() == []
        assert cyclic_garbage() == []


async def settled() -> None:
    """Every task is blocked: the server's connection tasks have returned."""
    await trio.testing.wait_all_tasks_blocked()


async def _until_eof(peer: RawPeer) -> None:
    while await peer.stream.receive_some():
        pass
    await peer.stream.aclose()


async def test_a_device_that_closes_is_freed_without_a_collection(server: AIPServer) -> None:
    with collector_off():
        peer = await RawPeer.device(server, "leaving")
        survivors = Survivors(at_least=3)
        await peer.close()
        await survivors.assert_freed(server)


async def test_a_peer_closed_by_its_keepalive_verdict_is_freed_without_a_collection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(ping_interval=5.0, ping_timeout=5.0))
    with collector_off():
        peer = await RawPeer.device(server, "silent")
        survivors = Survivors(at_least=3)
        await peer.expect_ping()  # never answered
        assert await peer.expect_close() == (1011, "keepalive ping timeout")
        await _until_eof(peer)
        await survivors.assert_freed(server)


async def test_a_peer_closed_for_not_reading_is_freed_without_a_collection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    settings = ServerSettings(send_deadline=4.0, ping_interval=None, frame_burst=10**9)
    server = await start_server(nursery, settings=settings)
    with collector_off():
        deaf = await RawPeer.open(server, rcvbuf=4096)
        await deaf.send(builders.device_register("deaf", platform="linux", system_info=None))
        await deaf.expect_ack()
        survivors = Survivors(at_least=3)
        beats = deaf.frames(builders.heartbeat("deaf", ClientType.DEVICE), 1000)
        with trio.move_on_after(60) as flooding:
            try:
                while "deaf" in server.online_clients():  # answers nobody reads: the server's sends jam
                    await deaf.stream.send_all(beats)
            except trio.BrokenResourceError:
                pass  # the server hung up with our frames unread
        assert not flooding.cancelled_caught
        assert "deaf" not in server.online_clients()
        await deaf.stream.aclose()
        await survivors.assert_freed(server)


async def test_a_refused_registration_and_a_binary_frame_are_freed_without_a_collection(server: AIPServer) -> None:
    with collector_off():
        refused = await RawPeer.open(server)
        await settled()  # (the server made its connection once it sent the 101)
        survivors = Survivors(at_least=3)
        await refused.send(builders.heartbeat("never-registered", ClientType.DEVICE))
        assert (await refused.receive()).type is ServerMessageType.ERROR
        assert (await refused.expect_close())[0] == 1008
        await _until_eof(refused)
        binary = await RawPeer.device(server, "binary")
        survivors.refs += Survivors(at_least=3).refs
        await binary.send_binary(b"\x00" * 10)
        assert (await binary.receive()).type is ServerMessageType.ERROR
        assert (await binary.expect_close())[0] == 1003
        await _until_eof(binary)
        await survivors.assert_freed(server)


async def test_a_device_leaving_mid_task_and_its_scoped_constellation_are_freed_without_a_collection(
    server: AIPServer,
) -> None:
    with collector_off():
        async with open_peer(server) as constellation:
            async with open_peer(server) as device:
                await device.register(builders.device_register("dev", platform="linux", system_info=None))
                await constellation.register(builders.constellation_register("job", "dev"))
                await constellation.send(
                    builders.task_request("job@dev", "dev", session_id="s1", task_name="job", request="list_tools")
                )
                await constellation.expect_ack("s1")
                await device.expect(ServerMessageType.COMMAND, session_id="s1")
                survivors = Survivors(at_least=6)
            end = await constellation.expect(ServerMessageType.TASK_END)
            assert end.status is TaskStatus.FAILED
            await constellation.expect_error()
            assert (await constellation.expect_closed()).code == 1000  # a close the server started
        await settled()
        assert server.online_clients() == {} and server.running_sessions() == {}
        assert survivors.alive() == []  # (the peers here are trio-websocket's, whose garbage is not ours to judge)


async def test_connections_open_at_a_server_shutdown_are_freed_without_a_collection() -> None:
    with collector_off():
        async with trio.open_nursery() as serving:
            server = await start_server(serving)
            peers = [await RawPeer.device(server, f"dev-{n}") for n in range(3)]
            survivors = Survivors(at_least=9)
            serving.cancel_scope.cancel()
        for peer in peers:
            await peer.stream.aclose()
        await settled()
        del server
        assert survivors.alive() == []
        assert cyclic_garbage() == []
