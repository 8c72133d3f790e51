"""Tasks started through the control API: run in the control server's nursery, results kept for a while.

A task outlives the HTTP request that started it (``?wait=false``, or a client that hung up): it belongs to the
control server's nursery, and its :class:`~galaxy_trio.manager.TaskResult` stays readable at
``GET /api/tasks/{id}`` until :data:`KEEP_FINISHED` newer tasks have finished.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from typing import Any, Final

import msgspec
import trio

from ..errors import GalaxyTrioError
from ..manager import ConstellationDeviceManager, DeviceEvent, EventKind, TaskRefused, TaskResult, UnknownDevice
from .fleet import FleetControl

__all__ = ["KEEP_FINISHED", "TaskBoard", "TaskRecord", "TaskSpec"]

#: Finished task results kept for ``GET /api/tasks/{id}``.
KEEP_FINISHED: Final = 1000


class TaskSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of ``POST /api/tasks``."""

    device_id: str
    request: str
    task_id: str | None = None
    timeout: float | None = None
    task_data: dict[str, Any] | None = None


class TaskRecord:
    """One task: accepted (queued by the manager) or refused, then finished with a TaskResult."""

    __slots__ = ("accepted", "device_id", "done", "refusal", "result", "task_id")

    def __init__(self, task_id: str, device_id: str) -> None:
        self.task_id = task_id
        self.device_id = device_id
        self.accepted = trio.Event()  # queued by the manager, refused, or finished: the answer to ?wait=false
        self.done = trio.Event()
        self.refusal: TaskRefused | UnknownDevice | None = None
        self.result: TaskResult | None = None


class TaskBoard:
    """Every task the control API started that is still running or recently finished."""

    __slots__ = ("_finished", "_fleet", "_manager", "_nursery", "_running")

    def __init__(
        self, manager: ConstellationDeviceManager, nursery: trio.Nursery, fleet: FleetControl | None = None
    ) -> None:
        self._manager = manager
        self._nursery = nursery
        #: In fleet mode tasks go through the member, which routes them to the device's owner.
        self._fleet = fleet
        self._running: dict[str, TaskRecord] = {}
        self._finished: OrderedDict[str, TaskRecord] = OrderedDict()

    def get(self, task_id: str) -> TaskRecord | None:
        return self._running.get(task_id) or self._finished.get(task_id)

    def start(self, spec: TaskSpec) -> TaskRecord:
        """Start the task in the background; wait on ``record.accepted`` for the manager's verdict."""
        task_id = spec.task_id or f"ctl-{secrets.token_hex(6)}"
        record = TaskRecord(task_id, spec.device_id)
        if task_id not in self._running:  # a duplicate is refused by the manager itself; keep the first record
            self._running[task_id] = record
        self._nursery.start_soon(self._run, record, spec, name=f"control-task:{task_id}")
        if self._fleet is not None and not self._fleet.owns(spec.device_id):
            # Another member's device: its queue is not ours to watch, so ?wait=false answers at once (a refusal
            # then shows at GET /api/tasks/{id}).
            record.accepted.set()
        return record

    def observe(self, event: DeviceEvent) -> None:
        """The manager queued (or started) one of our tasks: its ``?wait=false`` answer is ready."""
        if event.kind in (EventKind.TASK_QUEUED, EventKind.TASK_STARTED) and event.task_id is not None:
            record = self._running.get(event.task_id)
            if record is not None and record.device_id == event.device_id:
                record.accepted.set()

    async def _run(self, record: TaskRecord, spec: TaskSpec) -> None:
        bound = math.inf if spec.timeout is None else spec.timeout
        try:
            assign = self._manager.assign_task_to_device
            if self._fleet is not None:
                assign = self._fleet.assign_task_to_device
            with trio.move_on_after(bound) as scope:
                result = await assign(record.task_id, spec.device_id, spec.request, spec.task_data)
            if scope.cancelled_caught:
                result = TaskResult(
                    task_id=record.task_id,
                    device_id=spec.device_id,
                    status="failed",
                    error=f"task did not finish within timeout={bound:g}s (queue time included)",
                    error_type="timeout",
                )
            record.result = result
        except (TaskRefused, UnknownDevice) as exc:
            record.refusal = exc
        except GalaxyTrioError as exc:  # fleet mode: the registry is unreachable
            record.refusal = TaskRefused(f"task {record.task_id!r} not routed: {exc}")
        finally:
            record.accepted.set()
            record.done.set()
            if self._running.get(record.task_id) is record:
                del self._running[record.task_id]
                self._finished[record.task_id] = record
                while len(self._finished) > KEEP_FINISHED:
                    self._finished.popitem(last=False)
