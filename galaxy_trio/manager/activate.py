"""Phase 5 — activation: the device is IDLE, and heartbeats keep proving that its link is alive.

UFO never checked heartbeat age, so a silently dead server went unnoticed for about 210 s (PROTOCOL.md §11.2).
When to beat and when the link is dead is decided by the session's sans-IO protocol
(:class:`galaxy_trio.aip.client_protocol.Heartbeats`); this is its trio driver: sleep until the next time it
names, then beat or check. A heartbeat goes out every ``heartbeat_interval`` seconds whatever
``heartbeat_timeout`` is, and if no frame at all arrives within ``heartbeat_timeout`` of the oldest unanswered
heartbeat, the link is declared dead and the device reconnects. Bytes from the server that wait unread in the
socket when the window closes count as an answer: under load (thousands of devices registering at once) the
manager's loop may reach a reply late, and that is not a dead link.

With ``stats`` (the manager's :class:`~galaxy_trio.manager.state.HeartbeatStats`) it counts the beats sent and
missed and times each round trip: AIP's heartbeat ack carries no correlation id, but a server answers a link's
frames in order, so the n-th ack (a heartbeat with no ``session_id``; task acks carry one) answers the n-th beat.
A beat still unanswered ``reply_window`` after it went out while the link lives was answered some other way (an
ERROR) and is no longer waited for, so one refused beat cannot shift every later round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..aip import ClientType, ServerMessage, builders
from ..aip.client_protocol import Heartbeats
from ..errors import LinkError
from .session import ClientSession
from .state import HeartbeatStats

__all__ = ["keep_alive"]


async def keep_alive(
    session: ClientSession,
    *,
    interval: float,
    reply_window: float,
    on_missed: Callable[[], None],
    stats: HeartbeatStats | None = None,
) -> None:
    """Send heartbeats until the session ends; end it when one goes unanswered."""
    protocol = session.protocol
    # The schedule starts now, the moment the device is IDLE; liveness keeps what the reader recorded.
    beats = protocol.heartbeats = Heartbeats(interval, reply_window, trio.current_time())
    frame = builders.heartbeat(protocol.client_id, ClientType.CONSTELLATION)
    # When each beat not yet acked went out (trio time); a list, not a deque: it holds 0-2 items, and a deque
    # allocates a 64-slot block per device (760 bytes of an idle device's memory).
    unanswered: list[float] = []
    if stats is not None:
        _time_acks(session, stats, unanswered)
    while True:
        await trio.sleep_until(beats.wake_at)
        now = trio.current_time()
        dead_at = beats.presumed_dead_at
        # has_unread_data asks the socket: only when the window has closed.
        if dead_at is not None and now >= dead_at and beats.is_dead(now, unread=session.has_unread_data()):
            if stats is not None:
                stats.missed += 1
            on_missed()
            session.end(f"no frame within {reply_window:g}s of a heartbeat; link presumed dead")
            return
        if now >= beats.heartbeat_due_at:
            while unanswered and unanswered[0] < now - reply_window:
                del unanswered[0]  # a beat the server answered otherwise (an ERROR): its ack will not come
            unanswered.append(now)  # before sending: the reader may see the ack before send returns
            try:
                await session.send(protocol.heartbeat(now, frame))
            except LinkError:
                return
            if stats is not None:
                stats.sent += 1


def _time_acks(session: ClientSession, stats: HeartbeatStats, unanswered: list[float]) -> None:
    """Time each heartbeat ack against the oldest beat not yet answered, then do what the session did with it."""
    inner = session.on_heartbeat

    def on_heartbeat(ack: ServerMessage) -> None:
        if ack.session_id is None and unanswered:
            stats.round_trip(trio.current_time() - unanswered.pop(0))
        if inner is not None:
            inner(ack)

    session.on_heartbeat = on_heartbeat
