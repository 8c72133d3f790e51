"""UFO Galaxy's own files load: its ``devices.yaml`` (top-level settings beside ``devices:``) and its runtime
``config/galaxy/constellation.yaml`` (upper-case keys, DEVICE_INFO naming the devices file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from galaxy_trio.cli import main
from galaxy_trio.config import ConfigError, ManagerSettings, load_config, load_constellation, parse_config

from .net import free_port

REPO = Path(__file__).resolve().parents[1]

# The shape of UFO's config/galaxy/devices.yaml (its ConstellationConfig.from_yaml also reads the four top-level
# settings), written here with UFO's field names and quoting.
UFO_DEVICES = textwrap.dedent(
    """\
    # Device Configuration - YAML Format
    task_name: "office_run"
    heartbeat_interval: 12.5
    reconnect_delay: 7
    max_concurrent_tasks: 3

    devices:
      - device_id: "windowsagent"
        server_url: "ws://localhost:5005/ws"
        os: "windows"
        capabilities:
          - "web_browsing"
          - "office_applications"
        metadata:
          location: "home_office"
          os: "windows"
          performance: "medium"
        max_retries: 5

      - device_id: "linux_agent_1"
        server_url: "ws://localhost:5001/ws"
        os: "linux"
        capabilities:
          - "server"
        metadata:
          logs_file_path: "/root/log/log1.txt"
        auto_connect: true
        max_retries: 5
    """
)

# UFO's config/galaxy/constellation.yaml, as shipped.
UFO_CONSTELLATION = textwrap.dedent(
    """\
    # Galaxy Constellation Configuration
    CONSTELLATION_ID: "test_constellation"
    HEARTBEAT_INTERVAL: 30.0  # Heartbeat interval in seconds
    RECONNECT_DELAY: 5.0  # Delay before reconnecting in seconds
    MAX_CONCURRENT_TASKS: 6  # Maximum concurrent tasks across the constellation
    MAX_STEP: 15  # Maximum steps per session

    # Device Configuration
    DEVICE_INFO: "config/galaxy/devices.yaml"  # Path to device configuration file

    # Logging Configuration
    LOG_TO_MARKDOWN: true  # Whether to save trajectory logs to markdown format
    """
)

PLAIN_DEVICES = "devices:\n  - device_id: box\n    server_url: ws://localhost:5005/ws\n"


# --- UFO's devices.yaml ---------------------------------------------------------------------------------------


def test_ufos_devices_file_loads_unchanged_with_its_top_level_settings() -> None:
    config = parse_config(UFO_DEVICES)
    assert config.manager == ManagerSettings(
        task_name="office_run", heartbeat_interval=12.5, reconnect_delay=7.0, max_concurrent_tasks=3
    )
    assert [device.device_id for device in config.devices] == ["windowsagent", "linux_agent_1"]
    assert config.devices[0].metadata["location"] == "home_office"


def test_ufos_reconnect_delay_above_our_default_cap_raises_the_cap() -> None:
    settings = parse_config("reconnect_delay: 45\n" + PLAIN_DEVICES).manager
    assert (settings.reconnect_delay, settings.backoff_cap) == (45.0, 45.0)


@pytest.mark.parametrize("name", ["task_name", "heartbeat_interval", "reconnect_delay", "max_concurrent_tasks"])
def test_one_setting_in_both_places_is_an_error_naming_both(name: str) -> None:
    value = "office" if name == "task_name" else "4"
    text = f"manager:\n  {name}: {value}\n{name}: {value}\n" + PLAIN_DEVICES
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="devices.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.field) == (3, name)
    assert problem.message == (
        f"{name} is given twice: here (UFO's spelling of manager.{name}) and as manager.{name} (line 2); keep one"
    )


def test_top_level_settings_are_checked_by_the_same_rules_at_their_lines() -> None:
    text = "heartbeat_interval: fast\nmax_concurrent_tasks: 0\n" + PLAIN_DEVICES
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="devices.yaml")
    assert [(p.line, p.field, p.message) for p in info.value.problems] == [
        (1, "heartbeat_interval", "expected a number, got string"),
        (2, "max_concurrent_tasks", "must be >= 1, got 0"),
    ]


def test_other_ufo_keys_are_still_unknown_with_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"unknown field 'heartbeat_intervall' \(did you mean 'heartbeat_interval'"):
        parse_config("heartbeat_intervall: 3\n" + PLAIN_DEVICES)


# --- UFO's constellation.yaml -------------------------------------------------------------------------------


def _ufo_tree(root: Path, devices: str = UFO_DEVICES.split("\n", 5)[5]) -> Path:
    """A UFO checkout's config/galaxy/ with the two files; returns constellation.yaml's path."""
    galaxy = root / "config" / "galaxy"
    galaxy.mkdir(parents=True)
    (galaxy / "devices.yaml").write_text(devices, encoding="utf-8")
    constellation = galaxy / "constellation.yaml"
    constellation.write_text(UFO_CONSTELLATION, encoding="utf-8")
    return constellation


def test_ufos_constellation_file_maps_to_our_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    constellation = _ufo_tree(tmp_path)
    monkeypatch.chdir(tmp_path)  # UFO runs from its root: DEVICE_INFO is relative to the current directory
    config = load_constellation(constellation)
    assert config.manager == ManagerSettings(
        task_name="test_constellation", heartbeat_interval=30.0, reconnect_delay=5.0, max_concurrent_tasks=6
    )
    assert config.source == "config/galaxy/devices.yaml"
    assert len(config.devices) == 2
    from_elsewhere = load_constellation(constellation, cwd=tmp_path)  # the same, from UFO's root given as cwd
    assert from_elsewhere == msgspec.structs.replace(config, source=str(tmp_path / "config/galaxy/devices.yaml"))


def test_device_info_is_taken_from_the_current_directory_not_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constellation = _ufo_tree(tmp_path)
    monkeypatch.chdir(constellation.parent)  # config/galaxy/config/galaxy/devices.yaml does not exist
    with pytest.raises(ConfigError) as info:
        load_constellation(constellation)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.field) == (str(constellation), 9, "DEVICE_INFO")
    assert "a relative DEVICE_INFO is taken from the current directory, as UFO does" in problem.message
    assert str(constellation.parent / "config" / "galaxy" / "devices.yaml") in problem.message


def test_a_config_given_with_the_constellation_replaces_device_info(tmp_path: Path) -> None:
    constellation = _ufo_tree(tmp_path)
    other = tmp_path / "mine.yaml"
    other.write_text(PLAIN_DEVICES, encoding="utf-8")
    config = load_constellation(constellation, other)  # DEVICE_INFO (not found from here) is not used
    assert [d.device_id for d in config.devices] == ["box"] and config.manager.task_name == "test_constellation"


def test_a_setting_in_both_files_is_an_error_naming_both(tmp_path: Path) -> None:
    constellation = _ufo_tree(tmp_path)
    devices = tmp_path / "devices.yaml"
    devices.write_text("manager:\n  heartbeat_interval: 5\n" + PLAIN_DEVICES, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_constellation(constellation, devices)
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.field) == (str(constellation), 3, "HEARTBEAT_INTERVAL")
    assert problem.message == (
        f"heartbeat_interval is given twice: here and as manager.heartbeat_interval at {devices}:2; keep one"
    )


def test_constellation_values_are_checked_at_their_lines(tmp_path: Path) -> None:
    constellation = tmp_path / "constellation.yaml"
    devices = tmp_path / "devices.yaml"
    devices.write_text(PLAIN_DEVICES, encoding="utf-8")
    constellation.write_text(
        'CONSTELLATION_ID: "a@b"\nHEARTBEAT_INTERVAL: -1\nMAX_STEPS: 3\nDEVICE_INFO: devices.yaml\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_constellation(constellation, cwd=tmp_path)
    assert [(p.file, p.line, p.field) for p in info.value.problems] == [
        (str(constellation), 1, "CONSTELLATION_ID"),
        (str(constellation), 2, "HEARTBEAT_INTERVAL"),
        (str(constellation), 3, "MAX_STEPS"),
    ]
    assert "must not contain '@'" in info.value.problems[0].message
    assert "must be a positive number of seconds, got -1" in info.value.problems[1].message
    assert "did you mean 'MAX_STEP'" in info.value.problems[2].message


def test_a_constellation_without_device_info_says_what_is_missing(tmp_path: Path) -> None:
    constellation = tmp_path / "constellation.yaml"
    constellation.write_text("CONSTELLATION_ID: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="DEVICE_INFO is missing: it names the devices file"):
        load_constellation(constellation)


def test_check_reads_a_constellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    constellation = _ufo_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--constellation", str(constellation)]) == 0
    out = capsys.readouterr().out
    assert "config/galaxy/devices.yaml: ok, 2 device(s)" in out and "windowsagent: ws://localhost:5005/ws" in out


def test_run_with_ufos_constellation_brings_its_devices_up(tmp_path: Path) -> None:
    port = free_port()
    devices = f"devices:\n  - device_id: windowsagent\n    server_url: ws://localhost:{port}/ws\n    os: windows\n"
    constellation = _ufo_tree(tmp_path, devices)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "galaxy_trio",
            "run",
            "--constellation",
            str(constellation),
            "--local",
            "--once",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    (profile,) = json.loads(done.stdout)
    assert (profile["device_id"], profile["status"]) == ("windowsagent", "idle")


def test_shipped_config_still_loads() -> None:
    assert load_config(REPO / "config" / "devices.yaml").local is True


@pytest.mark.parametrize("value", ['"fast"', "true", ".inf", "-3"])
def test_a_bad_reconnect_delay_is_reported_not_raised(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"reconnect_delay: {value}\n" + PLAIN_DEVICES)
    assert [(p.line, p.field) for p in info.value.problems] == [(1, "reconnect_delay")]
