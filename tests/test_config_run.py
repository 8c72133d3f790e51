"""``check`` refuses what ``run`` refuses, with the same words; YAML loading is bounded and points at the error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import trio
import yaml

from galaxy_trio.cli import main
from galaxy_trio.config import (
    MAX_ALIAS_NODES,
    MAX_CONFIG_BYTES,
    ConfigError,
    ConfigProblem,
    RunChecks,
    load_config,
    parse_config,
)
from galaxy_trio.config import loading as config_loading


@pytest.fixture(params=["libyaml", "pure-python"])
def yaml_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "pure-python":
        monkeypatch.setattr(config_loading, "_YamlLoader", yaml.SafeLoader)


def problems_of(text: str, **kwargs: object) -> tuple[ConfigProblem, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="devices.yaml", **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def fleet(*urls: str, local: bool = False, extra: str = "") -> str:
    lines = ["local: true"] if local else []
    lines.append("devices:")
    for index, url in enumerate(urls):
        lines += [f"  - device_id: d{index}", f"    server_url: {url}"]
        if extra:
            lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"


LOCAL = RunChecks(local=True, environ={})


# --- the run rules, at the lines of the values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ws://127.0.0.1:5005/api", "local mode serves AIP on the path /ws only, got '/api'"),
        ("ws://127.0.0.1:5005/", "got '/'"),
        ("ws://192.0.2.10:5005/ws", "ws://192.0.2.10:5005/ws is not a loopback address"),
        ("wss://127.0.0.1:5005/ws", "local mode serves plain ws://, not wss://"),
    ],
)
def test_local_mode_refuses_what_it_cannot_serve_at_the_url_line(url: str, fragment: str) -> None:
    text = fleet("ws://127.0.0.1:5006/ws", url)
    (problem,) = problems_of(text, run=LOCAL)
    assert (problem.line, problem.device, problem.field) == (5, "d1", "devices[1].server_url")
    assert fragment in problem.message
    parse_config(text)  # a valid file: only running it locally is refused
    parse_config(text, run=RunChecks(local=False, environ={}))


def test_local_true_in_the_file_applies_the_local_rules_too() -> None:
    (problem,) = problems_of(fleet("ws://127.0.0.1:5005/api", local=True), run=RunChecks(environ={}))
    assert "path /ws only" in problem.message


@pytest.mark.parametrize(
    ("first", "second"),
    [("127.0.0.1", "localhost"), ("localhost", "[::1]"), ("[::1]", "[0:0:0:0:0:0:0:1]"), ("LOCALHOST", "127.0.0.1")],
)
def test_local_mode_refuses_two_spellings_of_one_address_on_one_port(first: str, second: str) -> None:
    text = fleet(f"ws://{first}:5005/ws", f"ws://{second}:5005/ws")
    (problem,) = problems_of(text, run=LOCAL)
    assert (problem.line, problem.device) == (5, "d1")
    assert "are the same address on port 5005" in problem.message and "(device 'd0')" in problem.message


@pytest.mark.parametrize(
    "urls",
    [
        ("ws://127.0.0.1:5005/ws", "ws://127.0.0.1:5005/ws"),  # one server, two devices
        ("ws://127.0.0.1:5005/ws", "ws://localhost:5006/ws"),  # other port
        ("ws://127.0.0.1:5005/ws", "ws://127.0.0.2:5005/ws"),  # other address
    ],
)
def test_local_mode_accepts_one_spelling_per_address_and_port(urls: tuple[str, str]) -> None:
    assert len(parse_config(fleet(*urls), run=LOCAL).devices) == 2


def test_an_unset_token_env_is_refused_at_its_line_unless_local_or_in_the_url() -> None:
    text = fleet("ws://127.0.0.1:5005/ws", extra="token_env: GT_TEST_TOKEN")
    (problem,) = problems_of(text, run=RunChecks(environ={}))
    assert (problem.line, problem.field) == (4, "devices[0].token_env")
    assert problem.message == "environment variable 'GT_TEST_TOKEN' is not set; it must hold this device's token"
    (problem,) = problems_of(text, run=RunChecks(environ={"GT_TEST_TOKEN": ""}))
    assert "is empty" in problem.message
    assert parse_config(text, run=RunChecks(environ={"GT_TEST_TOKEN": "t"})).devices
    assert parse_config(text, run=RunChecks(local=True, environ={})).devices  # local mode makes its own token
    with_token = fleet("ws://127.0.0.1:5005/ws?token=t", extra="token_env: GT_TEST_TOKEN")
    assert parse_config(with_token, run=RunChecks(environ={})).devices


# --- check and run: one code path, one message ----------------------------------------------------------------

REFUSED = {
    "path": fleet("ws://127.0.0.1:5005/api", local=True),
    "loopback": fleet("ws://192.0.2.10:5005/ws", local=True),
    "spellings": fleet("ws://127.0.0.1:5005/ws", "ws://localhost:5005/ws", local=True),
    "token_env": fleet("ws://127.0.0.1:5005/ws", extra="token_env: GALAXY_TRIO_TEST_UNSET_TOKEN"),
    "port": fleet("ws://127.0.0.1:0/ws"),
    "bomb": "x-a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    + "".join(f"x-{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + fleet("ws://127.0.0.1:5005/ws", extra="metadata: {boom: *i}"),
}


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    status = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err.splitlines()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_check_refuses_what_run_refuses_with_the_same_message(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GALAXY_TRIO_TEST_UNSET_TOKEN", raising=False)
    path = tmp_path / "devices.yaml"
    path.write_text(REFUSED[name], encoding="utf-8")

    check_status, check_err = _main(capsys, "check", str(path))
    run_status, run_err = _main(capsys, "run", str(path), "--once")

    assert check_status == run_status == 2
    assert check_err[-1].endswith("problem(s) in " + str(path))
    assert ["error: " + check_err[0], *check_err[1:-1]] == run_err
    assert str(path) in run_err[0]


def test_check_local_applies_the_local_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(fleet("ws://127.0.0.1:5005/api"), encoding="utf-8")
    assert _main(capsys, "check", str(path))[0] == 0
    status, err = _main(capsys, "check", str(path), "--local")
    assert status == 2 and "path /ws only" in err[0]


def test_check_and_run_need_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("check", "run"):
        status, err = _main(capsys, command)
        assert status == 2
        assert err == ["error: give CONFIG (a devices.yaml), or --constellation FILE (UFO's constellation.yaml)"]


# --- bounded loading -----------------------------------------------------------------------------------------


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_CONFIG_BYTES + 1)  # sparse, and not YAML: it must not be read at all
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert f"file is {MAX_CONFIG_BYTES + 1:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit" in problem.message
    small = tmp_path / "small.yaml"
    small.write_text(fleet("ws://127.0.0.1:5005/ws"), encoding="utf-8")
    with pytest.raises(ConfigError, match="over the 20-byte limit"):
        load_config(small, max_bytes=20)
    assert load_config(small).devices
    status, err = _main(capsys, "check", str(path))
    assert status == 2 and "limit for a config" in err[0]


@pytest.mark.usefixtures("yaml_backend")
def test_an_alias_bomb_is_refused_naming_the_anchor() -> None:
    (problem,) = problems_of(REFUSED["bomb"])
    # 9 + 9*9 + ... nodes: the alias that crosses MAX_ALIAS_NODES is one of the *f on line 7 (anchor &f: 9**5 items).
    assert problem.line == 7 and problem.column is not None
    assert "the alias *f repeats the" in problem.message and "anchor &f" in problem.message
    assert f"over {MAX_ALIAS_NODES:,} nodes" in problem.message


def test_anchors_within_the_bound_load(yaml_backend: None) -> None:
    text = "x-a: &a {k: v}\n" + fleet("ws://127.0.0.1:5005/ws", "ws://127.0.0.1:5005/ws", extra="metadata: *a")
    assert [device.metadata for device in parse_config(text).devices] == [{"k": "v"}, {"k": "v"}]


# --- positions that point at the real error -----------------------------------------------------------------------


@pytest.mark.usefixtures("yaml_backend")
@pytest.mark.parametrize("quote", ['"', "'"])
def test_an_unclosed_quote_is_reported_where_the_quote_opens(quote: str) -> None:
    text = textwrap.dedent(
        f"""\
        devices:
          - device_id: {quote}dev1
            server_url: ws://127.0.0.1:5005/ws
            os: linux
        """
    )
    (problem,) = problems_of(text)
    assert (problem.line, problem.column) == (2, 16)
    assert problem.message == "invalid YAML: this quoted string is never closed (its closing quote is missing)"
    assert str(problem).startswith("devices.yaml:2:16: invalid YAML")


@pytest.mark.usefixtures("yaml_backend")
@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("devices:\n  - device_id: dev1\n\tserver_url: ws://127.0.0.1:5005/ws\n", 3, 1),
        ("devices:\n  -\tdevice_id: dev1\n", 2, 4),
    ],
)
def test_a_tab_is_named_with_its_column(text: str, line: int, column: int) -> None:
    (problem,) = problems_of(text)
    assert (problem.line, problem.column) == (line, column)
    assert f"a tab character at column {column}" in problem.message
    assert "spaces" in problem.message


@pytest.mark.usefixtures("yaml_backend")
@pytest.mark.parametrize(
    ("line", "field", "hint"),
    [
        ("device_id: on", "devices[0].device_id", "YAML 1.1 reads on as a boolean; quote it to keep the text: 'on'"),
        ("os: no", "devices[0].os", "YAML 1.1 reads no as a boolean; quote it to keep the text: 'no'"),
        ("device_id: 1234", "devices[0].device_id", "YAML reads 1234 as a number; quote it to keep the text: '1234'"),
        ("capabilities: [shell, yes]", "devices[0].capabilities[1]", "YAML 1.1 reads yes as a boolean"),
    ],
)
def test_a_plain_scalar_read_as_another_type_gets_a_hint_to_quote_it(line: str, field: str, hint: str) -> None:
    name = line.split(":", 1)[0]
    body = [line if name == "device_id" else "device_id: dev1", "server_url: ws://127.0.0.1:5005/ws"]
    if name != "device_id":
        body.append(line)
    text = "devices:\n  - " + "\n    ".join(body) + "\n"
    (problem,) = problems_of(text)
    assert problem.field == field
    assert problem.message.startswith("expected a string, got ")
    assert hint in problem.message
    if name != "capabilities":
        key, _, value = line.partition(": ")
        assert parse_config(text.replace(line, f'{key}: "{value}"')).devices


def test_a_problem_with_a_column_shows_it() -> None:
    assert str(ConfigProblem(message="m", file="f.yaml", line=3, column=7)) == "f.yaml:3:7: m"
    assert str(ConfigProblem(message="m", line=3, column=7)) == "line 3:7: m"


# --- the streaming walk: YAML semantics as PyYAML's composer has them -------------------------------------------


@pytest.mark.usefixtures("yaml_backend")
def test_anchors_defined_in_one_device_serve_later_ones() -> None:
    text = textwrap.dedent(
        """\
        devices:
          - &first
            device_id: a
            server_url: ws://127.0.0.1:5005/ws
            os: linux
          - <<: *first
            device_id: b
        """
    )
    a, b = parse_config(text).devices
    assert (b.device_id, b.server_url, b.os) == ("b", a.server_url, "linux")


@pytest.mark.usefixtures("yaml_backend")
def test_an_anchored_devices_list_is_walked_whole() -> None:
    text = "devices: &fleet\n  - device_id: a\n    server_url: ws://127.0.0.1:5005/ws\nx-again: *fleet\n"
    assert [d.device_id for d in parse_config(text).devices] == ["a"]


@pytest.mark.usefixtures("yaml_backend")
@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("devices:\n  - device_id: a\n    server_url: *nowhere\n", 3, "found undefined alias 'nowhere'"),
        ("x-a: &a 1\nx-b: &a 2\ndevices: []\n", 2, "found duplicate anchor 'a'"),
        (fleet("ws://127.0.0.1:5005/ws") + "---\nlocal: true\n", 4, "expected a single document"),
    ],
)
def test_composition_errors_are_reported_at_their_line(text: str, line: int, fragment: str) -> None:
    (problem,) = problems_of(text)
    assert problem.line == line and fragment in problem.message


def test_a_syntax_error_after_bad_devices_is_the_only_problem_reported() -> None:
    # What was walked before a syntax error may be misread: only the error is reported, as before streaming.
    text = fleet("http://127.0.0.1:5005/ws") + "  - device_id: [\n"
    (problem,) = problems_of(text)
    assert problem.message.startswith("invalid YAML")


def test_local_mode_in_code_refuses_by_the_same_rules_before_anything_starts() -> None:
    from galaxy_trio.config import DeviceConfig
    from galaxy_trio.config.rules import local_mode_problem
    from galaxy_trio.local import LocalModeError, open_local_fleet

    devices = [  # never listened on: the refusal comes before any server starts
        DeviceConfig(device_id="a", server_url="ws://127.0.0.1:5005/api"),
        DeviceConfig(device_id="b", server_url="ws://localhost:5006/ws"),
        DeviceConfig(device_id="c", server_url="ws://127.0.0.1:5006/ws"),
    ]

    async def start() -> None:
        async with open_local_fleet(devices):
            pass  # pragma: no cover - never reached

    with pytest.raises(LocalModeError) as info:
        trio.run(start)
    text = str(info.value)
    assert f"device 'a': {local_mode_problem(devices[0].server_url)}" in text
    assert "device 'c': host '127.0.0.1' and 'localhost' (device 'b') are the same address on port 5006" in text
