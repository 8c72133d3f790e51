"""The command line, run as a newcomer runs it: ``python -m galaxy_trio ...`` in a subprocess."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from .net import free_port as _free_port

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "galaxy_trio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def _local_config(tmp_path: Path) -> Path:
    config = tmp_path / "devices.yaml"
    config.write_text(
        f"local: true\ndevices:\n  - device_id: box\n    server_url: ws://127.0.0.1:{_free_port()}/ws\n",
        encoding="utf-8",
    )
    return config


def test_check_accepts_the_shipped_config() -> None:
    done = _cli("check", "config/devices.yaml")
    assert done.returncode == 0, done.stderr
    assert "ok, 3 device(s), local mode" in done.stdout
    assert "windowsagent: ws://127.0.0.1:5005/ws" in done.stdout


def test_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "devices:\n"
        "  - device_id: a\n    server_url: http://h/ws\n"
        "  - device_id: a\n    server_url: ws://h/ws\n    max_retries: many\n",
        encoding="utf-8",
    )
    done = _cli("check", str(bad))
    assert done.returncode == 2
    assert "bad.yaml:3: device 'a': server_url" in done.stderr
    assert "duplicate device_id 'a'" in done.stderr
    assert "max_retries" in done.stderr
    assert "3 problem(s)" in done.stderr


def test_task_runs_one_task_locally_and_prints_its_result(tmp_path: Path) -> None:
    config = _local_config(tmp_path)
    request = json.dumps({"tool_name": "echo", "parameters": {"text": "from the cli"}})
    done = _cli("task", str(config), "--device", "box", request, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed" and result["device_id"] == "box"
    assert result["result"] == [{"request": request, "result": "from the cli"}]
    assert result["timings"]["run_s"] >= 0


def test_task_exits_1_when_the_task_fails(tmp_path: Path) -> None:
    done = _cli("task", str(_local_config(tmp_path)), "--device", "box", "no_such_tool")
    assert done.returncode == 1
    assert "failed (task_failed)" in done.stderr and "no_such_tool" in done.stderr


def test_task_names_the_known_devices_when_the_device_is_unknown(tmp_path: Path) -> None:
    done = _cli("task", str(_local_config(tmp_path)), "--device", "ghost", "echo")
    assert done.returncode == 2
    assert "no device 'ghost'" in done.stderr and "devices: box" in done.stderr


def test_local_mode_refuses_non_loopback_urls(tmp_path: Path) -> None:
    config = tmp_path / "remote.yaml"
    config.write_text("local: true\ndevices:\n  - device_id: far\n    server_url: ws://192.0.2.10:5005/ws\n")
    done = _cli("run", str(config), "--once")
    assert done.returncode == 1
    assert "not a loopback address" in done.stderr and "far" in done.stderr
    assert "Traceback" not in done.stderr


def test_local_mode_names_a_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "busy.yaml"
        config.write_text(f"local: true\ndevices:\n  - device_id: d\n    server_url: ws://127.0.0.1:{port}/ws\n")
        done = _cli("run", str(config), "--once")
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr
