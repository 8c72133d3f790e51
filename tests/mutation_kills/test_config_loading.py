"""Mutants of the loader's bounds and error positions in ``galaxy_trio/config/loading.py`` that the suite let live
(``tests/mutation.sh config_loading``): the size cap and the alias-expansion cap at their exact limits (at the
limit loads, one past is refused), a pipe that has no size, and the line and column of what is refused."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from galaxy_trio.config import MAX_ALIAS_NODES, ConfigError, ConfigProblem, Setting, load_config, parse_config

ONE_DEVICE = "devices:\n  - device_id: dev1\n    server_url: ws://127.0.0.1:5005/ws\n"
# Ends in its device id's last character: read one byte short, it is another file.
FLOW_DEVICE = "devices: [{device_id: dev1, server_url: 'ws://127.0.0.1:5005/ws'}, {device_id: dev2, server_url: 'ws://127.0.0.1:5005/ws'}]"


def refused(text: str, **kwargs: object) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)  # type: ignore[arg-type]
    (problem,) = info.value.problems
    return problem


@contextmanager
def pipe_holding(path: Path, data: bytes) -> Iterator[list[int]]:
    """A FIFO at ``path`` fed ``data`` by a thread; yields a list that ends up holding the bytes it got to write."""
    os.mkfifo(path)
    written = [0]

    def feed() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            while written[0] < len(data):
                written[0] += os.write(fd, data[written[0] : written[0] + 4096])
        except BrokenPipeError:
            pass  # the reader has read what it wanted and closed its end
        finally:
            os.close(fd)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        yield written
    finally:
        feeder.join(10)
        assert not feeder.is_alive()


# --- the size cap -------------------------------------------------------------------------------------------------


def test_a_file_of_exactly_max_bytes_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(ONE_DEVICE)
    size = len(ONE_DEVICE)
    assert load_config(path, max_bytes=size).devices[0].device_id == "dev1"
    with pytest.raises(ConfigError) as info:
        load_config(path, max_bytes=size - 1)
    assert str(info.value) == (
        f"{path}: file is {size} bytes, over the {size - 1}-byte limit for a config; split the fleet over several"
        " managers (fleet mode), or raise max_bytes when loading it from code"
    )


def test_text_of_exactly_max_bytes_parses_and_one_character_more_is_refused() -> None:
    assert parse_config(ONE_DEVICE, max_bytes=len(ONE_DEVICE)).devices[0].device_id == "dev1"
    problem = refused(ONE_DEVICE, max_bytes=len(ONE_DEVICE) - 1)
    assert str(problem) == f"<string>: text is over the {len(ONE_DEVICE) - 1}-character limit for a config"


def test_a_pipe_of_exactly_max_bytes_loads_whole(tmp_path: Path) -> None:
    path = tmp_path / "fifo.yaml"
    with pipe_holding(path, FLOW_DEVICE.encode()):
        config = load_config(path, max_bytes=len(FLOW_DEVICE))
    assert [device.device_id for device in config.devices] == ["dev1", "dev2"]


def test_a_pipe_over_max_bytes_is_refused_and_not_read_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "fifo.yaml"
    data = ONE_DEVICE.encode() + b"#" * (1 << 20)
    with pipe_holding(path, data) as written, pytest.raises(ConfigError) as info:
        load_config(path, max_bytes=1000)
    assert str(info.value) == (
        f"{path}: file is over the 1,000-byte limit for a config; split the fleet over several managers (fleet"
        " mode), or raise max_bytes when loading it from code"
    )
    assert written[0] < len(data)


def test_a_pipe_over_max_bytes_of_multi_byte_text_is_refused_not_loaded_cut_short(tmp_path: Path) -> None:
    """Cut at max_bytes + 1 bytes, 'é' * k decodes to fewer characters than max_bytes: it loaded, truncated."""
    path = tmp_path / "fifo.yaml"
    data = (ONE_DEVICE + "# " + "é" * 100).encode()
    limit = len(ONE_DEVICE) + 2 + 2 * 50 - 1  # max_bytes + 1 ends after the 50th 'é'
    with pipe_holding(path, data), pytest.raises(ConfigError) as info:
        load_config(path, max_bytes=limit)
    assert str(info.value).startswith(f"{path}: file is over the {limit}-byte limit for a config")


# --- what cannot be read or decoded -------------------------------------------------------------------------------


def test_a_directory_is_refused_with_the_systems_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read file: Is a directory"


def test_a_bad_byte_after_a_leading_blank_line_is_placed_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_bytes(b"\n# one\n# two \xff\n" + ONE_DEVICE.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.message) == (
        3,
        "not UTF-8 text (byte 0xff at offset 13); is this a binary file?",
    )


def test_a_non_text_character_after_a_leading_blank_line_is_placed_on_its_own_line() -> None:
    problem = refused("\n# one\n# two \x01\n" + ONE_DEVICE)
    assert (problem.line, problem.message) == (3, "contains the non-text character U+0001; is this a binary file?")


# --- YAML syntax errors -------------------------------------------------------------------------------------------


def test_an_unclosed_flow_list_on_the_only_line_is_placed_on_that_line_with_context_and_problem() -> None:
    problem = refused("devices: [a\n")
    assert (problem.line, problem.column) == (1, 1)
    assert problem.message.startswith("invalid YAML: while parsing a flow sequence; ")


def test_an_error_at_the_very_end_of_a_line_is_placed_there() -> None:
    problem = refused("local: &\n" + ONE_DEVICE)
    assert (problem.line, problem.column) == (1, 9)
    assert problem.message.startswith("invalid YAML: ")


def test_a_tab_indent_is_named_with_its_column_and_what_to_do() -> None:
    problem = refused("devices:\n  - device_id: dev1\n  \t server_url: ws://127.0.0.1:5005/ws\n")
    assert str(problem) == (
        "<string>:3:3: invalid YAML: a tab character at column 3; YAML indents with spaces only: replace the tab"
        " with spaces"
    )


# --- the alias-expansion cap ----------------------------------------------------------------------------------------


def aliases_adding(total: int) -> str:
    """A valid file whose aliases add exactly ``total`` nodes (>= 1,000), the last one an alias inside its own anchor.

    ``&a`` is a list of 999 scalars (1,000 nodes), ``&s`` one scalar; ``*r`` sits inside ``&r`` (still open when
    the alias is read), and counts as one node.
    """
    lists, scalars = divmod(total - 1, 1000)
    return (
        "x-a: &a [" + ", ".join(["0"] * 999) + "]\n"
        "x-b: [" + ", ".join(["*a"] * lists) + "]\n"
        "x-s: &s 0\n"
        "x-c: [" + ", ".join(["*s"] * scalars) + "]\n"
        "x-r: &r [*r]\n" + ONE_DEVICE
    )


def test_aliases_adding_exactly_max_alias_nodes_load() -> None:
    assert parse_config(aliases_adding(MAX_ALIAS_NODES)).devices[0].device_id == "dev1"


def test_one_alias_node_past_max_alias_nodes_is_refused_at_that_alias() -> None:
    problem = refused(aliases_adding(MAX_ALIAS_NODES) + "x-d: *s\n")
    assert str(problem) == (
        f"<string>:9:6: the alias *s repeats the 1 nodes of anchor &s, and aliases now add over {MAX_ALIAS_NODES:,}"
        " nodes to this document; refusing it (an alias bomb?)"
    )


def test_an_undefined_alias_is_reported_as_undefined_at_its_place() -> None:
    problem = refused("x-a: &a 1\nx-b: *nope\n" + ONE_DEVICE)
    assert str(problem) == "<string>:2:6: invalid YAML: found undefined alias 'nope'"


# --- the order problems are listed in ---------------------------------------------------------------------------------


def test_the_devices_files_problems_come_before_those_of_another_file() -> None:
    settings = {"heartbeat_interval": Setting(-1.0, "constellation.yaml", 4, "heartbeat_interval")}
    with pytest.raises(ConfigError) as info:
        parse_config(ONE_DEVICE.replace("dev1", "a@b"), settings=settings)
    assert [(problem.file, problem.line, problem.field) for problem in info.value.problems] == [
        ("<string>", 2, "devices[0].device_id"),
        ("constellation.yaml", 4, "heartbeat_interval"),
    ]
