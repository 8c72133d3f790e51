"""The live table's rows, folded from manager events without a terminal."""

from __future__ import annotations

import json

from galaxy_trio.console import FleetView, profiles_json
from galaxy_trio.manager import AgentProfile, DeviceEvent, DeviceStatus, EventKind

S = DeviceStatus


def _status(device: str, old: DeviceStatus, new: DeviceStatus, reason: str | None = None) -> DeviceEvent:
    return DeviceEvent(kind=EventKind.STATUS, device_id=device, at=0.0, old_status=old, new_status=new, reason=reason)


def _phase(device: str, phase: str) -> DeviceEvent:
    return DeviceEvent(kind=EventKind.PHASE, device_id=device, at=0.0, reason=phase)


def test_rows_follow_phases_attempts_and_time_to_idle() -> None:
    view = FleetView(["a", "b"], now=0.0)
    view.update(_phase("a", "connect"), 1.0)
    view.update(_status("a", S.CONNECTING, S.DISCONNECTED, "connection refused"), 1.5)
    view.update(_phase("a", "connect"), 3.0)
    view.update(_phase("a", "register"), 3.2)
    row = view.rows["a"]
    assert (row.phase, row.attempt, row.reason) == ("3 register", 2, "connection refused")
    view.update(_phase("a", "telemetry"), 3.3)
    view.update(_status("a", S.REGISTERING, S.IDLE), 3.5)
    assert row.status is S.IDLE and row.phase == "5 active" and row.time_to_idle == 2.5 and row.attempt == 0
    assert row.reason is None
    view.update(_status("b", S.CONNECTING, S.FAILED, "handshake rejected with HTTP 403"), 4.0)
    lines = view.render(now=5.0)
    assert lines[0].split()[:3] == ["device", "status", "phase"]
    assert "2.5s" in lines[2] and lines[2].startswith("a ")
    assert "failed" in lines[3] and "HTTP 403" in lines[3] and "1.0s" in lines[3]
    assert lines[-1] == "1 failed, 1 idle"


def test_profiles_json_has_the_documented_fields_and_no_secret() -> None:
    profile = AgentProfile(device_id="d", server_url="ws://h/ws?token=***", status=S.FAILED, failure_reason="x")
    (row,) = json.loads(profiles_json([profile]))
    assert set(row) == {
        "device_id",
        "status",
        "server_url",
        "os",
        "capabilities",
        "metadata",
        "connection_attempts",
        "last_heartbeat",
        "failure_reason",
    }
    assert row["status"] == "failed" and row["failure_reason"] == "x" and row["last_heartbeat"] is None
