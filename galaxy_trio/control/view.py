"""What the control API returns for a device: its profile as ``--json`` prints it, plus its live state."""

from __future__ import annotations

from typing import Any

from ..console import profile_row
from ..manager import AgentProfile
from .state import DeviceState

__all__ = ["device_row"]


def device_row(profile: AgentProfile, state: DeviceState | None, now: float) -> dict[str, Any]:
    """The JSON object of one device; ages are computed at ``now`` (wall clock) so they never go stale."""
    row = profile_row(profile)
    if state is None:
        return row
    heartbeat_at = state.last_heartbeat_at
    row.update(
        phase=state.phase,
        attempt=state.attempt,
        phase_since=state.phase_since,
        time_in_phase_s=max(0.0, now - state.phase_since),
        last_heartbeat_at=heartbeat_at,
        heartbeat_age_s=None if heartbeat_at is None else max(0.0, now - heartbeat_at),
        failure_reason=state.failure_reason,
        queue_depth=state.queue_depth,
        current_task=state.current_task,
        idle_since=state.idle_since,
        status=state.status.value,
    )
    return row
