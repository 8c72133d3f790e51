"""The per-device state the control plane shows and measures: the manager's own DeviceState snapshots."""

from __future__ import annotations

from ..manager import ConstellationDeviceManager, DeviceState, UnknownDevice

__all__ = ["DeviceState", "StateReader"]


class StateReader:
    """Reads :class:`DeviceState` snapshots from the manager (synchronous and cheap; never stale)."""

    __slots__ = ("_manager",)

    def __init__(self, manager: ConstellationDeviceManager) -> None:
        self._manager = manager

    def state(self, device_id: str) -> DeviceState | None:
        try:
            return self._manager.get_device_state(device_id)
        except UnknownDevice:
            return None

    def states(self) -> dict[str, DeviceState]:
        return self._manager.get_all_device_states()
