"""``python -m galaxy_trio ctl`` and ``run --control``, run as a newcomer runs them: in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from galaxy_trio import DeviceStatus

from .rig import CONTROL_TOKEN, open_rig

REPO = Path(__file__).resolve().parents[2]
ECHO = json.dumps({"tool_name": "echo", "parameters": {"text": "from ctl"}})


async def _ctl(*args: str, token: str | None = CONTROL_TOKEN, env_name: str = "GALAXY_TRIO_CONTROL_TOKEN"):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TRIO_CONTROL")}
    env["PYTHONPATH"] = str(REPO)
    if token is not None:
        env[env_name] = token
    return await trio.run_process(
        [sys.executable, "-m", "galaxy_trio", "ctl", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_ctl_devices_as_a_table_and_as_json() -> None:
    async with open_rig(("c1", "c2")) as rig:
        table = await _ctl("devices", "--control", rig.url)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.decode().splitlines()
        assert lines[0].split()[:3] == ["DEVICE", "STATUS", "PHASE"]
        assert {line.split()[0]: line.split()[1] for line in lines[1:3]} == {"c1": "idle", "c2": "idle"}
        assert lines[-1] == "2 idle"
        as_json = await _ctl("devices", "--control", rig.url, "--json")
        rows = json.loads(as_json.stdout)
        assert sorted(row["device_id"] for row in rows) == ["c1", "c2"] and rows[0]["phase"] == "active"


async def test_ctl_reconnects_a_failed_device_and_runs_a_task_on_a_device_run_drives() -> None:
    async with open_rig(("c1", "c2")) as rig:
        rig.kill_agent("c2")
        await rig.wait_status("c2", DeviceStatus.FAILED)
        await rig.start_agent("c2")
        back = await _ctl("connect", "c2", "--control", rig.url)
        assert back.returncode == 0 and back.stderr.decode().strip() == "device c2: idle"
        task = await _ctl("task", "c2", ECHO, "--control", rig.url, "--task-id", "ctl-t1")
        assert task.returncode == 0, task.stderr
        assert task.stderr.decode().strip() == "task ctl-t1 on c2: completed"
        assert json.loads(task.stdout) == [{"request": ECHO, "result": "from ctl"}]
        failed = await _ctl("task", "c2", "no_such_tool", "--control", rig.url, "--json")
        assert failed.returncode == 1 and json.loads(failed.stdout)["error_type"] == "task_failed"
        down = await _ctl("disconnect", "c1", "--control", rig.url, "--token-env", "MY_TOKEN", env_name="MY_TOKEN")
        assert down.returncode == 0 and down.stderr.decode().strip() == "device c1: disconnected"


async def test_ctl_errors_are_one_line_with_the_exit_status_of_the_cli() -> None:
    async with open_rig(("c1",)) as rig:
        unknown = await _ctl("connect", "nope", "--control", rig.url)
        assert unknown.returncode == 1
        assert unknown.stderr.decode() == "error: unknown device 'nope'; registered devices: 'c1'\n"
        wrong = await _ctl("devices", "--control", rig.url, token="wrong")
        assert wrong.returncode == 1 and wrong.stderr.decode().startswith("error: the control server refused the token")
        assert wrong.stdout == b""
    no_token = await _ctl("devices", "--control", "http://127.0.0.1:1/", token=None)
    assert no_token.returncode == 2 and "'GALAXY_TRIO_CONTROL_TOKEN' is not set" in no_token.stderr.decode()
    no_url = await _ctl("devices")
    assert no_url.returncode == 2 and "ctl needs --control URL" in no_url.stderr.decode()
    bad_url = await _ctl("devices", "--control", "127.0.0.1:8080")
    assert bad_url.returncode == 2 and "is not an http:// URL" in bad_url.stderr.decode()
    gone = await _ctl("devices", "--control", "http://127.0.0.1:1/")
    assert gone.returncode == 1 and "cannot reach the control server at http://127.0.0.1:1/" in gone.stderr.decode()
    assert len(gone.stderr.decode().splitlines()) == 1


def _local_config(tmp_path: Path) -> Path:
    from ..net import free_port

    config = tmp_path / "devices.yaml"
    config.write_text(
        "local: true\ndevices:\n"
        + "".join(f"  - device_id: d{n}\n    server_url: ws://127.0.0.1:{free_port()}/ws\n" for n in range(2))
    )
    return config


def test_run_with_control_prints_the_url_and_token_once_and_serves_the_fleet(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TRIO_CONTROL")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "galaxy_trio", "run", str(_local_config(tmp_path)), "--control", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert process.stderr is not None
        url = token = ""
        seen: list[str] = []
        for line in process.stderr:
            seen.append(line)
            if line.startswith("dashboard and control API: "):
                url = line.removeprefix("dashboard and control API: ").strip()
            elif line.startswith("control token: "):
                token = line.removeprefix("control token: ").strip()
                break
        assert url and token, seen
        assert url.startswith("http://127.0.0.1:") and len(token) >= 40
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            assert client.get("/").status_code == 200
            assert client.get("/api/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
            states: dict[str, str] = {}
            with client.stream("GET", "/api/events") as stream:  # re-read the devices at each event until both IDLE
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        states = {row["device_id"]: row["status"] for row in client.get("/api/devices").json()}
                        if states == {"d0": "idle", "d1": "idle"}:
                            break
            assert states == {"d0": "idle", "d1": "idle"}
            metrics = client.get("/metrics").text
            assert 'galaxy_trio_devices{status="idle"} 2.0' in metrics
    finally:
        process.send_signal(signal.SIGINT)
        _, rest_err = process.communicate(timeout=30)
    assert process.returncode == 0, rest_err
    printed = [line for line in seen if token in line]
    assert printed == [f"control token: {token}\n"]  # once, and in no log line
    assert token not in rest_err


async def test_ctl_events_follows_the_stream_until_interrupted() -> None:
    async with open_rig(("c1", "c2")) as rig:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TRIO_CONTROL")}
        env.update(PYTHONPATH=str(REPO), GALAXY_TRIO_CONTROL_TOKEN=CONTROL_TOKEN)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "galaxy_trio", "ctl", "events", "--control", rig.url, "--json"],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None
        buffer = b""
        lines: list[dict[str, object]] = []

        async def next_line() -> dict[str, object]:
            nonlocal buffer
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(65536)  # type: ignore[union-attr]
                assert chunk, "ctl events ended early"
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            parsed: dict[str, object] = json.loads(line)
            lines.append(parsed)
            return parsed

        try:
            with trio.fail_after(20):
                first = await next_line()
                assert first["event"] == "snapshot"
                assert sorted(row["device_id"] for row in first["data"]) == ["c1", "c2"]  # type: ignore[attr-defined]
                rig.kill_agent("c1")
                while True:
                    message = await next_line()
                    data = message["data"]
                    if message["event"] == "status" and data["event"]["new_status"] == "failed":  # type: ignore[index]
                        assert data["device"]["device_id"] == "c1"  # type: ignore[index]
                        break
        finally:
            process.send_signal(signal.SIGINT)
            with trio.fail_after(20):
                await process.wait()
        assert process.returncode == 0


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TRIO_CONTROL")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "galaxy_trio", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )


def test_run_refuses_a_bad_or_remote_control_address_before_starting(tmp_path: Path) -> None:
    config = str(_local_config(tmp_path))
    remote = _run_cli("run", config, "--control", "0.0.0.0:0")
    assert remote.returncode == 2
    assert remote.stderr.startswith("error: --control: refusing to serve the control API on '0.0.0.0'")
    assert len(remote.stderr.splitlines()) == 1
    for text, needle in (("127.0.0.1", "has no port"), ("127.0.0.1:x", "is not a number")):
        bad = _run_cli("run", config, "--control", text)
        assert bad.returncode == 2 and needle in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_run_with_a_control_port_in_use_fails_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_cli("run", str(_local_config(tmp_path)), "--once", "--control", f"127.0.0.1:{port}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: control address 127.0.0.1:{port} is already in use; choose another port (0: any free one)"
    ]
