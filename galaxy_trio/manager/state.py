"""DeviceState: a frozen, point-in-time view of one device, for dashboards, control planes and live tables.

:class:`~galaxy_trio.manager.AgentProfile` is what the device *is* (identity, capabilities, telemetry);
:class:`DeviceState` is where it *stands* right now: status, the phase of the attempt under way and since when,
the attempt number, when the link last proved alive, and its task queue. Reading one is synchronous and cheap
(``manager.get_device_state(device_id)``, ``manager.get_all_device_states()``), so a view can poll it without
subscribing to events; being frozen, a snapshot can be handed to another thread or serialised as it is
(``msgspec.json.encode(state)``).
"""

from __future__ import annotations

import msgspec

from .phases import Phase
from .profile import DeviceStatus

__all__ = ["DeviceState"]


class DeviceState(msgspec.Struct, frozen=True, kw_only=True):
    """One device as it stands. Times are wall-clock seconds since the epoch (``time.time()``).

    - ``phase``: the phase of the current attempt, or ``None`` between attempts (backing off) and when not running.
    - ``attempt``: attempts in the current streak of failures (0 once the device is active).
    - ``phase_since``: when the device entered ``phase`` (or left its last attempt, when ``phase`` is ``None``).
    - ``last_heartbeat_at``: the last frame from the server that proved the link alive (registration confirmation
      or a heartbeat reply), or ``None`` if the device never became active.
    - ``failure_reason``: why a FAILED device failed; ``None`` otherwise.
    - ``queue_depth``: tasks waiting for the device; ``current_task``: the id of the task running on it.
    - ``idle_since``: when the device last became IDLE, while it is IDLE; ``None`` in every other status.
    """

    device_id: str
    status: DeviceStatus
    phase: Phase | None
    attempt: int
    phase_since: float
    last_heartbeat_at: float | None
    failure_reason: str | None
    queue_depth: int
    current_task: str | None
    idle_since: float | None
