"""The fleet soak's Redis link process (``redis_link.py``): it forwards, ``cut`` drops live connections and refuses
new ones, ``restore`` forwards again — each command done when it returns."""

from __future__ import annotations

from functools import partial

import trio

from .redis_link import open_redis_link


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(4096):
            await stream.send_all(data)


async def _round_trip(port: int, data: bytes) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        return await stream.receive_some(4096)


async def test_the_link_forwards_cuts_and_restores() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
            target = listeners[0].socket.getsockname()[1]
            async with open_redis_link(target) as link:
                assert await _round_trip(link.port, b"ping") == b"ping"
                live = await trio.open_tcp_stream("127.0.0.1", link.port)
                await live.send_all(b"a")
                assert await live.receive_some(16) == b"a"
                await link.cut()
                assert await live.receive_some(16) == b""  # the live connection was dropped
                assert await _round_trip(link.port, b"ping") == b""  # and a new one is closed at once
                await link.restore()
                assert await _round_trip(link.port, b"again") == b"again"
                await live.aclose()
            nursery.cancel_scope.cancel()
