"""The agent, like the manager, does not call a link dead when the server's answer waits unread in the socket.

The agent's reader is not started here (the heartbeat loop runs alone on a real link to a scripted server), which
is what a loop that has fallen behind looks like to the heartbeat check; times are virtual. A failure cancels the
connection's nursery, the test body included, so outcomes are checked after it.
"""

from __future__ import annotations

import trio
import trio.testing
from wsproto.events import TextMessage

from galaxy_trio.agent import DeviceAgent
from galaxy_trio.agent.agent import _Connection
from galaxy_trio.agent.errors import LinkDead
from galaxy_trio.aip import builders, encode_text
from galaxy_trio.aip.client_protocol import Heartbeats
from tests.transport._wsserver import connect, serving

INTERVAL = 10.0
TIMEOUT = 4.0


async def test_an_unread_answer_keeps_the_link(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as server:
        agent = DeviceAgent(server.url(), "dev", heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT)
        link, peer = await connect(server)
        heartbeats: list[tuple[float, str]] = []
        async with trio.open_nursery() as nursery:
            conn = _Connection(link, nursery, Heartbeats(INTERVAL, TIMEOUT, trio.current_time()))
            started = trio.current_time()
            nursery.start_soon(agent._heartbeats, conn)
            text = await peer.next_message()
            heartbeats.append((trio.current_time(), text))
            await peer.send(TextMessage(encode_text(builders.registration_confirmation())))
            text = await peer.next_message()
            heartbeats.append((trio.current_time(), text))
            nursery.cancel_scope.cancel()
        # Unread past the timeout, the answer kept the link: the next heartbeat still went out, on time.
        assert [at - started for at, _ in heartbeats] == [INTERVAL, 2 * INTERVAL]
        assert all('"type":"heartbeat"' in text for _, text in heartbeats)
        assert conn.failure is None and agent.stats.dead_links == 0
        await link.aclose()


async def test_silence_still_ends_the_link_at_interval_plus_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as server:
        agent = DeviceAgent(server.url(), "dev", heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT)
        link, peer = await connect(server)
        async with trio.open_nursery() as nursery:
            conn = _Connection(link, nursery, Heartbeats(INTERVAL, TIMEOUT, trio.current_time()))
            started = trio.current_time()
            nursery.start_soon(agent._heartbeats, conn)
            assert '"type":"heartbeat"' in await peer.next_message()  # and no answer at all
            await trio.sleep_forever()  # until the heartbeat loop fails the link
        assert isinstance(conn.failure, LinkDead)
        assert trio.current_time() - started == INTERVAL + TIMEOUT
        assert agent.stats.dead_links == 1
        await link.aclose()
