"""A heartbeat reply that arrived in time but is still unread (the manager's loop is behind) is not silence.

Under load — thousands of devices registering at once — the reader may reach a reply after the reply window has
closed; before this check, such links were declared dead and re-registered into the very backlog that delayed
them. The reader is held back here by simply not running it until the test says so.
"""

from __future__ import annotations

from functools import partial

import trio
import trio.testing
from wsproto.events import TextMessage

from galaxy_trio.aip import builders, encode_text
from galaxy_trio.manager.activate import HeartbeatClock, keep_alive
from galaxy_trio.manager.session import ClientSession
from tests.transport._wsserver import connect, serving

INTERVAL = 10.0
WINDOW = 3.0


async def test_a_reply_waiting_unread_is_not_a_missed_heartbeat_but_silence_still_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    missed: list[float] = []
    async with serving() as server:
        link, peer = await connect(server)
        clock = HeartbeatClock()
        async with trio.open_nursery() as outer:
            outer.start_soon(clock.run)
            async with trio.open_nursery() as nursery:
                session = ClientSession(link, nursery.cancel_scope, "dev", client_id="galaxy@dev")
                started = trio.current_time()
                nursery.start_soon(
                    partial(
                        keep_alive,
                        session,
                        clock,
                        interval=INTERVAL,
                        reply_window=WINDOW,
                        on_missed=lambda: missed.append(trio.current_time()),
                    )
                )
                assert '"type":"heartbeat"' in await peer.next_message()
                await peer.send(TextMessage(encode_text(builders.registration_confirmation())))
                # The window closes with the reply unread (no reader runs): the next heartbeat still goes out.
                assert '"type":"heartbeat"' in await peer.next_message()
                assert trio.current_time() - started == 2 * INTERVAL
                assert missed == [] and not session.ended
                # Now the reader catches up, and the server falls silent: that is detected, exactly at a window's end.
                await nursery.start(session.read_loop)
            outer.cancel_scope.cancel()  # the heartbeat clock: the session is over
        # Read at the second heartbeat's send time, the late reply counts for it (else it would be missed at 23 s);
        # the third goes unanswered.
        assert missed == [started + 3 * INTERVAL + WINDOW]
        assert session.end_reason is not None and "no frame within 3s of a heartbeat" in session.end_reason
        await link.aclose()
