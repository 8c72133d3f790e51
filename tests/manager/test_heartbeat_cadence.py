"""Heartbeats go out every ``heartbeat_interval``, whatever ``heartbeat_timeout`` is (the cadence bug of #11).

Before the fix, ``keep_alive`` slept until ``sent_at + reply_window`` before planning the next beat, so with
``interval < timeout`` beats went every ``timeout``. Driven here through the real driver and a real link, on
trio's MockClock: exact times, no waiting.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

from galaxy_trio.aip import builders, encode_text
from galaxy_trio.manager.activate import keep_alive
from galaxy_trio.manager.session import ClientSession
from tests.transport._wsserver import connect, serving


@pytest.mark.parametrize(("interval", "window"), [(1.0, 10.0), (3.0, 3.0), (10.0, 3.0)])
async def test_heartbeats_keep_the_interval_for_every_interval_timeout_pair(
    autojump_clock: trio.testing.MockClock, interval: float, window: float
) -> None:
    missed: list[float] = []
    sent_at: list[float] = []
    async with serving() as server:
        link, peer = await connect(server)
        async with trio.open_nursery() as nursery:
            session = ClientSession(link, nursery.cancel_scope, "dev")
            await nursery.start(session.read_loop)
            started = trio.current_time()
            nursery.start_soon(
                partial(
                    keep_alive,
                    session,
                    "galaxy@dev",
                    interval=interval,
                    reply_window=window,
                    on_missed=lambda: missed.append(trio.current_time()),
                )
            )
            for _ in range(6):
                assert '"type":"heartbeat"' in await peer.next_message()
                sent_at.append(trio.current_time() - started)
                await peer.send(TextMessage(encode_text(builders.heartbeat_ack())))
            # Then the server falls silent: dead exactly `window` after the first unanswered beat.
            nursery.start_soon(_drain, peer)
        assert sent_at == [interval * k for k in range(1, 7)]
        assert missed == [started + 7 * interval + window]
        await link.aclose()


async def _drain(peer: object) -> None:
    while True:
        await peer.next_message()  # type: ignore[attr-defined]
