"""``python -m galaxy_trio ctl``: the control API from a terminal (human text on stderr/stdout, or ``--json``)."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Final

import msgspec

from .client import ControlClient

__all__ = ["run_ctl"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


def _write_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
    sys.stdout.flush()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def devices_table(rows: list[dict[str, Any]], width: int) -> str:
    """The devices as a plain table for ``width`` columns. Failure reasons are shown in full: in a column when
    they fit, else each on a line of its own under the table."""
    header = ("DEVICE", "STATUS", "PHASE", "TRY", "IN PHASE", "HEARTBEAT", "QUEUE", "TASK")
    lines = [
        (
            row["device_id"],
            row["status"],
            row.get("phase") or "-",
            str(row.get("attempt", row.get("connection_attempts", 0))),
            _age(row.get("time_in_phase_s")),
            _age(row.get("heartbeat_age_s")),
            str(row.get("queue_depth", 0)),
            row.get("current_task") or "-",
        )
        for row in rows
    ]
    reasons = [row.get("failure_reason") or "" for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    widths[0] = min(widths[0], 24)
    widths[7] = min(widths[7], 16)
    left = width - sum(widths) - 2 * len(widths)
    in_column = any(reasons) and max(len(r) for r in reasons) <= max(left, len("REASON"))
    out = []
    for line, reason in zip((header, *lines), ("REASON" if in_column else "", *reasons), strict=True):
        cells = [_fit(cell, w) for cell, w in zip(line, widths, strict=True)]
        if in_column:
            cells.append(reason)
        out.append("  ".join(cells).rstrip())
    if not in_column:
        out.extend(f"{row['device_id']}: {reason}" for row, reason in zip(rows, reasons, strict=True) if reason)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    out.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no devices")
    return "\n".join(out)


def _fit(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: max(1, width - 1)] + "…"


def event_line(name: str, data: Any) -> str | None:
    """One event as a log-like line; None for messages a human does not need (snapshots are summarised)."""
    if name == "snapshot":
        return (
            f"-- {len(data)} device(s): "
            + ", ".join(f"{row['device_id']} {row['status']}" for row in data[:8])
            + (" …" if len(data) > 8 else "")
        )
    if name == "dropped":
        return f"-- this client was too slow: {data['dropped']} event(s) dropped in all"
    if name == "closed":
        return "-- the manager closed"
    event = data.get("event", {})
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("at", time.time())))
    parts = [stamp, event.get("device_id", "?"), name]
    if event.get("old_status") or event.get("new_status"):
        parts.append(f"{event.get('old_status')} -> {event.get('new_status')}")
    if event.get("task_id"):
        parts.append(f"task {event['task_id']}")
    if event.get("error_type"):
        parts.append(event["error_type"])
    if event.get("reason"):
        parts.append(f"({event['reason']})")
    return " ".join(parts)


async def run_ctl(action: str, args: Any, url: str, token: str) -> int:
    """One ``ctl`` action against the control server at ``url``; returns the exit status."""
    async with ControlClient(url, token) as control:
        if action == "devices":
            rows = await control.devices()
            if args.json:
                _write_json(rows)
            else:
                print(devices_table(rows, shutil.get_terminal_size((100, 24)).columns))
            return EXIT_OK
        if action in ("connect", "disconnect"):
            row = await (control.connect(args.device_id) if action == "connect" else control.disconnect(args.device_id))
            if args.json:
                _write_json(row)
            else:
                reason = f": {row['failure_reason']}" if row.get("failure_reason") else ""
                print(f"device {row['device_id']}: {row['status']}{reason}", file=sys.stderr)
            wanted = "idle" if action == "connect" else "disconnected"
            return EXIT_OK if row["status"] == wanted else EXIT_FAILED
        if action == "task":
            result = await control.task(args.device_id, args.request, task_id=args.task_id, task_timeout=args.timeout)
            if args.json:
                _write_json(result)
            else:
                ok = result["status"] == "completed"
                outcome = "completed" if ok else f"failed ({result.get('error_type')}): {result.get('error')}"
                print(f"task {result['task_id']} on {result['device_id']}: {outcome}", file=sys.stderr)
                print(msgspec.json.encode(result.get("result")).decode())
            return EXIT_OK if result["status"] == "completed" else EXIT_FAILED
        if action == "events":
            async for name, data in control.events():
                if args.json:
                    sys.stdout.buffer.write(msgspec.json.encode({"event": name, "data": data}) + b"\n")
                    sys.stdout.flush()
                else:
                    line = event_line(name, data)
                    if line is not None:
                        print(line, flush=True)
                if name == "closed":
                    break
            return EXIT_OK
    raise ValueError(f"unknown ctl action {action!r}")
