"""The live table's rows, folded from manager events and laid out for a screen size, without a terminal."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from galaxy_trio.console import FleetView, fleet_table, profiles_json, run_title
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
    lines = _draw(view, now=5.0, width=120, height=24)
    assert lines[0] == "title"
    assert lines[1].split() == ["device", "status", "phase", "try", "in", "phase", "to", "IDLE", "reason"]
    assert lines[3].split() == ["a", "idle", "5", "active", "1.5s", "2.5s"]
    assert lines[4].split()[:4] == ["b", "failed", "failed", "1.0s"] and lines[4].endswith("HTTP 403")
    assert lines[-1] == "1 failed, 1 idle"


def _draw(view: FleetView, *, now: float, width: int, height: int) -> list[str]:
    """What the table looks like on a ``width`` x ``height`` screen (no colours), right-stripped lines."""
    out = io.StringIO()
    console = Console(file=out, width=width, height=height, color_system=None, force_terminal=False)
    console.print(fleet_table(view, now, width=width, height=height, title="title"))
    return [line.rstrip() for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("width", [60, 80, 99])
def test_narrow_screens_put_the_whole_reason_on_detail_lines_and_nothing_is_wider_than_the_screen(width: int) -> None:
    reason = "gave up after 5 consecutive failed attempts; last: connection refused by 127.0.0.1:5005 (is it up?)"
    view = FleetView(["a-very-long-device-identifier-from-the-lab", "b"], now=0.0)
    view.update(_status("b", S.CONNECTING, S.FAILED, reason), 1.0)
    lines = _draw(view, now=2.0, width=width, height=24)
    assert max(len(line) for line in lines) <= width
    assert lines[1].split()[:3] == ["device", "status", "phase"] and "reason" not in lines[1]
    if width <= 80:  # cut to the width, marked
        assert lines[3].startswith("a-very-") and "…" in lines[3]
    else:  # room for all of it
        assert lines[3].startswith("a-very-long-device-identifier-from-the-lab ")
    details = " ".join(" ".join(lines[5:-1]).split())
    assert details == f"b: {reason}"
    assert lines[-1] == "1 disconnected, 1 failed"


def test_wide_screens_wrap_the_reason_in_its_column() -> None:
    reason = "x" * 150
    view = FleetView(["b"], now=0.0)
    view.update(_status("b", S.CONNECTING, S.FAILED, reason), 1.0)
    lines = _draw(view, now=2.0, width=200, height=50)
    assert max(len(line) for line in lines) <= 200
    assert lines[1].split()[-1] == "reason"
    body = lines[3:-1]
    assert len(body) == 2 and "".join(line.split()[-1] for line in body) == reason


def test_a_fleet_taller_than_the_screen_shows_the_failing_and_changing_rows_first_and_counts_the_rest() -> None:
    view = FleetView([f"d{i:03d}" for i in range(100)], now=0.0)
    for i in range(100):
        view.update(_status(f"d{i:03d}", S.REGISTERING, S.IDLE), 1.0)
    view.update(_status("d050", S.IDLE, S.FAILED, "lost"), 50.0)
    view.update(_phase("d070", "connect"), 59.0)  # changing: a phase in the last few seconds
    view.update(_status("d080", S.IDLE, S.DISCONNECTED, "heartbeat timeout"), 58.0)
    lines = _draw(view, now=60.0, width=80, height=24)
    assert len(lines) <= 23  # one line spare below: the live area never scrolls the screen
    ids = [line.split()[0] for line in lines[3:] if re.match(r"d\d{3} ", line)]
    assert "d080: heartbeat timeout" in lines and "d050: lost" in lines
    assert ids[:3] == ["d080", "d050", "d070"]  # failing (newest first), then changing
    assert ids[3:] == sorted(ids[3:]) and ids[3] == "d000"
    shown = len(ids)
    assert lines[-1] == f"1 disconnected, 1 failed, 98 idle (+ {100 - shown} more not shown)"
    assert view.visible_rows(1000, now=60.0)[0].device_id == "d000"  # all fit: by id, no reordering


def test_a_tiny_screen_still_gets_the_counts() -> None:
    view = FleetView([f"d{i}" for i in range(10)], now=0.0)
    lines = _draw(view, now=1.0, width=60, height=3)
    assert lines[-1] == "10 disconnected (+ 10 more not shown)"


def test_the_title_shortens_the_config_path_from_the_left_and_keeps_the_ctrl_c_hint() -> None:
    assert run_title("config/devices.yaml", 80) == "galaxy_trio run config/devices.yaml - Ctrl-C to stop"
    long_path = "/very/long/" * 10 + "devices.yaml"
    title = run_title(long_path, 60)
    assert (
        len(title) == 60 and title.startswith("galaxy_trio run …") and title.endswith("devices.yaml - Ctrl-C to stop")
    )


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


def test_ids_and_reasons_are_shown_as_written_never_as_markup() -> None:
    view = FleetView(["[bold]x[/bold]"], now=0.0)
    view.update(_status("[bold]x[/bold]", S.CONNECTING, S.FAILED, "[red]boom[/red]"), 1.0)
    lines = _draw(view, now=2.0, width=120, height=24)
    assert lines[3].startswith("[bold]x[/bold] ") and lines[3].endswith("[red]boom[/red]")
