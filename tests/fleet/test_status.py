"""The fleet table and rows, from a snapshot (no registry needed)."""

from __future__ import annotations

import datetime

from galaxy_trio.fleet import DeviceRecord, FleetSnapshot, MemberRecord, fleet_rows, render_fleet_table

NOW = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=datetime.UTC)


def record(device_id: str, owner: str | None, reported_by: str | None, status: str | None) -> DeviceRecord:
    profile = {
        "device_id": device_id,
        "server_url": "ws://10.0.0.9:5005/ws?token=***",
        "os": "windows",
        "capabilities": ["shell", "web"],
        "metadata": {"system_info": {"hostname": device_id.upper()}},
        "last_heartbeat": "2026-11-25T11:59:30+00:00",
    }
    return DeviceRecord(
        device_id=device_id, owner=owner, reported_by=reported_by, status=status, profile=profile, updated_at=1.0
    )


SNAPSHOT = FleetSnapshot(
    devices=[
        record("pc-2", "m-b", "m-a", "idle"),  # m-a reported it, but m-b holds the lease now: stale
        record("pc-1", "m-a", "m-a", "busy"),
        DeviceRecord(device_id="pc-3", owner=None, reported_by=None, status=None, profile=None, updated_at=None),
    ],
    members=[
        MemberRecord(member_id="m-a", task_name="fleet", host="host-a", pid=1, started_at=0.0),
        MemberRecord(member_id="m-b", task_name="fleet", host="host-b", pid=2, started_at=0.0, degraded=True),
    ],
    task_name="fleet",
)


def test_rows_are_sorted_and_say_who_owns_and_who_reported() -> None:
    rows = fleet_rows(SNAPSHOT)
    assert [(r["device_id"], r["status"], r["owner"], r["stale"]) for r in rows] == [
        ("pc-1", "busy", "m-a", False),
        ("pc-2", "idle", "m-b", True),
        ("pc-3", None, None, False),
    ]
    assert rows[0]["system_info"] == {"hostname": "PC-1"} and rows[0]["capabilities"] == ["shell", "web"]
    assert rows[2]["capabilities"] == [] and rows[2]["last_heartbeat"] is None


def test_the_table_marks_stale_statuses_unowned_devices_and_degraded_members() -> None:
    lines = render_fleet_table(SNAPSHOT, now=NOW).splitlines()
    assert lines[0].split() == ["DEVICE", "STATUS", "OWNER", "OS", "HEARTBEAT", "CAPABILITIES"]
    assert lines[1].split() == ["pc-1", "busy", "m-a", "windows", "30s", "ago", "shell,web"]
    assert lines[2].split() == ["pc-2", "idle?", "m-b", "windows", "30s", "ago", "shell,web"]
    assert lines[3].split() == ["pc-3", "unknown", "-", "-", "-", "-"]
    assert "  m-a (1 devices, host-a)" in lines
    assert "  m-b (1 devices, host-b, degraded)" in lines
    assert lines[-1] == "3 devices: 1 busy, 1 idle, 1 unknown; 1 unowned"
