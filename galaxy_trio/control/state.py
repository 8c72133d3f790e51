"""The per-device state the control plane shows and measures (the manager's DeviceState snapshot)."""

from __future__ import annotations

from ._interim_state import DeviceState, StateTracker

__all__ = ["DeviceState", "StateTracker"]
