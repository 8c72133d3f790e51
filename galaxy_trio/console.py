"""What the command line shows: a live per-device table on a terminal, plain log lines elsewhere, JSON on demand.

:class:`FleetView` folds the manager's events into one row per device (phase, attempt, time in phase, time to
IDLE, failure reason). It does no I/O, so it is tested without a terminal; :func:`show_live_table` redraws it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec
import trio

from .manager import AgentProfile, DeviceEvent, DeviceStatus, EventKind, EventSubscription

__all__ = ["FleetView", "profiles_json", "show_live_table"]

_PHASE_LABELS = {
    "connect": "2 connect",
    "register": "3 register",
    "telemetry": "4 telemetry",
    "active": "5 active",
}


@dataclass
class _Row:
    device_id: str
    status: DeviceStatus = DeviceStatus.DISCONNECTED
    phase: str = "1 config"
    attempt: int = 0
    phase_since: float = 0.0
    streak_since: float | None = None
    time_to_idle: float | None = None
    reason: str | None = None


class FleetView:
    """One row per device, updated from manager events; times are ``trio.current_time()`` seconds."""

    def __init__(self, device_ids: Iterable[str], now: float) -> None:
        self.rows = {device_id: _Row(device_id, phase_since=now) for device_id in device_ids}

    def update(self, event: DeviceEvent, now: float) -> None:
        row = self.rows.get(event.device_id)
        if row is None:
            row = self.rows[event.device_id] = _Row(event.device_id, phase_since=now)
        if event.kind is EventKind.PHASE and event.reason is not None:
            row.phase = _PHASE_LABELS.get(event.reason, event.reason)
            row.phase_since = now
            if event.reason == "connect":
                row.attempt += 1
                if row.streak_since is None:
                    row.streak_since = now
        elif event.kind is EventKind.STATUS and event.new_status is not None:
            row.status = event.new_status
            if event.new_status is DeviceStatus.IDLE:
                if row.streak_since is not None:
                    row.time_to_idle = now - row.streak_since
                row.streak_since = None
                row.attempt = 0
                row.reason = None
                row.phase, row.phase_since = _PHASE_LABELS["active"], now
            elif event.new_status is DeviceStatus.DISCONNECTED:
                row.phase, row.phase_since = "backoff", now
                row.reason = event.reason
            elif event.new_status is DeviceStatus.FAILED:
                row.phase, row.phase_since = "failed", now
                row.reason = event.reason
                row.streak_since = None
            elif event.new_status is DeviceStatus.BUSY:
                row.phase, row.phase_since = "5 busy", now

    def render(self, now: float, width: int = 120) -> list[str]:
        header = f"{'device':<20} {'status':<12} {'phase':<12} {'attempt':>7} {'in phase':>9} {'to IDLE':>9}  reason"
        lines = [header, "-" * min(len(header) + 20, width)]
        for row in sorted(self.rows.values(), key=lambda r: r.device_id):
            to_idle = "" if row.time_to_idle is None else _duration(row.time_to_idle)
            line = (
                f"{row.device_id[:20]:<20} {row.status.value:<12} {row.phase:<12} {row.attempt or '':>7} "
                f"{_duration(now - row.phase_since):>9} {to_idle:>9}  {row.reason or ''}"
            )
            lines.append(line[:width])
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.status.value] = counts.get(row.status.value, 0) + 1
        lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
        return lines


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


async def show_live_table(
    view: FleetView, events: EventSubscription, out: TextIO = sys.stdout, *, refresh: float = 0.25
) -> None:
    """Redraw ``view`` on the terminal ``out`` as events arrive (at most every ``refresh`` seconds), forever."""
    drawn = 0

    def draw() -> None:
        nonlocal drawn
        lines = view.render(trio.current_time())
        if drawn:
            out.write(f"\x1b[{drawn}F\x1b[J")  # back to the table's first line, clear below
        out.write("\n".join(lines) + "\n")
        out.flush()
        drawn = len(lines)

    draw()
    while True:
        with trio.move_on_after(refresh):
            async for event in events:
                view.update(event, trio.current_time())
        draw()


def profiles_json(profiles: Iterable[AgentProfile]) -> bytes:
    """The final profiles as a JSON array (tokens are never in a profile: server_url is the redacted form)."""
    rows: list[dict[str, Any]] = [
        {
            "device_id": p.device_id,
            "status": p.status.value,
            "server_url": p.server_url,
            "os": p.os,
            "capabilities": p.capabilities,
            "metadata": p.metadata,
            "connection_attempts": p.connection_attempts,
            "last_heartbeat": p.last_heartbeat.isoformat() if p.last_heartbeat else None,
            "failure_reason": p.failure_reason,
        }
        for p in profiles
    ]
    return msgspec.json.format(msgspec.json.encode(rows), indent=2)
