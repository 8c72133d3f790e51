"""The command line, run as a newcomer runs it: ``python -m galaxy_trio ...`` in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

import galaxy_trio
from galaxy_trio import cli
from galaxy_trio.agent import DeviceAgent
from galaxy_trio.cli import main

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


async def _cli_async(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``python -m galaxy_trio ARGS`` from trio code (the test's own servers keep running meanwhile), bounded."""
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "galaxy_trio", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=REPO,
            env=env,
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
    assert done.returncode == 2  # a config error, found before anything starts (and by `check` too)
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


# --- no traceback for a simple mistake: one line, what was wrong and what to do, exit 2 (usage) or 1 (runtime) ---


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``main(args)`` in this process: its exit status (argparse's too) and what it printed on stderr."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse rejects bad arguments by exiting 2
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def test_serve_names_the_port_already_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, err = _main(capsys, "serve", "--port", str(port), "--token", "t")
    assert status == 1
    assert err.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use; stop the program using it or choose another --port"
    )


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_serve_refuses_a_port_outside_1_to_65535(capsys: pytest.CaptureFixture[str], port: str) -> None:
    status, err = _main(capsys, "serve", "--port", port, "--token", "t")
    assert status == 2
    assert "argument --port:" in err and "1-65535" in err and port in err


def test_serve_says_when_the_host_does_not_resolve(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _main(capsys, "serve", "--host", "no-such-host.invalid", "--port", "0", "--token", "t")
    assert status == 2
    assert err.startswith("error: --host 'no-such-host.invalid' cannot be resolved")
    assert "give an IP address such as 127.0.0.1" in err and len(err.strip().splitlines()) == 1


def test_serve_refuses_a_frame_limit_of_zero(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _main(capsys, "serve", "--max-frame", "0", "--port", "0", "--token", "t")
    assert status == 2
    assert "argument --max-frame: must be a positive number of bytes, got 0" in err


@pytest.mark.parametrize("server", ["http://127.0.0.1:5005/ws", "127.0.0.1:5005"])
def test_agent_explains_what_a_server_url_looks_like(capsys: pytest.CaptureFixture[str], server: str) -> None:
    status, err = _main(capsys, "agent", "--server", server, "--device-id", "d")
    assert status == 2
    assert err.strip() == (
        f"error: --server '{server}' is not a ws:// or wss:// URL; give e.g. ws://127.0.0.1:5005/ws?token=T"
    )


def test_agent_refuses_an_empty_device_id(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _main(capsys, "agent", "--server", "ws://127.0.0.1:1/ws?token=t", "--device-id", "")
    assert status == 2
    assert "argument --device-id: must not be empty" in err


def test_agent_names_an_unset_token_variable(capsys: pytest.CaptureFixture[str]) -> None:
    variable = "GALAXY_TRIO_TEST_UNSET_TOKEN"
    status, err = _main(capsys, "agent", "--server", "ws://127.0.0.1:1/ws", "--device-id", "d", "--token-env", variable)
    assert status == 2
    assert err.strip() == f"error: environment variable '{variable}' is not set; it must hold the server's token"


def test_run_names_an_unset_token_env_variable_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "token.yaml"
    config.write_text(
        f"devices:\n  - device_id: d\n    server_url: ws://127.0.0.1:{_free_port()}/ws\n"
        "    token_env: GALAXY_TRIO_TEST_UNSET_TOKEN\n",
        encoding="utf-8",
    )
    done = _cli("run", str(config), "--once")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {config}:4: device 'd': token_env: environment variable 'GALAXY_TRIO_TEST_UNSET_TOKEN' is not set;"
        " it must hold this device's token"
    )


@pytest.mark.parametrize("command", [["run", "config/devices.yaml"], ["status"]])
def test_redis_without_the_fleet_extra_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "glide" else real_find_spec(name, *a)
    )
    status, err = _main(capsys, *command, "--redis", "redis://127.0.0.1:1/0")
    assert status == 2
    assert err.strip() == ("error: --redis needs the 'fleet' extra (valkey-glide): pip install 'galaxy_trio[fleet]'")


def test_an_unexpected_error_is_one_line_that_points_at_v(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(config: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "load_config", broken)
    status, err = _main(capsys, "task", "config/devices.yaml", "--device", "x", "echo")
    assert status == 1
    assert err.strip() == (
        "error: unexpected ZeroDivisionError: boom (a bug in galaxy_trio; run again with -v for the traceback"
        " and report it)"
    )


# --- item 6: --version, -v anywhere, task against a device a running manager drives ---------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"galaxy_trio {galaxy_trio.__version__} (Python ")


@pytest.mark.parametrize("args", [["-v", "check", "config/devices.yaml"], ["check", "config/devices.yaml", "-v"]])
def test_verbose_before_or_after_the_command(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    logging.getLogger().handlers.clear()  # main() configures logging once per process
    try:
        assert main(args) == 0
        assert logging.getLogger().level == logging.DEBUG
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    assert "ok, 3 device(s)" in capsys.readouterr().out


async def test_task_on_a_device_that_a_running_manager_drives_says_what_to_do(tmp_path: Path) -> None:
    """The duplicate client id is explained with the ``ctl task`` command to run instead, and that command works
    against the running manager's control plane."""
    from galaxy_trio.config import DeviceConfig
    from galaxy_trio.manager import ConstellationDeviceManager
    from galaxy_trio.server import serve_aip

    control = importlib.util.find_spec("httpx") is not None
    request = '{"tool_name": "echo", "parameters": {"text": "hi there"}}'
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, host="127.0.0.1", port=0, token="t"))
        url = f"ws://127.0.0.1:{server.port}/ws?token=t"
        agent = DeviceAgent(url, "box")
        nursery.start_soon(agent.run)
        async with ConstellationDeviceManager() as manager:  # the "running run" holding galaxy_trio@box
            if control:
                from galaxy_trio.control import serve_control

                endpoint = await nursery.start(partial(serve_control, manager, port=0, token="ctl-token"))
            manager.add_devices([DeviceConfig(device_id="box", server_url=url)])
            with trio.fail_after(30):
                assert (await manager.wait_for_device("box")).status.value == "idle"
            config = tmp_path / "devices.yaml"
            config.write_text(f"devices:\n  - device_id: box\n    server_url: '{url}'\n    max_retries: 1\n")
            done = await _cli_async("task", str(config), "--device", "box", request)
            err = done.stderr.decode()
            assert done.returncode == 1, err
            (error,) = [line for line in err.splitlines() if line.startswith("error:")]
            assert "already registered" in error and "Traceback" not in err
            suggested = f"python -m galaxy_trio ctl task box '{request}' --control URL"
            assert suggested in error and "'run --control HOST:PORT' printed" in error
            if control:
                argv = shlex.split(suggested.replace("URL", endpoint.url))
                assert argv[:3] == ["python", "-m", "galaxy_trio"]
                via_ctl = await _cli_async(*argv[3:], env={**os.environ, "GALAXY_TRIO_CONTROL_TOKEN": "ctl-token"})
                assert via_ctl.returncode == 0, via_ctl.stderr.decode()
                assert "hi there" in via_ctl.stdout.decode()
        nursery.cancel_scope.cancel()


def test_task_against_a_server_that_is_not_running_says_refused_and_what_to_check(tmp_path: Path) -> None:
    config = tmp_path / "down.yaml"
    config.write_text(
        f"devices:\n  - device_id: d\n    server_url: ws://127.0.0.1:{_free_port()}/ws\n    max_retries: 1\n",
        encoding="utf-8",
    )
    done = _cli("task", str(config), "--device", "d", "echo")
    assert done.returncode == 1
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: device d is failed: ")
    assert "connection refused by 127.0.0.1:" in error and "all attempts to connect" not in error
    assert error.endswith(
        ": is the AIP server running? check the host and port of the server URL"
        "; 'python -m galaxy_trio serve' starts a server, --local starts one in this process"
    )
    assert "Traceback" not in done.stderr


async def test_task_with_a_wrong_token_says_token_wrong_or_missing(tmp_path: Path) -> None:
    from galaxy_trio.server import serve_aip

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, host="127.0.0.1", port=0, token="right"))
        config = tmp_path / "devices.yaml"
        config.write_text(
            f"devices:\n  - device_id: d\n    server_url: 'ws://127.0.0.1:{server.port}/ws?token=wrong'\n"
        )
        done = await _cli_async("task", str(config), "--device", "d", "echo")
        nursery.cancel_scope.cancel()
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "HTTP 403: the token is wrong or missing; check ?token= in server_url or the token_env variable" in err
    assert "wrong" not in err.replace("is wrong or missing", "")  # the token itself never shows


def test_run_treats_an_unset_failed_retry_interval_as_60_seconds_and_keeps_a_set_one(tmp_path: Path) -> None:
    from galaxy_trio.config import load_config

    def settings_for(line: str) -> float | None:
        config = tmp_path / "devices.yaml"
        config.write_text(f"manager:\n{line}devices:\n  - device_id: d\n    server_url: ws://127.0.0.1:5005/ws\n")
        return cli._manager_settings(load_config(config)).failed_retry_interval

    assert settings_for("") == cli.RUN_FAILED_RETRY_INTERVAL == 60.0
    assert settings_for("  failed_retry_interval: 0\n") == 0.0
    assert settings_for("  failed_retry_interval: 5\n") == 5.0


def test_serve_says_when_the_host_is_not_an_address_of_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _main(capsys, "serve", "--host", "192.0.2.1", "--port", "0", "--token", "t")  # TEST-NET-1
    assert status == 1
    assert err.strip() == (
        "error: --host 192.0.2.1 is not an address of this machine; give 127.0.0.1, 0.0.0.0 (every interface)"
        " or one of its own addresses"
    )


def test_agent_refuses_a_server_url_with_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _main(capsys, "agent", "--server", "ws://127.0.0.1:99999/ws", "--device-id", "d")
    assert status == 2
    assert err.strip() == "error: --server 'ws://127.0.0.1:99999/ws' has an invalid port; give 1-65535"


@pytest.mark.parametrize("command", [["run", "config/devices.yaml"], ["status"]])
def test_a_bad_redis_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    status, err = _main(capsys, *command, "--redis", "http://127.0.0.1:6379/0")
    assert status == 2
    assert err.strip() == (
        "error: --redis: invalid Redis URL http://127.0.0.1:6379/0: scheme must be one of redis, valkey, rediss,"
        " valkeys; give redis://HOST:PORT/DB"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "-1"], "argument --port: -1 is not a port; give 1-65535"),
        (["serve", "--port", "70000"], "argument --port: 70000 is not a port; give 1-65535"),
        (["serve", "--max-frame", "0"], "argument --max-frame: must be a positive number of bytes, got 0"),
        (["agent", "--server", "ws://127.0.0.1:1/ws", "--device-id", ""], "argument --device-id: must not be empty"),
        (["agent", "--server", "ws://127.0.0.1:1/ws"], "the following arguments are required: --device-id"),
        (["task", "devices.yaml", "echo"], "the following arguments are required: --device"),
        (["serve", "--token", ""], "argument --token: must not be empty"),
        (["agent", "--server", "ws://127.0.0.1:1/ws", "--device-id", "d", "--platform", " "], "argument --platform"),
    ],
)
def test_a_bad_argument_is_one_line_naming_the_help(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    status, err = _main(capsys, *args)
    assert status == 2
    (line,) = err.splitlines()  # no usage block
    assert line.startswith(f"error: {says}")
    assert line.endswith(f"(see 'python -m galaxy_trio {args[0]} --help')")


@pytest.mark.parametrize(("status", "cause"), [(403, "the token is wrong or missing"), (404, "/ws")])
async def test_agent_stopped_by_the_server_exits_1_naming_the_cause(tmp_path: Path, status: int, cause: str) -> None:
    from galaxy_trio.server import serve_aip

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, host="127.0.0.1", port=0, token="right"))
        path, token = ("/ws", "wrong") if status == 403 else ("/nope", "right")
        url = f"ws://127.0.0.1:{server.port}{path}?token={token}"
        done = await _cli_async("agent", "--server", url, "--device-id", "d")
        nursery.cancel_scope.cancel()
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: server ws://127.0.0.1:") and f"HTTP {status}" in last and cause in last
    assert last.endswith("; not retrying") and "token=***" in last and "token=right" not in err
