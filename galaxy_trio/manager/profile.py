"""AgentProfile and DeviceStatus: what the manager knows about one device, and the legal ways it changes.

The profile has the fields of the registration-flow document (version 1 at registration, version 3 after the
telemetry merge) plus ``failure_reason``, so a FAILED device says why. Status changes go through
:func:`check_transition`; an illegal one raises :class:`IllegalTransition` instead of leaving the fleet in a state
nobody planned for.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Final

import msgspec

from ..errors import GalaxyTrioError

__all__ = [
    "CONNECTED_STATUSES",
    "AgentProfile",
    "DeviceStatus",
    "IllegalTransition",
    "check_transition",
]


class DeviceStatus(enum.StrEnum):
    """Where a device is in its life cycle (values as in UFO Galaxy)."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REGISTERING = "registering"
    IDLE = "idle"
    BUSY = "busy"
    FAILED = "failed"


#: Statuses in which the device has a live, registered or registering link (``get_connected_devices``).
CONNECTED_STATUSES: Final = frozenset({DeviceStatus.CONNECTED, DeviceStatus.IDLE, DeviceStatus.BUSY})

_D = DeviceStatus
_ALLOWED: Final[dict[DeviceStatus, frozenset[DeviceStatus]]] = {
    # DISCONNECTED is both "never connected" and "between two attempts" (backing off).
    _D.DISCONNECTED: frozenset({_D.CONNECTING, _D.FAILED}),
    _D.CONNECTING: frozenset({_D.CONNECTED, _D.DISCONNECTED, _D.FAILED}),
    _D.CONNECTED: frozenset({_D.REGISTERING, _D.DISCONNECTED, _D.FAILED}),
    # REGISTERING covers phase 3 (REGISTER) and phase 4 (telemetry); phase 5 ends it in IDLE.
    _D.REGISTERING: frozenset({_D.IDLE, _D.DISCONNECTED, _D.FAILED}),
    _D.IDLE: frozenset({_D.BUSY, _D.DISCONNECTED, _D.FAILED}),
    _D.BUSY: frozenset({_D.IDLE, _D.DISCONNECTED, _D.FAILED}),
    # A FAILED device stays FAILED until connect_device() (→ CONNECTING) or disconnect_device().
    _D.FAILED: frozenset({_D.CONNECTING, _D.DISCONNECTED}),
}


class IllegalTransition(GalaxyTrioError):
    """A status change the device life cycle does not allow (a bug in the caller, never a network event)."""

    def __init__(self, device_id: str, old: DeviceStatus, new: DeviceStatus) -> None:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[old])) or "none"
        super().__init__(f"device {device_id!r}: illegal status change {old.value} -> {new.value} (allowed: {allowed})")
        self.device_id = device_id
        self.old = old
        self.new = new


def check_transition(device_id: str, old: DeviceStatus, new: DeviceStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``old -> new`` is a legal change (``old == new`` is not a change)."""
    if new is not old and new not in _ALLOWED[old]:
        raise IllegalTransition(device_id, old, new)


class AgentProfile(msgspec.Struct, kw_only=True):
    """Everything the manager knows about one device.

    ``server_url`` is the display form, with any token redacted: the profile is shown, logged and serialised, so
    it never holds a secret.
    """

    device_id: str
    server_url: str
    os: str | None = None
    capabilities: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    status: DeviceStatus = DeviceStatus.DISCONNECTED
    last_heartbeat: datetime | None = None
    connection_attempts: int = 0
    max_retries: int = 5
    current_task_id: str | None = None
    failure_reason: str | None = None

    def snapshot(self) -> AgentProfile:
        """A copy that the caller may keep or change without touching the manager's live profile."""
        return msgspec.structs.replace(
            self,
            capabilities=list(self.capabilities),
            metadata=_copy_json(self.metadata),
        )


def _copy_json(value: dict[str, Any]) -> dict[str, Any]:
    # Metadata is JSON-shaped (it came from YAML or the wire); a msgspec round trip is a fast deep copy.
    copied: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value))
    return copied
