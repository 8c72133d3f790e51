"""What the command line shows: a live per-device table on a terminal, plain log lines elsewhere, JSON on demand.

:class:`FleetView` folds the manager's events into one row per device (phase, attempt, time in phase, time to
IDLE, failure reason) and chooses which rows fit a screen. It does no I/O, so it is tested without a terminal.
:func:`fleet_table` turns it into a rich renderable for a given width and height, and :func:`open_live_table`
keeps that renderable redrawn in place (rich's ``Live``) while log lines print above it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import trio
from rich import box
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from .manager import AgentProfile, DeviceEvent, DeviceStatus, EventKind, EventSubscription

__all__ = [
    "FleetView",
    "console_log_handler",
    "fleet_table",
    "open_live_table",
    "profile_row",
    "profiles_json",
    "run_title",
]

_PHASE_LABELS = {
    "connect": "2 connect",
    "register": "3 register",
    "telemetry": "4 telemetry",
    "active": "5 active",
}

#: Below this width the failure reason moves from a table column to a line of its own under the table.
_REASON_COLUMN_MIN_WIDTH = 100
#: The narrowest reason column (at _REASON_COLUMN_MIN_WIDTH columns it is about this wide).
_REASON_MIN_WIDTH = 30
#: A row whose phase changed this recently counts as "changing" when the fleet does not fit the screen.
_CHANGING_FOR = 5.0


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

    @property
    def failing(self) -> bool:
        return self.status is DeviceStatus.FAILED or (self.status is DeviceStatus.DISCONNECTED and bool(self.reason))


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

    def counts(self) -> Counter[str]:
        """Devices per status value."""
        return Counter(row.status.value for row in self.rows.values())

    def summary(self) -> str:
        """``"1 failed, 2 idle"``: the counts by status, in a stable order."""
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))

    def visible_rows(self, capacity: int, now: float) -> list[_Row]:
        """The rows to draw when only ``capacity`` fit: all (by id) if they fit, else failing, changing, the rest.

        The selection for a fleet taller than the screen puts what a person must look at first: devices that
        failed or are failing (newest failure first), then those whose phase changed in the last few seconds,
        then the others by id.
        """
        rows = sorted(self.rows.values(), key=lambda r: r.device_id)
        if len(rows) <= capacity:
            return rows

        def rank(row: _Row) -> tuple[int, float, str]:
            if row.failing:
                return (0, -row.phase_since, row.device_id)
            if now - row.phase_since < _CHANGING_FOR:
                return (1, -row.phase_since, row.device_id)
            return (2, 0.0, row.device_id)

        return sorted(rows, key=rank)[: max(capacity, 0)]


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


_STATUS_STYLES = {
    DeviceStatus.IDLE: "green",
    DeviceStatus.BUSY: "cyan",
    DeviceStatus.FAILED: "bold red",
    DeviceStatus.DISCONNECTED: "yellow",
}


def fleet_table(view: FleetView, now: float, *, width: int, height: int, title: str) -> RenderableType:
    """The table for a ``width`` x ``height`` screen: never taller than ``height - 1`` lines, never wider.

    The rows that do not fit are summarised ("+ 40 more") and the counts by status are always shown, so a
    fleet of any size redraws in place. Below :data:`_REASON_COLUMN_MIN_WIDTH` columns the failure reasons are
    wrapped lines under the table instead of a squeezed column.
    """
    reason_column = width >= _REASON_COLUMN_MIN_WIDTH
    budget = max(height - 1, 4)  # one line spare: the cursor sits below the live area
    capacity = min(len(view.rows), budget)  # a row takes at least one line: no need to lay out more
    while True:
        renderable = _build(view, now, capacity, width=width, title=title, reason_column=reason_column)
        lines = _height(renderable, width)
        if lines <= budget or capacity == 0:
            return renderable
        # Drop at least one row per try, more when far over (a fleet of thousands on a small screen).
        capacity = min(capacity - 1, max(0, capacity - (lines - budget)))


def _build(view: FleetView, now: float, capacity: int, *, width: int, title: str, reason_column: bool) -> Group:
    rows = view.visible_rows(capacity, now)
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    # Every column gets an explicit width: the short ones their longest value, the device id what the longest
    # id needs (up to what is left), the reason the rest. Two columns between neighbours (padding, divider).
    columns = len(_FIXED_COLUMNS) + 1 + int(reason_column)
    left = width - sum(size for _, size, _ in _FIXED_COLUMNS) - 2 * (columns - 1)
    longest = max((len(row.device_id) for row in rows), default=6)
    if reason_column:  # the reason needs the room more than a long id does
        device_width = max(6, min(longest, left - _REASON_MIN_WIDTH, max(16, left // 3)))
    else:
        device_width = max(6, min(longest, left))
    table.add_column("device", no_wrap=True, overflow="ellipsis", width=device_width)
    for header, size, justify in _FIXED_COLUMNS:
        table.add_column(header, no_wrap=True, overflow="ellipsis", width=size, justify=justify)
    if reason_column:
        table.add_column("reason", overflow="fold", width=max(left - device_width, _REASON_MIN_WIDTH))
    for row in rows:
        cells: list[RenderableType] = [
            Text(row.device_id),  # Text, not str: an id is never read as rich markup
            Text(row.status.value, style=_STATUS_STYLES.get(row.status, "")),
            Text(row.phase),
            str(row.attempt or ""),
            _duration(now - row.phase_since),
            "" if row.time_to_idle is None else _duration(row.time_to_idle),
        ]
        if reason_column:
            cells.append(Text(row.reason or "", style="red" if row.failing else ""))
        table.add_row(*cells)
    parts: list[RenderableType] = [Text(title, style="bold", overflow="ellipsis", no_wrap=True), table]
    if not reason_column:
        for row in rows:
            if row.reason:
                parts.append(Text(f"{row.device_id}: {row.reason}", style="red" if row.failing else ""))
    hidden = len(view.rows) - len(rows)
    footer = view.summary() + (f" (+ {hidden} more not shown)" if hidden else "")
    parts.append(Text(footer, style="bold", overflow="fold"))
    return Group(*parts)


_FIXED_COLUMNS: tuple[tuple[str, int, JustifyMethod], ...] = (
    ("status", 12, "left"),  # "disconnected"
    ("phase", 11, "left"),  # "4 telemetry"
    ("try", 3, "right"),
    ("in phase", 8, "right"),
    ("to IDLE", 7, "right"),
)

_MEASURE = Console(width=80, color_system=None, force_terminal=False)


def _height(renderable: RenderableType, width: int) -> int:
    """Screen lines ``renderable`` takes at ``width`` (rich renders it to lines; nothing is written)."""
    options = _MEASURE.options.update(width=width, max_width=width)
    return len(_MEASURE.render_lines(renderable, options, pad=False))


def run_title(config_path: str, width: int) -> str:
    """``galaxy_trio run PATH - Ctrl-C to stop``, the path shortened from the left when the line is too long."""
    fixed = len("galaxy_trio run  - Ctrl-C to stop")
    room = width - fixed
    if len(config_path) > room:
        config_path = "…" + config_path[len(config_path) - max(room - 1, 0) :] if room > 1 else "…"
    return f"galaxy_trio run {config_path} - Ctrl-C to stop"


def console_log_handler(console: Console) -> logging.Handler:
    """Log records printed through ``console``, so that they appear above a live table rather than through it."""
    handler = RichHandler(
        console=console, show_path=False, markup=False, rich_tracebacks=False, log_time_format="%H:%M:%S"
    )
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


@asynccontextmanager
async def open_live_table(
    view: FleetView, events: EventSubscription, console: Console, *, config_path: str, refresh: float = 0.25
) -> AsyncIterator[None]:
    """Keep ``view`` redrawn in place on ``console`` (fed by ``events``) until the block ends.

    On exit every event already delivered is folded in and the table is drawn one last time and left on the
    screen: the final table shows the statuses as they are when the block ends (e.g. IDLE/FAILED after
    ``--once``), not as a later shutdown makes them. Rich's own refresh thread is off: all drawing happens in
    this trio task, so the view is never read while it is being updated.
    """

    def renderable() -> RenderableType:
        width, height = console.size
        title = run_title(config_path, width)
        return fleet_table(view, trio.current_time(), width=width, height=height, title=title)

    live = Live(console=console, auto_refresh=False, redirect_stdout=True, redirect_stderr=True, transient=False)
    live.update(renderable())
    live.start()
    try:
        async with trio.open_nursery() as nursery:

            async def redraw() -> None:
                while True:
                    with trio.move_on_after(refresh):
                        async for event in events:
                            view.update(event, trio.current_time())
                    live.update(renderable(), refresh=True)

            nursery.start_soon(redraw)
            yield
            nursery.cancel_scope.cancel()
    finally:
        for event in events.pending():
            view.update(event, trio.current_time())
        live.update(renderable(), refresh=True)
        live.stop()


def profile_row(p: AgentProfile) -> dict[str, Any]:
    """One profile as ``--json`` prints it (also the control API's device fields); no token in it."""
    return {
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


def profiles_json(profiles: Iterable[AgentProfile]) -> bytes:
    """The final profiles as a JSON array (tokens are never in a profile: server_url is the redacted form)."""
    rows = [profile_row(p) for p in profiles]
    return msgspec.json.format(msgspec.json.encode(rows), indent=2)
