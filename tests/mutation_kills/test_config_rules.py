"""Mutants of ``galaxy_trio/config/rules.py`` that the suite let live (``tests/mutation.sh config_rules``): the
exact text of each refusal (what an operator reads to fix the file), the edges of every bound (the value at the
limit accepted, one past it refused), and the local-mode checks over more than two devices."""

from __future__ import annotations

import pytest

from galaxy_trio.config import ConfigError, ConfigProblem, RunChecks, parse_config

ONE_DEVICE = "devices:\n  - device_id: dev1\n    server_url: ws://127.0.0.1:5005/ws\n"


def device_file(*extra: str, url: str = "ws://127.0.0.1:5005/ws") -> str:
    return "devices:\n  - device_id: dev1\n    server_url: " + url + "\n" + "".join(f"    {line}\n" for line in extra)


def messages(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)  # type: ignore[arg-type]
    return [str(problem) for problem in info.value.problems]


# --- ConfigProblem and ConfigError ------------------------------------------------------------------------------


def test_a_nested_field_inside_a_device_is_shown_from_the_device_down() -> None:
    problem = ConfigProblem(message="bad", file="f.yaml", line=3, device="dev1", field="devices[0].tools[2].name")
    assert str(problem) == "f.yaml:3: device 'dev1': tools[2].name: bad"


def test_a_config_error_without_problems_is_refused_saying_so() -> None:
    with pytest.raises(ValueError, match=r"^ConfigError needs at least one problem$"):
        ConfigError([])


# --- one value at a time ----------------------------------------------------------------------------------------


def test_one_is_the_least_count_accepted_and_zero_is_refused() -> None:
    config = parse_config("manager:\n  task_queue_size: 1\n  event_buffer: 1\n" + ONE_DEVICE)
    assert (config.manager.task_queue_size, config.manager.event_buffer) == (1, 1)
    assert messages("manager:\n  task_queue_size: 0\n" + ONE_DEVICE) == [
        "<string>:2: manager.task_queue_size: must be >= 1, got 0"
    ]


def test_failed_retry_interval_accepts_zero_and_refuses_negative_or_infinite_values() -> None:
    assert parse_config("manager:\n  failed_retry_interval: 0\n" + ONE_DEVICE).manager.failed_retry_interval == 0.0
    assert messages("manager:\n  failed_retry_interval: -1\n" + ONE_DEVICE) == [
        "<string>:2: manager.failed_retry_interval: must be >= 0 seconds (0 disables it), got -1"
    ]
    assert messages("manager:\n  failed_retry_interval: .inf\n" + ONE_DEVICE) == [
        "<string>:2: manager.failed_retry_interval: must be a finite number of seconds, got inf"
    ]


def test_max_concurrent_tasks_may_be_null_but_not_a_fraction() -> None:
    assert parse_config("manager:\n  max_concurrent_tasks: null\n" + ONE_DEVICE).manager.max_concurrent_tasks is None
    assert messages("manager:\n  max_concurrent_tasks: 2.5\n" + ONE_DEVICE) == [
        "<string>:2: manager.max_concurrent_tasks: expected an integer, got number"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('ca_file: ""', "ca_file: must not be empty"),
        ('capabilities: [ui, ""]', "capabilities: entries must not be empty"),
        ("metadata: {1: one}", "metadata: keys must be strings"),
        ("os: {name: linux}", "os: expected a string, got mapping"),
        ("ca_file: ca.pem", "ca_file: is only used with wss:// URLs, but server_url is not wss://"),
    ],
)
def test_each_bad_device_field_is_refused_with_its_own_text(line: str, message: str) -> None:
    assert messages(device_file(line)) == [f"<string>:4: device 'dev1': {message}"]


def test_a_value_of_a_type_without_a_yaml_name_is_named_by_its_python_type() -> None:
    """And the hint says what YAML took it for (it said 'as a number')."""
    assert messages(device_file("os: 2025-01-01")) == [
        "<string>:4: device 'dev1': os: expected a string, got date: YAML reads 2025-01-01 as a date; quote it to"
        " keep the text: '2025-01-01'"
    ]


def test_an_empty_device_id_is_refused_saying_so() -> None:
    text = 'devices:\n  - device_id: ""\n    server_url: ws://h:1/ws\n'
    assert messages(text) == ["<string>:2: devices[0]: device_id: must not be empty"]


def test_a_null_where_text_is_wanted_is_named_null() -> None:
    assert messages("manager:\n  task_name: null\n" + ONE_DEVICE)[0].startswith(
        "<string>:2: manager.task_name: expected a string, got null"
    )


# --- server_url ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ('"ws://h:1/ws x"', "must not contain whitespace or control characters"),
        ("ws://[::1/ws", "is not a valid URL"),
        ("//h:1/ws", "must be a ws:// or wss:// URL, got no scheme"),
        ("ws://user@h:1/ws", "must not carry credentials before the host; put the token in ?token= or use token_env"),
        ("ws://:1/ws", "has no host"),
        ("ws://h:1", "has no path (e.g. ws://host:port/ws)"),
        ("ws://h:1/ws#", "must not have a #fragment"),
        ("ws://h:1/ws#top", "must not have a #fragment"),
        ("ws://h:1/ws?token=", "has an empty ?token= parameter"),
        ("ws://h:65536/ws", "port must be between 1 and 65535, got 65536"),
        ("ws://h:0/ws", "port must be between 1 and 65535, got 0"),
        # urlsplit takes the port as all after the host's first ':' (after the first ']' for IPv6): so do we.
        ("ws://h:b:80/ws", "invalid port 'b:80'"),
        ("ws://[::1]:80]/ws", "invalid port '80]'"),
    ],
)
def test_each_bad_server_url_is_refused_with_its_own_text(url: str, message: str) -> None:
    assert messages(device_file(url=url)) == [f"<string>:3: device 'dev1': server_url: {message}"]


@pytest.mark.parametrize("url", ["ws://h:1/ws", "ws://h:65535/ws", "ws://[::1]/ws", "ws://[::1]:5005/ws", "ws://h/ws"])
def test_the_ports_at_the_limits_and_urls_without_a_port_are_accepted(url: str) -> None:
    assert parse_config(device_file(url=url)).devices[0].server_url == url


def test_every_accepted_server_url_has_a_port() -> None:
    """What the rule lets through, the manager connects to: its port must be readable (it raised ValueError)."""
    for url in ("ws://h:b:80/ws", "ws://[::1]:80]/ws"):
        with pytest.raises(ConfigError):
            parse_config(device_file(url=url), run=RunChecks(local=True))


# --- local mode ---------------------------------------------------------------------------------------------------


def test_a_server_local_mode_cannot_start_is_refused_saying_what_to_do() -> None:
    assert messages(device_file(url="ws://example.com:5005/ws"), run=RunChecks(local=True)) == [
        "<string>:3: device 'dev1': server_url: ws://example.com:5005/ws is not a loopback address; local mode only"
        " starts servers on this machine (localhost, 127.0.0.1, ::1): run without --local and without 'local: true'"
        " to connect to servers that already run"
    ]


def test_every_device_spelling_an_earlier_ones_address_differently_is_named() -> None:
    text = "devices:\n" + "".join(
        f"  - device_id: {name}\n    server_url: ws://{host}:5005/ws\n"
        for name, host in (("a", "localhost"), ("b", "127.0.0.1"), ("c", "[::1]"))
    )
    assert messages(text, run=RunChecks(local=True)) == [
        f"<string>:{line}: device {name!r}: server_url: host {host!r} and 'localhost' (device 'a') are the same"
        " address on port 5005; local mode starts one server per host and port as written, so spell the host the"
        " same way for both"
        for line, name, host in ((5, "b", "127.0.0.1"), (7, "c", "::1"))
    ]
