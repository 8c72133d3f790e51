"""TEMPORARY: DeviceState derived from events, until the manager's own snapshot API lands (helper "lanes").

The fields are the agreed ones (BRIEF "Interfaces agreed"); once ``manager.get_all_device_states()`` exists this
module is deleted and :mod:`galaxy_trio.control.state` calls the manager.
"""

from __future__ import annotations

import time

import msgspec

from ..manager import AgentProfile, ConstellationDeviceManager, DeviceEvent, DeviceStatus, EventKind

__all__ = ["DeviceState", "StateTracker"]


class DeviceState(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    status: DeviceStatus
    phase: str | None
    attempt: int
    phase_since: float
    last_heartbeat_at: float | None
    failure_reason: str | None
    queue_depth: int
    current_task: str | None
    idle_since: float | None


class _Derived:
    __slots__ = ("idle_since", "phase", "phase_since", "queued")

    def __init__(self) -> None:
        self.phase: str | None = None
        self.phase_since = time.time()
        self.idle_since: float | None = None
        self.queued: set[str] = set()


class StateTracker:
    __slots__ = ("_derived", "_manager")

    def __init__(self, manager: ConstellationDeviceManager) -> None:
        self._manager = manager
        self._derived: dict[str, _Derived] = {}

    def observe(self, event: DeviceEvent) -> None:
        d = self._derived.setdefault(event.device_id, _Derived())
        if event.kind is EventKind.PHASE:
            d.phase, d.phase_since = event.reason, event.at
        elif event.kind is EventKind.STATUS:
            if event.new_status is DeviceStatus.IDLE and event.old_status is not DeviceStatus.BUSY:
                d.idle_since = event.at
            elif event.new_status in (DeviceStatus.DISCONNECTED, DeviceStatus.FAILED):
                d.phase, d.phase_since, d.idle_since = None, event.at, None
        elif event.kind is EventKind.TASK_QUEUED and event.task_id:
            d.queued.add(event.task_id)
        elif event.kind in (EventKind.TASK_STARTED, EventKind.TASK_FINISHED) and event.task_id:
            d.queued.discard(event.task_id)

    def state(self, device_id: str) -> DeviceState | None:
        p = self._manager.get_device_info(device_id)
        return None if p is None else self._state(device_id, p)

    def states(self) -> dict[str, DeviceState]:
        return {device_id: self._state(device_id, p) for device_id, p in self._manager.get_all_devices().items()}

    def _state(self, device_id: str, p: AgentProfile) -> DeviceState:
        d = self._derived.get(device_id) or _Derived()
        return DeviceState(
            device_id=device_id,
            status=p.status,
            phase=d.phase,
            attempt=p.connection_attempts,
            phase_since=d.phase_since,
            last_heartbeat_at=p.last_heartbeat.timestamp() if p.last_heartbeat else None,
            failure_reason=p.failure_reason,
            queue_depth=len(d.queued),
            current_task=p.current_task_id,
            idle_since=d.idle_since,
        )
