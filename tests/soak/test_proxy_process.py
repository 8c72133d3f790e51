"""The soaks' proxy processes (``proxy_process.py``): each command does what it names, in the child, before it
returns — a ``tcp`` proxy (member C's Redis link) forwards, ``cut`` drops live connections and refuses new ones,
``restore`` forwards again; a ``faults`` proxy (the managers' way to the server) closes and reopens its port, cuts,
black-holes, stalls and releases, and says so in its ``state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from .proxy_process import ProxyProcess, open_proxy_process


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(4096):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the fault proxy resets (RST) the connections it cuts


async def _round_trip(port: int, data: bytes) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        return await stream.receive_some(4096)


async def _received_until_closed(stream: trio.SocketStream) -> bytes:
    """What arrives before the peer closes (or resets) the connection."""
    got = b""
    try:
        while chunk := await stream.receive_some(4096):
            got += chunk
    except trio.BrokenResourceError:
        pass
    return got


@asynccontextmanager
async def _proxy_to_echo(kind: str) -> AsyncIterator[ProxyProcess]:
    """A ``kind`` proxy process in front of an echo server on loopback."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
        async with open_proxy_process(kind, listeners[0].socket.getsockname()[1]) as proxy:
            yield proxy
        nursery.cancel_scope.cancel()


#: Bytes an HTTP client might send first: the fault proxy forwards a connection's head, then follows frames.
HEAD = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_the_tcp_link_forwards_cuts_and_restores() -> None:
    with trio.fail_after(60):
        async with _proxy_to_echo("tcp") as link:
            assert await _round_trip(link.port, b"ping") == b"ping"
            live = await trio.open_tcp_stream("127.0.0.1", link.port)
            await live.send_all(b"a")
            assert await live.receive_some(16) == b"a"
            await link.cut()
            assert await live.receive_some(16) == b""  # the live connection was dropped
            async with await trio.open_tcp_stream("127.0.0.1", link.port) as refused:
                await refused.send_all(b"ping")
                assert await _received_until_closed(refused) == b""  # and a new one is closed at once
            assert (await link.state())["cut"] is True
            await link.restore()
            assert await _round_trip(link.port, b"again") == b"again"
            assert (await link.state())["cut"] is False
            await live.aclose()


async def test_the_fault_proxy_obeys_each_command_before_it_returns() -> None:
    with trio.fail_after(60):
        async with _proxy_to_echo("faults") as proxy:
            assert await _round_trip(proxy.port, HEAD) == HEAD

            await proxy.close_port()  # a server that is down: connects refused
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", proxy.port)
            assert (await proxy.state())["port_open"] is False
            await proxy.open_port()  # the same port again
            assert await _round_trip(proxy.port, HEAD) == HEAD

            live = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await live.send_all(HEAD)
            assert await live.receive_some(4096) == HEAD
            await proxy.cut()
            assert await _received_until_closed(live) == b""
            await live.aclose()

            await proxy.blackhole()
            assert (await proxy.state())["blackhole"] is True
            await proxy.restore()
            assert (await proxy.state())["blackhole"] is False
            assert await _round_trip(proxy.port, HEAD) == HEAD

            await proxy.stall_handshakes()
            held = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await held.send_all(HEAD)
            assert (await proxy.state())["stall_handshake"] is True  # (the proxy's tests show the hold itself)
            await proxy.release_handshakes()  # what it held goes through
            assert await held.receive_some(4096) == HEAD
            state = await proxy.state()
            assert (state["stall_handshake"], state["stalled"]) == (False, 0)
            await held.aclose()


async def test_an_unknown_command_is_an_error_naming_it() -> None:
    with trio.fail_after(60):
        async with _proxy_to_echo("tcp") as link:
            with pytest.raises(RuntimeError, match="unknown command for a tcp proxy: b'blackhole'"):
                await link.blackhole()
            assert await _round_trip(link.port, b"still") == b"still"
    with pytest.raises(ValueError, match="unknown proxy kind 'udp'"):
        async with open_proxy_process("udp", 1):
            pass
