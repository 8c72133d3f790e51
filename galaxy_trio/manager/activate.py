"""Phase 5 — activation: the device is IDLE, and heartbeats keep proving that its link is alive.

UFO never checked heartbeat age, so a silently dead server went unnoticed for about 210 s (PROTOCOL.md §11.2).
Here a heartbeat goes out every ``heartbeat_interval`` seconds, and if no frame at all arrives within
``heartbeat_timeout`` of one, the link is declared dead and the device reconnects. Heartbeats keep a fixed cadence,
so a peer that falls silent is detected no sooner than ``heartbeat_timeout`` and no later than
``heartbeat_interval + heartbeat_timeout`` after its last frame. Bytes from the server that wait unread in the
socket when the window closes count as an answer: under load (thousands of devices registering at once) the
manager's loop may reach a reply late, and that is not a dead link.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..aip import ClientType, builders, utc_timestamp
from ..aip.client_protocol import Beat, HeartbeatClock
from ..errors import LinkError
from .session import ClientSession

__all__ = ["keep_alive"]


async def keep_alive(
    session: ClientSession,
    client_id: str,
    *,
    interval: float,
    reply_window: float,
    on_missed: Callable[[], None],
) -> None:
    """Send heartbeats until the session ends; end it when one goes unanswered.

    The cadence and the liveness rule are :class:`~galaxy_trio.aip.client_protocol.HeartbeatClock`'s (shared with
    the device agent); this function only sleeps, sends and reports.
    """
    frame = builders.heartbeat(client_id, ClientType.CONSTELLATION)
    clock = HeartbeatClock(interval, reply_window, now=trio.current_time())
    while True:
        await trio.sleep_until(clock.wake_at)
        now = trio.current_time()
        beat = clock.poll(now, last_frame_at=session.last_frame_at, unread=session.has_unread_data())
        if beat is Beat.DEAD:
            on_missed()
            session.end(f"no frame within {reply_window:g}s of a heartbeat; link presumed dead")
            return
        if beat is Beat.SEND:
            frame.timestamp = utc_timestamp()
            try:
                await session.send(frame)
            except LinkError:
                return
            clock.sent(now)
