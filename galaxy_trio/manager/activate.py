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
    """Send heartbeats until the session ends; end it when one goes unanswered."""
    frame = builders.heartbeat(client_id, ClientType.CONSTELLATION)
    next_beat = trio.current_time() + interval
    while True:
        await trio.sleep_until(next_beat)
        sent_at = trio.current_time()
        frame.timestamp = utc_timestamp()
        try:
            await session.send(frame)
        except LinkError:
            return
        next_beat = sent_at + interval
        await trio.sleep_until(sent_at + reply_window)
        # On a loaded event loop a reply can sit in the socket past the window, unread: that is not silence.
        if session.last_frame_at < sent_at and not session.has_unread_data():
            on_missed()
            session.end(f"no frame within {reply_window:g}s of a heartbeat; link presumed dead")
            return
