"""Running tasks on IDLE devices: per-device FIFO queue, one task at a time, one result type.

How a task travels: the caller joins the device's queue (a ``trio.Semaphore(1)``, which wakes waiters in FIFO
order; a cancelled waiter simply leaves it, so a task cancelled while queued is never sent). At the head of the
queue it waits for the device to be IDLE — across reconnections — then sends TASK (``session_id =
"<task_name>@<task_id>"``), marks the device BUSY and waits for the TASK_END with that session id *on that link*.

The device's slot is released by whoever ends the task: the TASK_END handler, an ERROR that rejects the TASK,
or the link's end. So a caller that gives up while its task runs does not free the device early: it stays BUSY
until its TASK_END arrives (the result is dropped), and tasks never overlap on a device.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import trio

from ..aip import ServerMessage, TaskStatus, builders
from ..errors import GalaxyTrioError
from .events import EventKind
from .profile import DeviceStatus
from .session import ClientSession, PendingTask, SessionEnded, clip

if TYPE_CHECKING:
    from .device_manager import ConstellationDeviceManager, _Device

__all__ = [
    "DeviceNotConnected",
    "DuplicateTaskId",
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


class TaskBook:
    """Task ids pending on one manager (a task id is refused while it is pending)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: set[str] = set()


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


async def run_task(
    manager: ConstellationDeviceManager,
    device: _Device,
    task_id: str,
    description: str,
    task_data: dict[str, Any] | None,
) -> TaskResult:
    """Queue, send and await one task; see the module docstring. Refusals raise :class:`TaskRefused`."""
    profile = device.profile
    device_id = profile.device_id
    book = manager._tasks
    if task_id in book.pending:
        raise DuplicateTaskId(f"task {task_id!r} is already pending")
    if device.runner is None:
        registered = ", ".join(sorted(manager._devices))
        raise DeviceNotConnected(
            f"device {device_id!r} is {profile.status.value} and not connecting"
            f"{f' ({profile.failure_reason})' if profile.failure_reason else ''}; "
            f"call connect_device() first. Registered devices: {registered}"
        )
    if device.queued >= manager.settings.task_queue_size:
        raise TaskQueueFull(
            f"device {device_id!r} already has {device.queued} queued tasks (task_queue_size="
            f"{manager.settings.task_queue_size}); task {task_id!r} refused"
        )
    book.pending.add(task_id)
    clock = TaskClock()
    # The default bound applies only when the caller has set no deadline of its own.
    default_bound = manager.settings.task_timeout if trio.current_effective_deadline() == math.inf else math.inf
    try:
        with trio.move_on_after(default_bound) as bound:
            result = await _queue_and_run(manager, device, task_id, description, task_data, clock)
        if bound.cancelled_caught:
            result = clock.failed(
                task_id,
                device_id,
                "timeout",
                f"task did not finish within task_timeout={default_bound:g}s (queue time included)",
            )
    finally:
        book.pending.discard(task_id)
    manager._emit(EventKind.TASK_FINISHED, device_id, task_id=task_id, error_type=result.error_type)
    return result


async def _queue_and_run(
    manager: ConstellationDeviceManager,
    device: _Device,
    task_id: str,
    description: str,
    task_data: dict[str, Any] | None,
    clock: TaskClock,
) -> TaskResult:
    device_id = device.profile.device_id
    device.queued += 1
    manager._emit(EventKind.TASK_QUEUED, device_id, task_id=task_id)
    try:
        await device.slot.acquire()
    finally:
        device.queued -= 1
    handed_over = False
    try:
        session = await _wait_until_idle(device)
        if session is None:
            reason = device.profile.failure_reason or device.stop_reason or f"device is {device.profile.status.value}"
            return clock.failed(task_id, device_id, "device_failed", f"device {device_id!r} stopped: {reason}")
        session_id = f"{manager.task_name}@{task_id}"
        pending = PendingTask(task_id)
        session.tasks[session_id] = pending
        device.profile.current_task_id = task_id
        manager._set_status(device, DeviceStatus.BUSY, f"task {task_id}")
        clock.start()
        manager._emit(EventKind.TASK_STARTED, device_id, task_id=task_id)
        frame = builders.task_request(
            builders.constellation_client_id(manager.task_name, device_id),
            device_id,
            session_id=session_id,
            task_name=f"galaxy/{manager.task_name}/{task_id}",
            request=description,
        )
        if task_data is not None:
            frame.metadata = {"task_data": task_data}
        # From here the slot belongs to the in-flight task: TASK_END, a rejection or the link's end frees it.
        handed_over = True
        with trio.CancelScope(shield=True), trio.move_on_after(_SEND_GRACE) as send_scope:
            try:
                await session.send(frame)
            except SessionEnded:
                pass
        if send_scope.cancelled_caught:
            session.end(f"sending TASK {task_id} stalled for {_SEND_GRACE:g}s")
        try:
            reply = await pending.wait()
        except SessionEnded as exc:
            return clock.failed(task_id, device_id, "device_disconnection", f"link to device lost mid-task: {exc}")
        return _result_from(reply, task_id, device_id, clock)
    finally:
        if not handed_over:
            device.slot.release()


async def _wait_until_idle(device: _Device) -> ClientSession | None:
    """The live session once the device is IDLE; ``None`` if the device stops (FAILED or disconnected)."""
    while True:
        session = device.session
        if device.profile.status is DeviceStatus.IDLE and session is not None and not session.ended:
            return session
        if device.runner is None:
            return None
        await device.changed.wait()


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


# --- hooks the manager installs on each live session -----------------------------------------------------------


def attach(manager: ConstellationDeviceManager, device: _Device, session: ClientSession) -> None:
    """Route this session's TASK_END and ERROR frames to the tasks in flight on it."""

    def finish(session_id: str, frame: ServerMessage) -> None:
        pending = session.tasks.pop(session_id, None)
        if pending is None:
            return
        pending.resolve(frame)
        if device.profile.current_task_id == pending.task_id:
            device.profile.current_task_id = None
        if device.profile.status is DeviceStatus.BUSY and not session.ended:
            manager._set_status(device, DeviceStatus.IDLE, f"task {pending.task_id} ended")
        device.slot.release()

    def on_task_end(frame: ServerMessage) -> None:
        session_id = frame.session_id or ""
        if session_id not in session.tasks:
            # Unknown session, or a session of another device's link: never ours to act on (UFO advisory class).
            logger.warning(
                "device %s: ignoring TASK_END for unknown session %r", device.profile.device_id, clip(session_id, 100)
            )
            return
        finish(session_id, frame)

    def on_error(text: str) -> None:
        # ERRORs carry no correlation id; one arriving before a task's ack is that TASK's rejection
        # (UFO's server checks a TASK before acking it). After the ack it cannot be about the task.
        unacked = [sid for sid, pending in session.tasks.items() if not pending.acked]
        if not unacked:
            logger.warning("device %s: server error: %s", device.profile.device_id, text)
            return
        for session_id in unacked:
            finish(session_id, builders.server_error(text))

    session.on_task_end = on_task_end
    session.on_error = on_error


def detach(manager: ConstellationDeviceManager, device: _Device, session: ClientSession) -> None:
    """The link ended: its in-flight tasks have failed (``session.end``); free their slots."""
    for pending in session.tasks.values():
        pending.fail(SessionEnded(session.end_reason or "link closed"))
        if device.profile.current_task_id == pending.task_id:
            device.profile.current_task_id = None
        device.slot.release()
    session.tasks.clear()
