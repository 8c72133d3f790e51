"""``run`` on a real (pseudo-)terminal of 80x24 and 200x50: the live table redraws in place and ends true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..net import free_port
from .pty_screen import REPO, Screen, run_in_terminal

pytestmark = pytest.mark.slow

SIZES = [(80, 24), (200, 50)]
HEADER = re.compile(r"^device\s+status\s+phase\s+try\s+in phase\s+to IDLE")


def _shipped_config_on_free_ports(tmp_path: Path) -> Path:
    """config/devices.yaml as shipped, its two loopback ports swapped for free ones (tests never use fixed ports)."""
    text = (REPO / "config" / "devices.yaml").read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:5005", f"127.0.0.1:{free_port()}").replace(
        "127.0.0.1:5006", f"127.0.0.1:{free_port()}"
    )
    config = tmp_path / "devices.yaml"
    config.write_text(text, encoding="utf-8")
    return config


def _headers(lines: list[str]) -> int:
    return sum(1 for line in lines if HEADER.match(line))


def _row(screen: Screen, device_id: str) -> str:
    (row,) = [line for line in screen.lines if line.startswith(device_id + " ")]
    return row


@pytest.mark.parametrize(("columns", "rows"), SIZES)
def test_the_readme_command_redraws_in_place_and_ends_with_the_true_statuses(
    tmp_path: Path, columns: int, rows: int
) -> None:
    config = _shipped_config_on_free_ports(tmp_path)
    screen = run_in_terminal(["run", str(config), "--once"], columns=columns, rows=rows)
    assert screen.status == 0, screen.text()
    assert _headers(screen.lines) == 1, screen.text()
    # Redraws moved the cursor back over the table: nothing was pushed into the scrollback, no stale header.
    assert _headers(screen.scrollback) == 0 and screen.scrollback == [], screen.scrollback
    (title,) = [line for line in screen.lines if line.startswith("galaxy_trio run ")]
    assert title.endswith("devices.yaml - Ctrl-C to stop"), title
    if columns >= len(f"galaxy_trio run {config} - Ctrl-C to stop"):
        assert title == f"galaxy_trio run {config} - Ctrl-C to stop"
    for device_id in ("windowsagent", "linuxagent", "macagent"):
        assert _row(screen, device_id).split()[1] == "idle", screen.text()
    assert "3 idle" in screen.lines, screen.text()
    assert max(len(line) for line in screen.lines) <= columns
    assert "Traceback" not in screen.text()


def _unreachable_config(tmp_path: Path) -> Path:
    config = tmp_path / "down.yaml"
    config.write_text(
        "manager:\n  reconnect_delay: 0.05\n  backoff_cap: 0.1\ndevices:\n"
        f"  - device_id: lab-workstation-with-a-long-name-number-7\n    server_url: ws://127.0.0.1:{free_port()}/ws\n"
        "    max_retries: 2\n"
        f"  - device_id: up\n    server_url: ws://127.0.0.1:{free_port()}/ws\n    max_retries: 1\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.parametrize(("columns", "rows"), SIZES)
def test_a_failed_device_keeps_its_reason_on_screen_and_warnings_print_above_the_table(
    tmp_path: Path, columns: int, rows: int
) -> None:
    screen = run_in_terminal(["run", str(_unreachable_config(tmp_path)), "--once"], columns=columns, rows=rows)
    assert screen.status == 1, screen.text()
    lines = screen.scrollback + screen.lines
    assert _headers(lines) == 1, "\n".join(lines)
    header_at = next(i for i, line in enumerate(lines) if HEADER.match(line))
    warnings = [i for i, line in enumerate(lines) if "WARNING" in line]
    assert warnings and max(warnings) < header_at, "\n".join(lines)  # the log lines are above the table
    below = "\n".join(lines[header_at:])
    # The reason, wrapped to the width, is on screen under the header (as a column or as detail lines).
    flat = " ".join(below.split())
    assert flat.count("gave up after 2 consecutive failed attempts") == 1, below
    assert flat.count("gave up after 1 consecutive failed attempts") == 1, below
    assert re.search(r"^up\s+failed\s+failed\s+1\b", below, re.MULTILINE), below
    assert "2 failed" in screen.lines
    assert max(len(line) for line in lines) <= columns


def test_a_fleet_taller_than_the_screen_is_summarised_and_still_redraws_in_place(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "many.yaml"
    config.write_text(
        "local: true\ndevices:\n"
        + "".join(f"  - device_id: dev{i:02d}\n    server_url: ws://127.0.0.1:{port}/ws\n" for i in range(60)),
        encoding="utf-8",
    )
    screen = run_in_terminal(["run", str(config), "--once"], columns=80, rows=24)
    assert screen.status == 0, screen.text()
    assert screen.scrollback == [], screen.scrollback
    assert _headers(screen.lines) == 1
    summary = next(line for line in screen.lines if line.startswith("60 idle"))
    shown = sum(1 for line in screen.lines if re.match(r"^dev\d\d\s+idle\b", line))
    assert shown >= 10 and summary == f"60 idle (+ {60 - shown} more not shown)", screen.text()
