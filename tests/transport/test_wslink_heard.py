"""What a server-wide keepalive reads from a link (_wslink): when the peer was last heard, and a ping that does
not wait for its pong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from galaxy_trio.transport import ClientLink, LinkRequest, ServerLink, open_link, serve_links

GUARD = 60.0


@asynccontextmanager
async def linked() -> AsyncIterator[tuple[ServerLink, ClientLink]]:
    """A server link (nobody reads it unless the test does) and the client link at its other end."""
    accepted: list[ServerLink] = []
    ready = trio.Event()

    async def hold(request: LinkRequest) -> None:
        accepted.append(await request.accept())
        ready.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_links, hold, "127.0.0.1", 0, handshake_deadline=GUARD))
        async with open_link(f"ws://127.0.0.1:{port}/ws") as client:
            with trio.fail_after(GUARD):
                await ready.wait()
            yield accepted[0], client
        nursery.cancel_scope.cancel()


async def test_heard_at_is_the_last_read_that_brought_bytes(autojump_clock: trio.testing.MockClock) -> None:
    async with linked() as (server, client):
        opened_at = trio.current_time()
        assert server.heard_at == pytest.approx(opened_at, abs=0.01)
        await trio.sleep(30)
        assert server.heard_at == pytest.approx(opened_at, abs=0.01)  # a silent peer is not heard
        await client.send_text("hello")
        await trio.sleep(7)  # the frame waits in the socket: heard only once read
        assert server.heard_at == pytest.approx(opened_at, abs=0.01)
        with trio.fail_after(GUARD):
            assert await server.receive() == "hello"
        assert server.heard_at == pytest.approx(opened_at + 37, abs=0.01)


async def test_send_ping_does_not_wait_and_the_pong_counts_as_heard(autojump_clock: trio.testing.MockClock) -> None:
    async with linked() as (server, client), trio.open_nursery() as nursery:
        nursery.start_soon(server.receive)  # the server's reader: sees the pong (no text frame comes)
        with trio.fail_after(1):
            await server.send_ping()  # returns with no pong: the client is not even reading
        opened_at = server.heard_at
        await trio.sleep(10)
        assert server.heard_at == opened_at  # (no answer yet)
        answered_at = trio.current_time()
        nursery.start_soon(client.receive)  # the client's reader answers the ping...
        await trio.sleep(1)
        assert server.heard_at == pytest.approx(answered_at, abs=0.01)  # ...and the pong, no text frame, is heard
        assert answered_at - opened_at == pytest.approx(10, abs=0.01)
        nursery.cancel_scope.cancel()
