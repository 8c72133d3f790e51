"""Phase 1: loading and validating devices.yaml (galaxy_trio.config)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import msgspec
import pytest
import yaml

from galaxy_trio.config import (
    ConfigError,
    ConfigProblem,
    DeviceConfig,
    GalaxyConfig,
    ManagerSettings,
    load_config,
    parse_config,
)
from galaxy_trio.config import loading as config_loading
from galaxy_trio.errors import GalaxyTrioError
from galaxy_trio.redact import url_token

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "devices.yaml"
SECRET = "s3cr3t-T0KEN-value"

MINIMAL = """\
devices:
  - device_id: dev1
    server_url: ws://127.0.0.1:5005/ws
"""


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test on PyYAML's C parser and on the pure-Python fallback: lines and messages must agree."""
    if request.param == "pure-python":
        monkeypatch.setattr(config_loading, "_YamlLoader", yaml.SafeLoader)


def line_of(text: str, marker: str) -> int:
    """1-based line of the only line of ``text`` containing ``marker``."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if marker in line]
    assert len(lines) == 1, f"marker {marker!r} must occur on exactly one line"
    return lines[0]


def problems_of(text: str, **kwargs: object) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def device_yaml(*lines: str) -> str:
    """A one-device file with extra device keys (or replacements of the two required ones)."""
    keys = {"device_id": "device_id: dev1", "server_url": "server_url: ws://127.0.0.1:5005/ws"}
    extra = []
    for line in lines:
        name = line.split(":", 1)[0].strip()
        if name in keys:
            keys[name] = line
        else:
            extra.append(line)
    body = [keys["device_id"], keys["server_url"], *extra]
    return "devices:\n  - " + "\n    ".join(body) + "\n"


def manager_yaml(*lines: str) -> str:
    return "manager:\n  " + "\n  ".join(lines) + "\n" + MINIMAL


# --- the shipped file ---------------------------------------------------------------------------------------------


def test_shipped_config_loads_with_the_flow_documents_device() -> None:
    config = load_config(SHIPPED_CONFIG)

    assert config.local is True
    assert config.source == str(SHIPPED_CONFIG)
    assert len(config.devices) == 3
    assert len({device.device_id for device in config.devices}) == 3
    assert config.manager == ManagerSettings()

    windows = config.device("windowsagent")
    assert windows == DeviceConfig(
        device_id="windowsagent",
        server_url="ws://127.0.0.1:5005/ws",  # the flow document's localhost:5005, pinned to the loopback address
        os="windows",
        capabilities=("web_browsing", "office_applications", "file_management"),
        metadata={
            "location": "office_desktop",
            "performance": "high",
            "description": "Primary Windows workstation",
            "operation_engineer_email": "admin@example.com",
        },
        max_retries=5,
        auto_connect=True,
    )
    assert {device.os for device in config.devices} == {"windows", "linux", "macos"}
    for device in config.devices:
        assert device.is_loopback
        assert device.host == "127.0.0.1"
        assert device.port in (5005, 5006)
        assert url_token(device.server_url) is None
        assert device.token_env is None
        assert device.ca_file is None


def test_shipped_config_has_no_token_anywhere() -> None:
    settings = [line.partition("#")[0] for line in SHIPPED_CONFIG.read_text(encoding="utf-8").splitlines()]
    assert not [line for line in settings if "token" in line]


# --- defaults and accepted forms --------------------------------------------------------------------------------


def test_defaults_are_applied() -> None:
    config = parse_config(MINIMAL)

    assert config.local is False
    assert config.source == "<string>"
    manager = config.manager
    assert (manager.task_name, manager.heartbeat_interval, manager.heartbeat_timeout) == ("galaxy_trio", 30.0, 10.0)
    assert (manager.reconnect_delay, manager.backoff_cap, manager.connect_timeout) == (1.0, 30.0, 10.0)
    assert (manager.register_timeout, manager.telemetry_timeout, manager.task_timeout) == (10.0, 5.0, 300.0)
    assert (manager.task_queue_size, manager.event_buffer) == (16, 1024)
    (device,) = config.devices
    assert device.device_id == "dev1"
    assert device.os is None
    assert device.capabilities == ()
    assert device.metadata == {}
    assert device.max_retries == 5
    assert device.auto_connect is True
    assert device.token_env is None
    assert device.ca_file is None


def test_every_key_is_read() -> None:
    text = textwrap.dedent(
        """\
        local: true
        manager:
          task_name: office
          heartbeat_interval: 12
          heartbeat_timeout: 3.5
          reconnect_delay: 0.25
          backoff_cap: 8
          connect_timeout: 2
          register_timeout: 4
          telemetry_timeout: 1.5
          task_timeout: 60
          task_queue_size: 4
          event_buffer: 32
        devices:
          - device_id: mac
            server_url: wss://mac.example.com:8443/ws
            os: macos
            capabilities: [media_editing]
            metadata: {location: studio, nested: {tags: [a, b]}}
            max_retries: 2
            auto_connect: false
            token_env: MAC_TOKEN
        """
    )
    config = parse_config(text)

    assert config.local is True
    assert config.manager == ManagerSettings(
        task_name="office",
        heartbeat_interval=12.0,
        heartbeat_timeout=3.5,
        reconnect_delay=0.25,
        backoff_cap=8.0,
        connect_timeout=2.0,
        register_timeout=4.0,
        telemetry_timeout=1.5,
        task_timeout=60.0,
        task_queue_size=4,
        event_buffer=32,
    )
    # Whole numbers in duration fields come out as floats, so arithmetic on them never surprises.
    assert type(config.manager.heartbeat_interval) is float
    (device,) = config.devices
    assert device.metadata == {"location": "studio", "nested": {"tags": ["a", "b"]}}
    assert (device.os, device.capabilities, device.max_retries) == ("macos", ("media_editing",), 2)
    assert (device.auto_connect, device.token_env) == (False, "MAC_TOKEN")
    assert (device.host, device.port, device.is_loopback) == ("mac.example.com", 8443, False)


def test_null_manager_and_null_optional_fields_mean_defaults() -> None:
    config = parse_config("manager:\n" + device_yaml("os:", "token_env: null"))
    assert config.manager == ManagerSettings()
    assert config.devices[0].os is None
    assert config.devices[0].token_env is None


def test_yaml_anchors_and_merge_keys_share_device_defaults() -> None:
    text = textwrap.dedent(
        """\
        x-defaults: &defaults
          os: linux
          max_retries: 9
          capabilities: [shell]
        devices:
          - <<: *defaults
            device_id: a
            server_url: ws://127.0.0.1:5005/ws
          - <<: *defaults
            device_id: b
            server_url: ws://127.0.0.1:5005/ws
            max_retries: 2
        """
    )
    a, b = parse_config(text).devices
    assert (a.os, a.max_retries, a.capabilities) == ("linux", 9, ("shell",))
    assert (b.os, b.max_retries) == ("linux", 2)  # explicit keys override merged ones


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(path).devices[0].device_id == "dev1"


def test_url_properties_default_ports_and_ipv6() -> None:
    ws, wss, v6, named = parse_config(
        textwrap.dedent(
            """\
            devices:
              - {device_id: a, server_url: "ws://localhost/ws"}
              - {device_id: b, server_url: "wss://example.com/ws"}
              - {device_id: c, server_url: "ws://[::1]:7000/ws"}
              - {device_id: d, server_url: "ws://10.1.2.3:7000/ws"}
            """
        )
    ).devices
    assert (ws.port, ws.is_loopback) == (80, True)
    assert (wss.port, wss.is_loopback) == (443, False)
    assert (v6.host, v6.port, v6.is_loopback) == ("::1", 7000, True)
    assert (named.host, named.is_loopback) == ("10.1.2.3", False)


# --- one bad thing at a time: the right line, device, field and message -----------------------------------------

# (id, yaml text, marker on the expected line, device, field, message fragment)
BAD_INPUTS = [
    (
        "malformed yaml",
        device_yaml("os: linux: extra"),
        "os: linux: extra",
        None,
        None,
        "invalid YAML: mapping values are not allowed",
    ),
    (
        "unclosed flow list",
        device_yaml("capabilities: [a, b", "max_retries: 3"),
        "max_retries: 3",
        None,
        None,
        "invalid YAML",
    ),
    (
        "two documents",
        MINIMAL + "---\nlocal: true\n",
        "---",
        None,
        None,
        "expected a single document",
    ),
    (
        "unknown device field",
        device_yaml("max_retry: 3"),
        "max_retry: 3",
        "dev1",
        "devices[0].max_retry",
        "unknown field 'max_retry' (did you mean 'max_retries'?)",
    ),
    (
        "unknown manager field",
        manager_yaml("colour: blue"),
        "colour: blue",
        None,
        "manager.colour",
        "unknown field 'colour'",
    ),
    ("unknown top-level field", "verbose: true\n" + MINIMAL, "verbose", None, "verbose", "unknown field 'verbose'"),
    (
        "non-string key",
        device_yaml("1: one"),
        "1: one",
        "dev1",
        "devices[0]",
        "keys must be field names, got an integer",
    ),
    (
        "key given twice",
        device_yaml("os: linux", "os: windows"),
        "os: windows",
        "dev1",
        "devices[0].os",
        "key given twice (first at line 4)",
    ),
    (
        "string for int",
        device_yaml('max_retries: "5"'),
        "max_retries",
        "dev1",
        "devices[0].max_retries",
        "expected an integer, got string",
    ),
    (
        "bool for int",
        device_yaml("max_retries: true"),
        "max_retries",
        "dev1",
        "devices[0].max_retries",
        "expected an integer, got boolean",
    ),
    (
        "float for int",
        manager_yaml("task_queue_size: 2.5"),
        "task_queue_size",
        None,
        "manager.task_queue_size",
        "expected an integer, got number",
    ),
    (
        "string for duration",
        manager_yaml('heartbeat_interval: "30"'),
        "heartbeat_interval",
        None,
        "manager.heartbeat_interval",
        "expected a number, got string",
    ),
    (
        "string for bool",
        device_yaml('auto_connect: "true"'),
        "auto_connect",
        "dev1",
        "devices[0].auto_connect",
        "expected a boolean, got string",
    ),
    ("int for local", "local: 1\n" + MINIMAL, "local", None, "local", "expected a boolean, got integer"),
    (
        "string for capabilities",
        device_yaml("capabilities: web_browsing"),
        "capabilities",
        "dev1",
        "devices[0].capabilities",
        "expected a list of strings, got string",
    ),
    (
        "int in capabilities",
        device_yaml("capabilities:", "  - web_browsing", "  - 42"),
        "- 42",
        "dev1",
        "devices[0].capabilities[1]",
        "expected a string, got integer",
    ),
    (
        "list for metadata",
        device_yaml("metadata: [a, b]"),
        "metadata",
        "dev1",
        "devices[0].metadata",
        "expected a mapping, got list",
    ),
    (
        "int key in metadata",
        device_yaml("metadata: {1: one}"),
        "metadata",
        "dev1",
        "devices[0].metadata",
        "keys must be strings",
    ),
    (
        "invalid date in metadata",
        device_yaml("metadata: {installed: 2025-13-45}"),
        "metadata",
        "dev1",
        "devices[0].metadata",
        "invalid value: month must be in 1..12",
    ),
    (
        "unknown yaml tag",
        device_yaml("os: !platform windows"),
        "os:",
        "dev1",
        "devices[0].os",
        "could not determine a constructor for the tag '!platform'",
    ),
    (
        "int for server_url",
        device_yaml("server_url: 5005"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "expected a string, got integer",
    ),
    (
        "missing device_id",
        "devices:\n  - server_url: ws://127.0.0.1:5005/ws\n    os: linux\n",
        "- server_url",
        "devices[0]",
        "devices[0].device_id",
        "required field missing",
    ),
    (
        "missing server_url",
        "devices:\n  - device_id: dev1\n    os: linux\n",
        "- device_id",
        "dev1",
        "devices[0].server_url",
        "required field missing",
    ),
    (
        "empty device_id",
        device_yaml('device_id: ""'),
        "device_id",
        "devices[0]",
        "devices[0].device_id",
        "must not be empty",
    ),
    (
        "padded device_id",
        device_yaml('device_id: " dev1"'),
        "device_id",
        " dev1",
        "devices[0].device_id",
        "must not start or end with whitespace",
    ),
    (
        "@ in device_id",
        device_yaml("device_id: dev@1"),
        "device_id",
        "dev@1",
        "devices[0].device_id",
        "must not contain '@'",
    ),
    (
        "@ in task_name",
        manager_yaml("task_name: office@home"),
        "task_name",
        None,
        "manager.task_name",
        "must not contain '@'",
    ),
    ("empty task_name", manager_yaml('task_name: ""'), "task_name", None, "manager.task_name", "must not be empty"),
    (
        "http url",
        device_yaml("server_url: http://127.0.0.1:5005/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "scheme must be ws or wss, got 'http'",
    ),
    (
        "url without scheme",
        device_yaml("server_url: /ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "must be a ws:// or wss:// URL, got no scheme",
    ),
    (
        "url without host",
        device_yaml("server_url: ws:///ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "has no host",
    ),
    (
        "url with only a port",
        device_yaml("server_url: ws://:5005/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "has no host",
    ),
    (
        "url without path",
        device_yaml("server_url: ws://127.0.0.1:5005"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "has no path",
    ),
    (
        "port out of range",
        device_yaml("server_url: ws://127.0.0.1:99999/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "port must be between 1 and 65535, got 99999",
    ),
    (
        "port zero",
        device_yaml("server_url: ws://127.0.0.1:0/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "port must be between 1 and 65535, got 0",
    ),
    (
        "port not a number",
        device_yaml("server_url: ws://127.0.0.1:ws/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "invalid port 'ws'",
    ),
    (
        "space in url",
        device_yaml('server_url: "ws://127.0.0.1:5005/my ws"'),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "must not contain whitespace",
    ),
    (
        "url fragment",
        device_yaml("server_url: ws://127.0.0.1:5005/ws#x"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "must not have a #fragment",
    ),
    (
        "empty token parameter",
        device_yaml("server_url: ws://127.0.0.1:5005/ws?token="),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "empty ?token= parameter",
    ),
    (
        "negative duration",
        manager_yaml("heartbeat_interval: -1"),
        "heartbeat_interval",
        None,
        "manager.heartbeat_interval",
        "must be a positive number of seconds, got -1",
    ),
    (
        "zero duration",
        manager_yaml("connect_timeout: 0"),
        "connect_timeout",
        None,
        "manager.connect_timeout",
        "must be a positive number of seconds, got 0",
    ),
    (
        "infinite duration",
        manager_yaml("task_timeout: .inf"),
        "task_timeout",
        None,
        "manager.task_timeout",
        "must be a finite number of seconds, got inf",
    ),
    (
        "nan duration",
        manager_yaml("register_timeout: .nan"),
        "register_timeout",
        None,
        "manager.register_timeout",
        "must be a finite number of seconds",
    ),
    (
        "backoff_cap below reconnect_delay",
        manager_yaml("reconnect_delay: 5", "backoff_cap: 2"),
        "backoff_cap",
        None,
        "manager.backoff_cap",
        "must be >= reconnect_delay (5.0), got 2.0",
    ),
    (
        "reconnect_delay above an explicit backoff_cap",
        manager_yaml("reconnect_delay: 60", "backoff_cap: 30"),
        "backoff_cap",
        None,
        "manager.backoff_cap",
        "must be >= reconnect_delay (60.0), got 30.0",
    ),
    (
        "max_retries zero",
        device_yaml("max_retries: 0"),
        "max_retries",
        "dev1",
        "devices[0].max_retries",
        "must be >= 1, got 0",
    ),
    (
        "task_queue_size zero",
        manager_yaml("task_queue_size: 0"),
        "task_queue_size",
        None,
        "manager.task_queue_size",
        "must be >= 1, got 0",
    ),
    (
        "event_buffer negative",
        manager_yaml("event_buffer: -5"),
        "event_buffer",
        None,
        "manager.event_buffer",
        "must be >= 1, got -5",
    ),
    (
        "token_env not a variable name",
        device_yaml("token_env: MY-TOKEN"),
        "token_env",
        "dev1",
        "devices[0].token_env",
        "must be an environment variable name",
    ),
    (
        "ca_file on ws url",
        device_yaml("ca_file: ca.pem"),
        "ca_file",
        "dev1",
        "devices[0].ca_file",
        "only used with wss:// URLs",
    ),
    (
        "credentials in url",
        device_yaml("server_url: ws://user:pw@127.0.0.1:5005/ws"),
        "server_url",
        "dev1",
        "devices[0].server_url",
        "must not carry credentials",
    ),
    (
        "duplicate device_id",
        "devices:\n  - device_id: twin\n    server_url: ws://127.0.0.1:5005/ws\n"
        "  - device_id: twin  # again\n    server_url: ws://127.0.0.1:5006/ws\n",
        "# again",
        "twin",
        "devices[1].device_id",
        "duplicate device_id 'twin': already used by devices[0] at line 2",
    ),
    (
        "device not a mapping",
        MINIMAL + "  - just-a-name\n",
        "just-a-name",
        "devices[1]",
        "devices[1]",
        "each device must be a mapping, got a string",
    ),
    ("devices missing", "local: true\n", "local", None, "devices", "required field missing"),
    ("devices empty", "devices: []\n", "devices", None, "devices", "must list at least one device"),
    ("devices null", "local: false\ndevices:\n", "devices", None, "devices", "expected a list of devices, got null"),
    (
        "devices a mapping",
        "devices:\n  dev1: ws://127.0.0.1:5005/ws\n",
        "dev1",
        None,
        "devices",
        "expected a list of devices, got a mapping",
    ),
    ("devices a string", "devices: dev1\n", "devices", None, "devices", "expected a list of devices, got a string"),
    ("top level a list", "- device_id: dev1\n", "device_id", None, None, "top level must be a mapping, got a list"),
    ("top level a scalar", "devices\n", "devices", None, None, "top level must be a mapping, got a string"),
    ("top level null", "null\n", "null", None, None, "top level must be a mapping, got null"),
    ("manager a list", "manager: [a]\n" + MINIMAL, "manager", None, "manager", "manager must be a mapping, got a list"),
]


@pytest.mark.parametrize(
    ("text", "marker", "device", "field", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
@pytest.mark.usefixtures("yaml_backend")
def test_bad_input_is_reported_at_its_line(
    text: str, marker: str, device: str | None, field: str | None, message: str
) -> None:
    (problem,) = problems_of(text, source="devices.yaml")

    assert problem.file == "devices.yaml"
    assert problem.line == line_of(text, marker)
    assert problem.device == device
    assert problem.field == field
    assert message in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    (problem,) = problems_of(text, source="devices.yaml")
    assert problem.line is None
    assert str(problem) == "devices.yaml: file is empty; expected a mapping with a 'devices' list"


def test_problem_text_names_file_line_device_and_field() -> None:
    text = device_yaml("server_url: http://127.0.0.1:5005/ws")
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="config/devices.yaml")
    assert str(info.value) == "config/devices.yaml:3: device 'dev1': server_url: scheme must be ws or wss, got 'http'"
    assert isinstance(info.value, GalaxyTrioError)


def test_problem_text_for_a_device_without_usable_id() -> None:
    (problem,) = problems_of("devices:\n  - server_url: ws://127.0.0.1:5005/ws\n")
    assert str(problem) == "<string>:2: devices[0]: device_id: required field missing"


@pytest.mark.usefixtures("yaml_backend")
def test_every_problem_is_reported_at_once_sorted_by_line() -> None:
    text = textwrap.dedent(
        """\
        local: maybe
        manager:
          heartbeat_interval: 0
          reconnect_delay: 10
          backoff_cap: 5
          extra: 1
        devices:
          - device_id: good
            server_url: ws://127.0.0.1:5005/ws
          - device_id: a@b
            server_url: http://127.0.0.1:5005/ws
            max_retries: "3"
          - os: linux
          - device_id: good
            server_url: ws://127.0.0.1:70000/ws
            capabilities: [ok, 7]
          - 42
        """
    )
    problems = problems_of(text)

    assert [(p.line, p.field) for p in problems] == [
        (1, "local"),
        (3, "manager.heartbeat_interval"),
        (5, "manager.backoff_cap"),
        (6, "manager.extra"),
        (10, "devices[1].device_id"),
        (11, "devices[1].server_url"),
        (12, "devices[1].max_retries"),
        (13, "devices[2].device_id"),
        (13, "devices[2].server_url"),
        (14, "devices[3].device_id"),
        (15, "devices[3].server_url"),
        (16, "devices[3].capabilities[1]"),
        (17, "devices[4]"),
    ]
    assert [p.device for p in problems[4:]] == ["a@b"] * 3 + ["devices[2]"] * 2 + ["good"] * 3 + ["devices[4]"]
    assert "already used by devices[0] at line 8" in problems[9].message
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).splitlines() == [str(p) for p in problems]


# --- files --------------------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "devices.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert str(info.value) == f"{path}: no such file"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read file")


def test_undecodable_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(b"devices:\n  - \x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(path), 2)
    assert "not UTF-8 text (byte 0x89 at offset 13)" in problem.message
    assert "binary file" in problem.message


def test_binary_but_decodable_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(MINIMAL.encode() + b"  - \x00\x01\x02\x03\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.line == 4
    assert "non-text character U+0000" in problem.message


def test_load_config_reads_the_same_as_parse_config(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    loaded = load_config(str(path))
    assert loaded.source == str(path)
    assert loaded.devices == parse_config(MINIMAL).devices


def test_ca_file_is_resolved_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "certs").mkdir(parents=True)
    ca = tmp_path / "conf" / "certs" / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    path = tmp_path / "conf" / "devices.yaml"
    path.write_text(
        device_yaml("server_url: wss://device.example.com/ws", "ca_file: certs/ca.pem"),
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # a relative config path: the CA must still be found next to the file

    device = load_config(Path("conf/devices.yaml")).devices[0]

    assert device.ca_file == str(ca)
    assert Path(device.ca_file).is_absolute()


def test_missing_ca_file_is_a_problem(tmp_path: Path) -> None:
    text = device_yaml("server_url: wss://device.example.com/ws", "ca_file: certs/ca.pem")
    (problem,) = problems_of(text, base_dir=tmp_path)
    assert problem.field == "devices[0].ca_file"
    assert problem.line == line_of(text, "ca_file")
    assert problem.message == f"no such file: {tmp_path / 'certs' / 'ca.pem'}"


def test_ca_file_without_base_dir_is_kept_as_written() -> None:
    text = device_yaml("server_url: wss://device.example.com/ws", "ca_file: certs/ca.pem")
    assert parse_config(text).devices[0].ca_file == "certs/ca.pem"


# --- tokens -------------------------------------------------------------------------------------------------------


def test_token_in_the_url_is_used_as_is() -> None:
    device = parse_config(device_yaml(f"server_url: ws://127.0.0.1:5005/ws?token={SECRET}")).devices[0]
    assert device.resolve_url(environ={}) == f"ws://127.0.0.1:5005/ws?token={SECRET}"
    assert device.display_url == "ws://127.0.0.1:5005/ws?token=***"


def test_token_from_the_environment_is_added() -> None:
    device = parse_config(device_yaml("token_env: GALAXY_TOKEN")).devices[0]
    url = device.resolve_url(environ={"GALAXY_TOKEN": SECRET})
    assert url == f"ws://127.0.0.1:5005/ws?token={SECRET}"
    assert url_token(url) == SECRET
    assert device.server_url == "ws://127.0.0.1:5005/ws"  # the config itself never holds it


def test_token_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALAXY_TRIO_TEST_TOKEN", SECRET)
    device = DeviceConfig(device_id="d", server_url="ws://127.0.0.1:1/ws", token_env="GALAXY_TRIO_TEST_TOKEN")
    assert url_token(device.resolve_url()) == SECRET


def test_url_token_wins_over_token_env() -> None:
    device = DeviceConfig(device_id="d", server_url="ws://127.0.0.1:1/ws?token=from-url", token_env="T")
    assert device.resolve_url(environ={"T": "from-env"}) == "ws://127.0.0.1:1/ws?token=from-url"


def test_no_token_at_all_gives_the_plain_url() -> None:
    device = DeviceConfig(device_id="d", server_url="ws://127.0.0.1:1/ws")
    assert device.resolve_url(environ={}) == "ws://127.0.0.1:1/ws"


@pytest.mark.parametrize(("environ", "state"), [({}, "is not set"), ({"GALAXY_TOKEN": ""}, "is empty")])
def test_unusable_token_env_names_device_and_variable(environ: dict[str, str], state: str) -> None:
    device = DeviceConfig(device_id="winbox", server_url="ws://127.0.0.1:1/ws", token_env="GALAXY_TOKEN")
    with pytest.raises(ConfigError) as info:
        device.resolve_url(environ=environ)
    (problem,) = info.value.problems
    assert (problem.device, problem.field) == ("winbox", "token_env")
    assert str(info.value) == (
        f"device 'winbox': token_env: environment variable 'GALAXY_TOKEN' {state}; it must hold this device's token"
    )


def test_token_never_appears_in_repr_or_str() -> None:
    text = device_yaml(f"server_url: ws://127.0.0.1:5005/ws?token={SECRET}")
    config = parse_config(text)
    device = config.devices[0]

    for shown in (repr(device), str(device), repr(config), str(config), repr(config.devices), device.display_url):
        assert SECRET not in shown
    assert "token=***" in repr(device)
    assert "token=***" in repr(config)
    assert SECRET not in repr(device.__rich_repr__())


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(device_yaml(f"server_url: http://127.0.0.1:5005/ws?token={SECRET}"), id="bad scheme"),
        pytest.param(device_yaml(f"server_url: ws://127.0.0.1:99999/ws?token={SECRET}"), id="bad port"),
        pytest.param(device_yaml(f"server_url: ws://user:{SECRET}@127.0.0.1:5005/ws"), id="password in url"),
        pytest.param(device_yaml(f'server_url: "ws://127.0.0.1:5005/ws?token={SECRET}'), id="yaml syntax error"),
        pytest.param(device_yaml(f"token: {SECRET}"), id="unknown field"),
        pytest.param(device_yaml(f"server_url: [ws://127.0.0.1:5005/ws?token={SECRET}]"), id="wrong type"),
        pytest.param(device_yaml(f"server_url: ws://127.0.0.1:5005/ws?token={SECRET}#frag"), id="fragment"),
    ],
)
def test_token_never_appears_in_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.problems)


def test_token_never_appears_in_errors_of_structs_built_in_code() -> None:
    with pytest.raises(ConfigError) as info:
        DeviceConfig(device_id="d", server_url=f"ftp://127.0.0.1:1/ws?token={SECRET}")
    assert "scheme must be ws or wss, got 'ftp'" in str(info.value)
    assert SECRET not in str(info.value)


# --- the Structs are always valid, however they are built ----------------------------------------------------


def test_structs_built_in_code_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        DeviceConfig(device_id="a@b", server_url="http://127.0.0.1/ws", max_retries=0)
    assert [(p.device, p.field) for p in info.value.problems] == [
        ("a@b", "device_id"),
        ("a@b", "server_url"),
        ("a@b", "max_retries"),
    ]
    with pytest.raises(ConfigError, match="backoff_cap: must be >= reconnect_delay"):
        ManagerSettings(reconnect_delay=2.0, backoff_cap=1.0)
    with pytest.raises(ConfigError, match="heartbeat_timeout: expected a number, got string"):
        ManagerSettings(heartbeat_timeout="10")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="devices: must list at least one device"):
        GalaxyConfig(devices=())
    device = DeviceConfig(device_id="x", server_url="ws://127.0.0.1:1/ws")
    with pytest.raises(ConfigError) as info:
        GalaxyConfig(devices=(device, device), source="fleet.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.device, problem.field) == ("fleet.yaml", "x", "devices[1].device_id")
    assert str(problem) == "fleet.yaml: device 'x': device_id: duplicate device_id 'x': already used by devices[0]"


def test_structs_built_in_code_are_normalised() -> None:
    settings = ManagerSettings(heartbeat_interval=5)
    assert type(settings.heartbeat_interval) is float
    device = DeviceConfig(device_id="d", server_url="ws://127.0.0.1:1/ws", capabilities=["a"])  # type: ignore[arg-type]
    assert device.capabilities == ("a",)
    config = GalaxyConfig(devices=[device])  # type: ignore[arg-type]
    assert config.devices == (device,)


def test_msgspec_conversion_is_strict_and_validated() -> None:
    raw = {"devices": [{"device_id": "d", "server_url": "ws://127.0.0.1:1/ws", "capabilities": ["a"]}]}
    config = msgspec.convert(raw, GalaxyConfig)
    assert config.devices[0].capabilities == ("a",)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"devices": [{"device_id": "d", "server_url": "ws://h/ws", "x": 1}]}, GalaxyConfig)
    with pytest.raises(ConfigError, match="scheme must be ws or wss"):
        msgspec.convert({"devices": [{"device_id": "d", "server_url": "http://h/ws"}]}, GalaxyConfig)


def test_settings_are_frozen() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.devices[0].max_retries = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.manager.task_name = "other"  # type: ignore[misc]


def test_device_lookup() -> None:
    config = parse_config(MINIMAL)
    assert config.device("dev1") is config.devices[0]
    with pytest.raises(KeyError):
        config.device("nope")


def test_config_error_needs_problems() -> None:
    with pytest.raises(ValueError):
        ConfigError([])


def test_loading_leaves_garbage_collection_as_it_was() -> None:
    import gc

    assert gc.isenabled()
    parse_config(MINIMAL)
    assert gc.isenabled()
    with pytest.raises(ConfigError):
        parse_config("devices: [")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_config(MINIMAL)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_problem_rendering_without_file_or_line() -> None:
    assert str(ConfigProblem(message="m")) == "m"
    assert str(ConfigProblem(message="m", line=3)) == "line 3: m"
    assert str(ConfigProblem(message="m", file="f.yaml", field="manager.event_buffer")) == (
        "f.yaml: manager.event_buffer: m"
    )


def test_environment_is_not_consulted_while_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    # token_env is resolved at connect time, so a config can be validated on a machine without the secrets.
    monkeypatch.delenv("GALAXY_TRIO_ABSENT", raising=False)
    config = parse_config(device_yaml("token_env: GALAXY_TRIO_ABSENT"))
    assert config.devices[0].token_env == "GALAXY_TRIO_ABSENT"
    assert "GALAXY_TRIO_ABSENT" not in os.environ


def test_an_unset_backoff_cap_follows_a_reconnect_delay_above_the_default() -> None:
    # UFO's reconnect_delay is a plain delay and may exceed our default cap (30 s): the cap follows it then.
    settings = parse_config(manager_yaml("reconnect_delay: 60")).manager
    assert (settings.reconnect_delay, settings.backoff_cap) == (60.0, 60.0)
    assert parse_config(manager_yaml("reconnect_delay: 5")).manager.backoff_cap == 30.0
