"""Running tasks on IDLE devices: one lane per device (FIFO, one task at a time), one result type.

A :class:`TaskLane` is everything about one device's tasks: its queue, the task running on it, and the live
session tasks go out on. It talks to the manager only through :class:`LaneHost` (the device's status and the
event stream are the manager's); the manager in turn drives the lane with four calls — ``device_started`` /
``device_stopped`` (the device's runner began / ended) and ``attach`` / ``detach`` (a link reached IDLE / ended).
A :class:`TaskBook` holds what the lanes of one manager share: the task ids pending and the limit on tasks running
at once across the manager (``max_concurrent_tasks``, a :class:`trio.CapacityLimiter`).

How a task travels: the caller joins the lane's queue (a ``trio.Semaphore(1)``, which wakes waiters in FIFO
order; a cancelled waiter simply leaves it, so a task cancelled while queued is never sent). At the head of the
queue it waits for the device to be IDLE — across reconnections — and for a token of the manager-wide limit, then
sends TASK (``session_id = "<task_name>@<task_id>"``), marks the device BUSY and waits for the TASK_END with that
session id *on that link*. All that waiting is inside the task's time bound (the caller's scope, else
``task_timeout``).

The lane's slot and the limit's token are released by whoever ends the task: the TASK_END handler, an ERROR that
rejects the TASK, or the link's end. So a caller that gives up while its task runs does not free the device early:
it stays BUSY until its TASK_END arrives (the result is dropped), and tasks never overlap on a device.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final, Literal, Protocol

import msgspec
import trio

from ..aip import ClientMessage, ServerMessage, TaskStatus, builders
from ..errors import GalaxyTrioError
from .session import ClientSession, PendingTask, SessionEnded, clip

__all__ = [
    "DeviceNotConnected",
    "DuplicateTaskId",
    "LaneHost",
    "TaskBook",
    "TaskClock",
    "TaskLane",
    "TaskQueueFull",
    "TaskRefused",
    "TaskResult",
    "TaskTimings",
]

logger = logging.getLogger("galaxy_trio.manager")

#: TASK_END errors that mean the task was cut off, not run and failed: error_type ``device_disconnection``.
_DISCONNECTION_TEXTS: Final = frozenset({builders.DEVICE_DISCONNECTED, builders.SERVER_SHUTTING_DOWN})

#: Bound on sending one TASK frame; the send is shielded so a cancelled caller cannot leave half a TASK behind.
_SEND_GRACE: Final = 5.0

ErrorType = Literal["rejected", "device_disconnection", "device_failed", "task_failed", "timeout"]


class TaskRefused(GalaxyTrioError):
    """The task was refused before it was queued; nothing was sent."""


class DeviceNotConnected(TaskRefused):
    """The device is registered but not being connected (FAILED, or never or no longer connecting)."""


class TaskQueueFull(TaskRefused):
    """The device's task queue is at its bound (``task_queue_size``)."""


class DuplicateTaskId(TaskRefused):
    """A task with this id is already pending on this manager."""


class TaskTimings(msgspec.Struct, frozen=True, kw_only=True):
    """Wall-clock times (epoch seconds) and durations (seconds) of one task."""

    queued_at: float
    started_at: float | None
    finished_at: float
    queued_s: float
    run_s: float | None
    total_s: float


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :meth:`ConstellationDeviceManager.assign_task_to_device`.

    ``status`` is ``completed`` or ``failed``. On failure ``error_type`` says why: ``rejected`` (the server refused
    the TASK), ``device_disconnection`` (the link dropped, or the server shut down, while it ran), ``device_failed``
    (the device gave up or was disconnected while the task waited), ``task_failed`` (the device side ran it and
    reported failure), or ``timeout`` (the default ``task_timeout`` ran out, queue time included).
    """

    task_id: str
    device_id: str
    status: Literal["completed", "failed"]
    result: Any = None
    error: str | None = None
    error_type: ErrorType | None = None
    timings: TaskTimings | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"


class TaskClock:
    """When a task was queued and started, for its :class:`TaskTimings` (also used by fleet routing)."""

    __slots__ = ("queued_at", "queued_mono", "started_at", "started_mono")

    def __init__(self) -> None:
        self.queued_at = time.time()
        self.queued_mono = trio.current_time()
        self.started_at: float | None = None
        self.started_mono: float | None = None

    def start(self) -> None:
        self.started_at = time.time()
        self.started_mono = trio.current_time()

    def timings(self) -> TaskTimings:
        now_mono = trio.current_time()
        started = self.started_mono
        return TaskTimings(
            queued_at=self.queued_at,
            started_at=self.started_at,
            finished_at=time.time(),
            queued_s=(started if started is not None else now_mono) - self.queued_mono,
            run_s=None if started is None else now_mono - started,
            total_s=now_mono - self.queued_mono,
        )

    def failed(self, task_id: str, device_id: str, error_type: ErrorType, error: str) -> TaskResult:
        """A failed :class:`TaskResult`, timed by this clock."""
        return TaskResult(
            task_id=task_id,
            device_id=device_id,
            status="failed",
            error=error,
            error_type=error_type,
            timings=self.timings(),
        )


class LaneHost(Protocol):
    """The manager's side of one device's lane: the lane reports what its tasks do, the manager keeps the device's
    status (BUSY/IDLE, ``current_task_id``) and publishes the task events."""

    @property
    def device_id(self) -> str: ...

    def task_queued(self, task_id: str) -> None:
        """A task joined the queue (TASK_QUEUED)."""

    def task_started(self, task_id: str) -> None:
        """The task is going out to the device: BUSY with it (TASK_STARTED)."""

    def task_left(self, task_id: str, *, link_alive: bool) -> None:
        """The device no longer runs the task: back to IDLE if its link is alive."""

    def task_finished(self, task_id: str, error_type: ErrorType | None) -> None:
        """The caller has the task's result (TASK_FINISHED)."""


class TaskBook:
    """What the lanes of one manager share: the task ids pending, and the limit on tasks running at once."""

    __slots__ = ("_pending", "limiter", "task_name", "task_queue_size", "task_timeout")

    def __init__(
        self, *, task_name: str, task_queue_size: int, task_timeout: float, max_concurrent_tasks: int | None
    ) -> None:
        self.task_name = task_name
        self.task_queue_size = task_queue_size
        self.task_timeout = task_timeout
        #: Held by each task from just before its TASK goes out until it ends; ``None``: no limit.
        self.limiter = None if max_concurrent_tasks is None else trio.CapacityLimiter(max_concurrent_tasks)
        self._pending: set[str] = set()

    def lane(self, host: LaneHost) -> TaskLane:
        """A new lane for one device, reporting to ``host``."""
        return TaskLane(self, host)

    @property
    def running(self) -> int:
        """Tasks holding a token of the limit (0 when there is no limit)."""
        return 0 if self.limiter is None else self.limiter.borrowed_tokens

    def claim(self, task_id: str) -> None:
        """Mark ``task_id`` pending; :class:`DuplicateTaskId` if it already is."""
        if task_id in self._pending:
            raise DuplicateTaskId(f"task {task_id!r} is already pending")
        self._pending.add(task_id)

    def release(self, task_id: str) -> None:
        self._pending.discard(task_id)


class TaskLane:
    """One device's tasks: its FIFO queue, the task running on it and the live session; see the module docstring."""

    __slots__ = ("_book", "_changed", "_current", "_host", "_queued", "_running", "_session", "_slot", "_stop_reason")

    def __init__(self, book: TaskBook, host: LaneHost) -> None:
        self._book = book
        self._host = host
        #: One task at a time per device; trio.Semaphore wakes waiters in FIFO order.
        self._slot = trio.Semaphore(1)
        self._queued = 0
        self._current: str | None = None
        self._session: ClientSession | None = None
        self._running = False
        self._stop_reason = "device not started"
        #: Made when a task first waits for the device (most devices never queue one: no Event per idle device).
        self._changed: trio.Event | None = None

    @property
    def queue_depth(self) -> int:
        """Tasks waiting for the device (the one running not included)."""
        return self._queued

    @property
    def current_task(self) -> str | None:
        """The id of the task the device runs now."""
        return self._current

    # --- the manager's calls -----------------------------------------------------------------------------------

    def device_started(self) -> None:
        """The device's runner began: queued tasks wait for it to become IDLE."""
        self._running = True
        self._notify()

    def device_stopped(self, reason: str) -> None:
        """The device's runner ended (FAILED, disconnected, removed): tasks still waiting fail with ``reason``."""
        self._running = False
        self._stop_reason = reason
        self._notify()

    def attach(self, session: ClientSession) -> None:
        """The device is IDLE on ``session``: route its TASK_END and ERROR frames here; waiting tasks may go."""

        def on_task_end(frame: ServerMessage) -> None:
            session_id = frame.session_id or ""
            if session_id not in session.tasks:
                # Unknown session, or a session of another device's link: never ours to act on (UFO advisory class).
                logger.warning(
                    "device %s: ignoring TASK_END for unknown session %r", self._host.device_id, clip(session_id, 100)
                )
                return
            self._finish(session, session_id, frame)

        def on_error(text: str) -> None:
            # ERRORs carry no correlation id; one arriving before a task's ack is that TASK's rejection
            # (UFO's server checks a TASK before acking it). After the ack it cannot be about the task.
            unacked = [sid for sid, pending in session.tasks.items() if not pending.acked]
            if not unacked:
                logger.warning("device %s: server error: %s", self._host.device_id, text)
                return
            for session_id in unacked:
                self._finish(session, session_id, builders.server_error(text))

        session.on_task_end = on_task_end
        session.on_error = on_error
        self._session = session
        self._notify()

    def detach(self, session: ClientSession) -> None:
        """``session``'s link ended: its in-flight tasks have failed (``session.end``); free what they held."""
        if self._session is session:
            self._session = None
        for pending in session.tasks.values():
            pending.fail(SessionEnded(session.end_reason or "link closed"))
            self._free(pending, link_alive=False)
        session.tasks.clear()
        self._notify()

    # --- the caller's side -------------------------------------------------------------------------------------

    async def run(self, task_id: str, description: str, task_data: dict[str, Any] | None) -> TaskResult:
        """Queue, send and await one task. Refusals (duplicate id, full queue) raise :class:`TaskRefused`."""
        book = self._book
        device_id = self._host.device_id
        book.claim(task_id)  # a duplicate id is the more specific refusal: checked before the queue's room
        if self._queued >= book.task_queue_size:
            book.release(task_id)
            raise TaskQueueFull(
                f"device {device_id!r} already has {self._queued} queued tasks (task_queue_size="
                f"{book.task_queue_size}); task {task_id!r} refused"
            )
        clock = TaskClock()
        # The default bound applies only when the caller has set no deadline of its own.
        default_bound = book.task_timeout if trio.current_effective_deadline() == math.inf else math.inf
        try:
            with trio.move_on_after(default_bound) as bound:
                result = await self._queue_and_run(task_id, description, task_data, clock)
            if bound.cancelled_caught:
                result = clock.failed(
                    task_id,
                    device_id,
                    "timeout",
                    f"task did not finish within task_timeout={default_bound:g}s (queue time included)",
                )
        finally:
            book.release(task_id)
        self._host.task_finished(task_id, result.error_type)
        return result

    async def _queue_and_run(
        self, task_id: str, description: str, task_data: dict[str, Any] | None, clock: TaskClock
    ) -> TaskResult:
        host = self._host
        device_id = host.device_id
        self._queued += 1
        host.task_queued(task_id)
        try:
            await self._slot.acquire()
        finally:
            self._queued -= 1
        pending = PendingTask(task_id)
        handed_over = False
        try:
            session = await self._wait_for_turn(pending)
            if session is None:
                return clock.failed(
                    task_id, device_id, "device_failed", f"device {device_id!r} stopped: {self._stop_reason}"
                )
            session_id = f"{self._book.task_name}@{task_id}"
            session.tasks[session_id] = pending
            # From here the slot (and the limit's token) belong to the in-flight task: TASK_END, a rejection or the
            # link's end frees them.
            handed_over = True
            self._current = task_id
            host.task_started(task_id)
            clock.start()
            await self._send(session, task_id, self._task_frame(task_id, session_id, description, task_data))
            try:
                reply = await pending.wait()
            except SessionEnded as exc:
                return clock.failed(task_id, device_id, "device_disconnection", f"link to device lost mid-task: {exc}")
            return _result_from(reply, task_id, device_id, clock)
        finally:
            if not handed_over:
                self._slot.release()

    async def _wait_for_turn(self, pending: PendingTask) -> ClientSession | None:
        """The live session once the device is IDLE and, with a limit, a token is held for ``pending``; ``None``
        (and no token) if the device stops first."""
        limiter = self._book.limiter
        while True:
            session = await self._live_session()
            if session is None or limiter is None:
                return session
            await limiter.acquire_on_behalf_of(pending)
            session = self._ready_session()
            if session is not None:
                return session
            # The link dropped while the task waited for capacity: give the token back, wait for the device again.
            limiter.release_on_behalf_of(pending)

    async def _live_session(self) -> ClientSession | None:
        while True:
            session = self._ready_session()
            if session is not None:
                return session
            if not self._running:
                return None
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def _ready_session(self) -> ClientSession | None:
        session = self._session
        return session if session is not None and not session.ended else None

    def _task_frame(
        self, task_id: str, session_id: str, description: str, task_data: dict[str, Any] | None
    ) -> ClientMessage:
        task_name = self._book.task_name
        device_id = self._host.device_id
        frame = builders.task_request(
            builders.constellation_client_id(task_name, device_id),
            device_id,
            session_id=session_id,
            task_name=f"galaxy/{task_name}/{task_id}",
            request=description,
        )
        if task_data is not None:
            frame.metadata = {"task_data": task_data}
        return frame

    @staticmethod
    async def _send(session: ClientSession, task_id: str, frame: ClientMessage) -> None:
        """Send the TASK shielded and bounded: a cancelled caller cannot leave half a TASK behind."""
        with trio.CancelScope(shield=True), trio.move_on_after(_SEND_GRACE) as send_scope:
            try:
                await session.send(frame)
            except SessionEnded:
                pass  # the link's end fails the task (detach)
        if send_scope.cancelled_caught:
            session.end(f"sending TASK {task_id} stalled for {_SEND_GRACE:g}s")

    def _finish(self, session: ClientSession, session_id: str, frame: ServerMessage) -> None:
        pending = session.tasks.pop(session_id, None)
        if pending is None:
            return
        pending.resolve(frame)
        self._free(pending, link_alive=not session.ended)

    def _free(self, pending: PendingTask, *, link_alive: bool) -> None:
        """The device no longer runs ``pending``: release its slot and token, tell the host."""
        if self._current == pending.task_id:
            self._current = None
        self._host.task_left(pending.task_id, link_alive=link_alive)
        if self._book.limiter is not None:
            self._book.limiter.release_on_behalf_of(pending)
        self._slot.release()

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()


def _result_from(frame: ServerMessage, task_id: str, device_id: str, clock: TaskClock) -> TaskResult:
    if frame.type.value == "error":
        return clock.failed(task_id, device_id, "rejected", f"server rejected the task: {frame.error}")
    if frame.status is TaskStatus.COMPLETED:
        return TaskResult(
            task_id=task_id, device_id=device_id, status="completed", result=frame.result, timings=clock.timings()
        )
    error = clip(frame.error or "task failed")
    error_type: ErrorType = "device_disconnection" if error in _DISCONNECTION_TEXTS else "task_failed"
    return TaskResult(
        task_id=task_id,
        device_id=device_id,
        status="failed",
        result=frame.result,
        error=error,
        error_type=error_type,
        timings=clock.timings(),
    )
