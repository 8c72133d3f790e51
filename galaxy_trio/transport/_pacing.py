"""A turnstile that lets a bounded number of tasks through per pass of trio's scheduler.

Why: trio runs, in one pass, every task that became runnable since the last one, and only then looks at the
sockets again. When thousands of peers close at once, their readers all wake in the same pass, and the close
handling of each (the close frame's acknowledgement, the socket's close, the connection's cleanup: a few hundred
microseconds) lands in one or two passes of seconds, during which no other connection's frame is even read
(issue #15 item 3: a bystander's heartbeat round trip reached 1.3 s while 5,000 devices closed). Each close
passes this turnstile first, so at most ``per_pass`` of them start in any one pass, and every other connection is
served in between.

How: a :class:`trio.CapacityLimiter` of ``per_pass`` tokens, each held across exactly one schedule point. Taking a
free token is itself a schedule point (trio's limiter checkpoints), so a task holds it into the next pass and gives
it back there; a task that had to queue is handed the token by a leaver and wakes in the pass after. Either way a
token is used once per pass. Nothing is held while the task does its I/O, so a peer that stops reading (a blocked
send) cannot keep the others waiting; a queued task cancelled meanwhile leaves the queue and holds nothing.
"""

from __future__ import annotations

import trio

__all__ = ["PassTurnstile"]


class PassTurnstile:
    """At most ``per_pass`` tasks come out of :meth:`pass_through` in one scheduler pass; the rest queue, first
    come first served (see the module docstring)."""

    __slots__ = ("_tokens",)

    def __init__(self, per_pass: int) -> None:
        if per_pass < 1:
            raise ValueError(f"a turnstile lets at least one task through per pass, not {per_pass}")
        self._tokens = trio.CapacityLimiter(per_pass)

    @property
    def per_pass(self) -> int:
        return int(self._tokens.total_tokens)

    @property
    def waiting(self) -> int:
        """How many tasks queue for their pass (not counting those through in this one)."""
        return self._tokens.statistics().tasks_waiting

    async def pass_through(self) -> None:
        """Wait for this task's pass (always a schedule point). Raises Cancelled only while queued."""
        tokens = self._tokens
        await tokens.acquire()  # a free token: a checkpoint, shielded once taken, so this task resumes holding it
        tokens.release()
