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

The waits between beats are kept by one :class:`HeartbeatClock` per manager, not by a ``trio.sleep_until`` per
device: a heap of wake times and one task that wakes each device's own task when its time comes. A sleep per
device per beat was a cancel scope entered, expired (a Cancelled raised and caught) and closed for every beat, and
one such scope held by every idle device (its state, the sleep's frames, a deadline entry: about 1.3 KiB of an
idle device's memory). The clock only wakes; every device still sends its own heartbeats from its own task, so a
peer whose socket is full stalls that device alone, never the clock or another device.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio

from ..aip import ClientType, ServerMessage, builders
from ..aip.client_protocol import Heartbeats
from ..errors import LinkError
from .session import ClientSession
from .state import HeartbeatStats

__all__ = ["HeartbeatClock", "keep_alive"]


class HeartbeatClock:
    """Wakes each sleeping device task at the time it named: one heap and one task for all of a manager's devices.

    :meth:`run` is the one task (the manager's nursery runs it); :meth:`sleep_until` is what a device's task
    awaits instead of ``trio.sleep_until``. Exact on trio's clock, the MockClock included: the clock's own sleep
    ends at the earliest wake time, and every sleeper due then is woken in that same instant, earliest first.
    A sleeper that is cancelled leaves its heap entry behind, marked dead, and the clock drops it when its time
    comes (no search of the heap per cancellation).
    """

    __slots__ = ("_heap", "_order", "_timer")

    def __init__(self) -> None:
        #: ``[wake time, arrival order, the task to wake or None once it stopped waiting]``, a heap by time (lists,
        #: compared in C, and mutable so that a cancelled sleeper can blank its task).
        self._heap: list[list[Any]] = []
        self._order = itertools.count()  # equal wake times: the heap never compares the tasks
        #: The run task's current sleep, whose deadline is the heap's earliest time (None while it wakes others).
        self._timer: trio.CancelScope | None = None

    @property
    def sleepers(self) -> int:
        """Wake times still in the heap (those of sleepers cancelled meanwhile included)."""
        return len(self._heap)

    async def run(self) -> None:
        """Wake every sleeper at its time, until cancelled."""
        heap = self._heap
        reschedule = trio.lowlevel.reschedule
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                task = heapq.heappop(heap)[2]
                if task is not None:
                    reschedule(task)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until trio's clock reads ``deadline`` (a checkpoint, cancellable like ``trio.sleep_until``)."""
        entry = [deadline, next(self._order), trio.lowlevel.current_task()]
        heapq.heappush(self._heap, entry)
        timer = self._timer
        if timer is not None and deadline < timer.deadline:
            timer.deadline = deadline

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            entry[2] = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def keep_alive(
    session: ClientSession,
    clock: HeartbeatClock,
    *,
    interval: float,
    reply_window: float,
    on_missed: Callable[[], None],
    stats: HeartbeatStats | None = None,
) -> None:
    """Send heartbeats until the session ends; end it when one goes unanswered. ``clock`` keeps the waits."""
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
        await clock.sleep_until(beats.wake_at)
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
