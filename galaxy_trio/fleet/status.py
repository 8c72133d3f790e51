"""Reading the whole fleet from the registry, as rows (for ``--json``) or as a text table (for people).

Any process can do this — it needs the Redis URL, not a seat in the fleet: this is what
``python -m galaxy_trio status --redis URL [--json]`` prints.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .registry import DeviceRecord, FleetSnapshot

__all__ = ["fleet_rows", "read_fleet_status", "read_fleet_status_text", "render_fleet_table"]


def _row(record: DeviceRecord) -> dict[str, Any]:
    profile = record.profile or {}
    system_info = (profile.get("metadata") or {}).get("system_info")
    return {
        "device_id": record.device_id,
        "status": record.status,
        "owner": record.owner,
        "reported_by": record.reported_by,
        "stale": record.stale,
        "os": profile.get("os"),
        "server_url": profile.get("server_url"),
        "capabilities": profile.get("capabilities", []),
        "system_info": system_info,
        "metadata": profile.get("metadata", {}),
        "last_heartbeat": profile.get("last_heartbeat"),
        "current_task_id": profile.get("current_task_id"),
        "failure_reason": profile.get("failure_reason"),
        "updated_at": record.updated_at,
    }


def fleet_rows(snapshot: FleetSnapshot) -> list[dict[str, Any]]:
    """One JSON-ready dict per device, sorted by device id.

    ``owner`` is the member holding the lease now (``None``: nobody); ``status`` is the last state reported by
    ``reported_by``; ``stale`` is true when those two members differ (the report predates the current owner).
    """
    return [_row(record) for record in sorted(snapshot.devices, key=lambda r: r.device_id)]


async def read_fleet_status(redis_url: str, *, namespace: str = "galaxy") -> list[dict[str, Any]]:
    """The fleet's devices as :func:`fleet_rows`, read from Redis. Raises ``RegistryUnavailable`` if it does not
    answer (and ``ValueError`` for a malformed URL)."""
    return fleet_rows(await _read(redis_url, namespace))


async def read_fleet_status_text(redis_url: str, *, namespace: str = "galaxy") -> str:
    """The fleet table of :func:`render_fleet_table`, read from Redis."""
    return render_fleet_table(await _read(redis_url, namespace))


async def _read(redis_url: str, namespace: str) -> FleetSnapshot:
    from .redis import open_redis_registry

    async with open_redis_registry(redis_url, namespace=namespace, request_timeout=2.0) as registry:
        return await registry.read_fleet()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _heartbeat_age(value: Any, now: datetime.datetime) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return "?"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    seconds = max(0.0, (now - moment).total_seconds())
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def render_fleet_table(snapshot: FleetSnapshot, *, now: datetime.datetime | None = None) -> str:
    """A fixed-width table of every device (status, owner, OS, last heartbeat, capabilities), then the members
    and a status summary. A stale status (reported by a member that no longer owns the device) ends in ``?``."""
    now = now or datetime.datetime.now(datetime.UTC)
    rows = fleet_rows(snapshot)
    header = ("DEVICE", "STATUS", "OWNER", "OS", "HEARTBEAT", "CAPABILITIES")
    lines: list[Sequence[str]] = [header]
    for row in rows:
        status = row["status"] or "unknown"
        if row["stale"]:
            status += "?"
        lines.append(
            (
                _clip(row["device_id"], 32),
                status,
                _clip(row["owner"] or "-", 32),
                _clip(row["os"] or "-", 12),
                _heartbeat_age(row["last_heartbeat"], now),
                _clip(",".join(row["capabilities"]) or "-", 40),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    owned = Counter(row["owner"] for row in rows if row["owner"])
    out.append("")
    if snapshot.members:
        out.append(f"{len(snapshot.members)} live members:")
        for member in snapshot.members:
            flag = ", degraded" if member.degraded else ""
            out.append(f"  {member.member_id} ({owned.get(member.member_id, 0)} devices, {member.host}{flag})")
    else:
        out.append("no live members")
    statuses = Counter(row["status"] or "unknown" for row in rows)
    unowned = sum(1 for row in rows if not row["owner"])
    summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    out.append(f"{len(rows)} devices: {summary or 'none'}; {unowned} unowned")
    return "\n".join(out)
