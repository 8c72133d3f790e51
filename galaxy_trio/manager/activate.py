"""Phase 5 — activation: the device is IDLE, and heartbeats keep proving that its link is alive.

UFO never checked heartbeat age, so a silently dead server went unnoticed for about 210 s (PROTOCOL.md §11.2).
When to beat and when the link is dead is decided by the session's sans-IO protocol
(:class:`galaxy_trio.aip.client_protocol.Heartbeats`); this is its trio driver: sleep until the next time it
names, then beat or check. A heartbeat goes out every ``heartbeat_interval`` seconds whatever
``heartbeat_timeout`` is, and if no frame at all arrives within ``heartbeat_timeout`` of the oldest unanswered
heartbeat, the link is declared dead and the device reconnects. Bytes from the server that wait unread in the
socket when the window closes count as an answer: under load (thousands of devices registering at once) the
manager's loop may reach a reply late, and that is not a dead link.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..aip import ClientType, builders
from ..aip.client_protocol import Heartbeats
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
    protocol = session.protocol
    # The schedule starts now, the moment the device is IDLE; liveness keeps what the reader recorded.
    beats = protocol.heartbeats = Heartbeats(interval, reply_window, trio.current_time())
    frame = builders.heartbeat(client_id, ClientType.CONSTELLATION)
    while True:
        await trio.sleep_until(beats.wake_at)
        now = trio.current_time()
        dead_at = beats.presumed_dead_at
        # has_unread_data asks the socket: only when the window has closed.
        if dead_at is not None and now >= dead_at and beats.is_dead(now, unread=session.has_unread_data()):
            on_missed()
            session.end(f"no frame within {reply_window:g}s of a heartbeat; link presumed dead")
            return
        if now >= beats.heartbeat_due_at:
            try:
                await session.send(protocol.heartbeat(now, frame))
            except LinkError:
                return
