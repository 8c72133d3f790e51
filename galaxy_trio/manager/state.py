"""DeviceState: a frozen, point-in-time view of one device, for dashboards, control planes and live tables.

:class:`~galaxy_trio.manager.AgentProfile` is what the device *is* (identity, capabilities, telemetry);
:class:`DeviceState` is where it *stands* right now: status, the phase of the attempt under way and since when,
the attempt number, when the link last proved alive, and its task queue. Reading one is synchronous and cheap
(``manager.get_device_state(device_id)``, ``manager.get_all_device_states()``), so a view can poll it without
subscribing to events; being frozen, a snapshot can be handed to another thread or serialised as it is
(``msgspec.json.encode(state)``).
"""

from __future__ import annotations

import bisect
from typing import Final

import msgspec

from .phases import Phase
from .profile import DeviceStatus

__all__ = ["HEARTBEAT_RTT_BUCKETS", "DeviceState", "HeartbeatStats"]


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


#: Upper bounds (seconds) of the heartbeat round-trip buckets: a loopback link answers in well under a millisecond,
#: a loaded manager (thousands of devices) reads a reply late by up to the heartbeat timeout.
HEARTBEAT_RTT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HeartbeatStats:
    """One manager's heartbeats since it started (``manager.heartbeat_stats``), for metrics: ``sent``, ``missed``
    (no frame within ``heartbeat_timeout``: the link was dropped) and every round trip, from a heartbeat to its
    ack (trio seconds), as ``rtt_count``/``rtt_sum`` and counts per :data:`HEARTBEAT_RTT_BUCKETS` bucket (not
    cumulative; the last one is above every bound)."""

    __slots__ = ("missed", "rtt_buckets", "rtt_count", "rtt_sum", "sent")

    def __init__(self) -> None:
        self.sent = self.missed = self.rtt_count = 0
        self.rtt_sum = 0.0
        self.rtt_buckets = [0] * (len(HEARTBEAT_RTT_BUCKETS) + 1)

    def round_trip(self, seconds: float) -> None:
        self.rtt_buckets[bisect.bisect_left(HEARTBEAT_RTT_BUCKETS, seconds)] += 1
        self.rtt_count += 1
        self.rtt_sum += seconds
