"""The server's keepalive: one task watches every connection's link, instead of a task per connection.

Why one task: a keepalive task per connection (a sleep deadline, a ``move_on_after`` and a ping waiting for its
pong) cost ~0.43 ms of the ~1.64 ms of server CPU a constellation registration took (issue #16), most of it for
connections that never live long enough to be pinged. Here a connection's share is one small object in a heap
when it registers and a flag when it goes.

What it decides, per link: once nothing has come from the peer for ``interval`` seconds, the link is pinged; if
then nothing comes for ``timeout`` more seconds, the connection is told (its ``on_silent`` callback), and the
connection closes it (1011): the reaction belongs to the connection, which first settles its registration and its
sessions. Anything the peer sends counts as an answer, the pong included (UFO's clients, on the websockets
library, answer every ping): a peer busy sending frames is alive even when its pong waits behind them, and the
bytes of a peer whose reader is busy, in the socket but not yet read (:meth:`has_unread_data`), count too.

Compared with the per-connection keepalive it replaces (a ping every ``interval``, the link closed if that pong
did not come within ``timeout``): a silent peer is pinged and closed at the same moments (``interval`` after its
last frame, then ``timeout`` after the ping); a peer that answers pings is never closed; a peer that sends frames
but ignores pings is kept as long as its frames never stop for ``interval + timeout`` (before, its first
unanswered ping closed it). The new rule is never stricter than the old one. (With ``timeout`` longer than
``interval``, the ping after an answer waits for the previous ping's verdict time, ``timeout`` after it, where the
old keepalive sent it ``interval`` after the pong: later, never sooner.)

A keepalive acts on at most ``per_pass`` links (a ping sent or a verdict given) per pass of trio's scheduler; the
rest of what is due waits for the next passes, in due order. Why: links whose entries come due together (every
link pinged after the server was stopped for longer than ``interval``, a partition's worth of verdicts) would
otherwise all be acted on in one step, and every connection told in that step wakes in the same next pass: 5,000
closing in one pass hold every other client for 100-150 ms (issue #15 item 3; a turnstile after the wake-up
cannot spread the wake-up itself). A due entry is then late by a few passes at most.

How: each watched link has one entry in a heap of due times. A due ping is taken lazily: if the peer was heard
since, the entry moves to ``heard_at + interval`` and nothing is sent, so links that talk are never pinged. Pings
go out from short tasks of the keepalive's own nursery (a peer that stopped reading may block its ping's send,
never the keepalive), and the keepalive does not wait for them. A forgotten link's entry is dropped when it comes
due, or when forgotten entries outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Final, NoReturn, Protocol

import trio

from ..errors import LinkClosed

logger = logging.getLogger("galaxy_trio.server")

__all__ = ["Keepalive", "LinkWatch", "Watched"]

#: Forgotten entries tolerated in the heap beyond the live ones before it is rebuilt without them.
_COMPACT_SLACK: Final = 1024

#: How many links the keepalive acts on (pings or verdicts) per scheduler pass, by default: the number of closes
#: a server handles per pass (``transport.server.DEFAULT_CLOSES_PER_PASS``), for the same reason.
DEFAULT_ACTIONS_PER_PASS: Final = 16


class Watched(Protocol):
    """What the keepalive needs of a link (:class:`~galaxy_trio.transport.ServerLink` has it)."""

    @property
    def heard_at(self) -> float:
        """When bytes last came from the peer (trio's clock)."""
        ...

    def has_unread_data(self) -> bool:
        """Whether the peer's bytes wait in the socket, not yet read."""
        ...

    async def send_ping(self) -> None:
        """Send a ping, without waiting for its pong."""
        ...


class LinkWatch:
    """One watched link: a connection's handle, to give back to :meth:`Keepalive.forget` when it ends.

    Once forgotten (or judged silent) it lets go of the link and the callback: its heap entry may wait until it
    comes due, and must not keep the connection's objects alive meanwhile.
    """

    __slots__ = ("link", "on_silent", "pinged_at")

    def __init__(self, link: Watched, on_silent: Callable[[], None]) -> None:
        #: None once the watch is over; its heap entry, if any, is then dropped.
        self.link: Watched | None = link
        self.on_silent: Callable[[], None] | None = on_silent
        #: When the link was pinged and nothing has been heard since (its heap entry is the verdict), else None.
        self.pinged_at: float | None = None

    def end(self) -> Callable[[], None] | None:
        """Let go of the link; the callback, if the watch was still on."""
        on_silent, self.link, self.on_silent = self.on_silent, None, None
        return on_silent


class Keepalive:
    """The server-wide keepalive (see the module docstring). :meth:`run` is its task, in the server's nursery."""

    __slots__ = ("_forgotten", "_heap", "_interval", "_live", "_order", "_per_pass", "_sleep", "_timeout")

    def __init__(self, interval: float, timeout: float, *, per_pass: int = DEFAULT_ACTIONS_PER_PASS) -> None:
        if per_pass < 1:
            raise ValueError(f"a keepalive acts on at least one link per pass, not {per_pass}")
        self._interval = interval
        self._timeout = timeout
        self._per_pass = per_pass
        #: (due, order, watch): the watch's next ping (``pinged_at`` None) or verdict (``pinged_at`` set).
        self._heap: list[tuple[float, int, LinkWatch]] = []
        self._order = itertools.count()  # ties in due time: first in, first out; watches are never compared
        self._live = 0
        self._forgotten = 0  # entries in the heap whose watch was forgotten
        #: The scope :meth:`run` sleeps in until the earliest entry; an earlier new entry moves its deadline.
        self._sleep = trio.CancelScope()

    @property
    def watching(self) -> int:
        """How many links are watched."""
        return self._live

    def watch(self, link: Watched, on_silent: Callable[[], None]) -> LinkWatch:
        """Watch ``link`` from now on; ``on_silent`` is called (once, from the keepalive's task) if its peer falls
        silent. Never awaits."""
        watch = LinkWatch(link, on_silent)
        self._live += 1
        self._push(link.heard_at + self._interval, watch)
        return watch

    def forget(self, watch: LinkWatch) -> None:
        """Stop watching (the connection is ending). Idempotent, never awaits."""
        if watch.end() is None:
            return
        self._live -= 1
        self._forgotten += 1
        if self._forgotten > self._live + _COMPACT_SLACK:
            self._heap = [entry for entry in self._heap if entry[2].link is not None]
            heapq.heapify(self._heap)
            self._forgotten = 0

    def _push(self, due: float, watch: LinkWatch) -> None:
        heapq.heappush(self._heap, (due, next(self._order), watch))
        if due < self._sleep.deadline:
            self._sleep.deadline = due

    async def run(self) -> NoReturn:
        """Ping silent links and report dead ones, until cancelled."""
        async with trio.open_nursery() as pings:
            while True:
                heap = self._heap
                with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._sleep:
                    await trio.sleep_forever()
                self._take_due(trio.current_time(), pings)

    def _take_due(self, now: float, pings: trio.Nursery) -> None:
        """Act on the entries due by ``now``, up to ``per_pass`` pings and verdicts (the rest stay due, for the next
        passes: :meth:`run` comes back at once). Never awaits, so no link is watched or forgotten meanwhile."""
        heap = self._heap
        interval = self._interval
        actions = self._per_pass
        while heap and heap[0][0] <= now and actions:
            _, _, watch = heapq.heappop(heap)
            link = watch.link
            if link is None:
                self._forgotten -= 1
                continue
            heard_at = link.heard_at
            pinged_at = watch.pinged_at
            if pinged_at is None:
                if heard_at + interval > now:  # heard since: not silent yet, nothing to send
                    self._push(heard_at + interval, watch)
                    continue
                watch.pinged_at = now
                pings.start_soon(self._ping, link)
                actions -= 1
                self._push(now + self._timeout, watch)
            elif heard_at >= pinged_at:
                watch.pinged_at = None
                self._push(heard_at + interval, watch)  # (may be due at once, when timeout > interval)
            elif link.has_unread_data():
                # The answer is there, its reader has not got to it yet: heard now.
                watch.pinged_at = None
                self._push(now + interval, watch)
            else:
                on_silent = watch.end()
                assert on_silent is not None  # (a watch with a link has its callback)
                self._live -= 1
                actions -= 1
                try:
                    on_silent()
                except Exception:
                    # A bug must cost one connection its verdict, not every connection its keepalive.
                    logger.exception("internal error in a keepalive verdict")

    async def _ping(self, link: Watched) -> None:
        """Send one ping. Bounded: past ``timeout`` its verdict is due anyway, and a link whose ping could not be
        written is then silent (or, cut mid-frame, closed)."""
        with trio.move_on_after(self._timeout):
            try:
                await link.send_ping()
            except LinkClosed:
                pass
