"""ToolRegistry, the signature-derived schemas, and ToolExecutor's one-Result-per-Command contract."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import pytest
import trio

from galaxy_trio.agent import (
    NO_ACTION_RESULT,
    ToolError,
    ToolExecutor,
    ToolRegistry,
    add_builtin_tools,
    default_tools,
)
from galaxy_trio.aip import Command, Result, ResultStatus, ToolType, decode_client_message

from ..frames import raw as recorded_raw

EXECUTE_DESCRIPTION = (
    "Placeholder tool description (original text replaced).\n\nSecond paragraph:\n- runs one command\n"
    '- returns "stdout" and "stderr"'
)


def _recorded_tool_infos() -> list[dict[str, Any]]:
    message = decode_client_message(recorded_raw("task_roundtrip", 6))
    assert message.action_results is not None
    infos = message.action_results[0].result
    assert isinstance(infos, list)
    return infos


def _command(tool_name: str, parameters: dict[str, Any] | None = None, call_id: str = "call-1") -> Command:
    return Command(tool_name=tool_name, parameters=parameters, tool_type=ToolType.ACTION, call_id=call_id)


def _executor(registry: ToolRegistry, deadline: float = 60.0, **kwargs: Any) -> ToolExecutor:
    return ToolExecutor(registry, default_deadline=deadline, **kwargs)


def _failure(error: str, call_id: str = "call-1") -> Result:
    return Result(status=ResultStatus.FAILURE, error=error, result=None, namespace=None, call_id=call_id)


# --- registration and list_tools -----------------------------------------------------------------------------


def test_decorator_registers_bare_and_configured_functions_and_returns_them_unchanged() -> None:
    tools = ToolRegistry()

    @tools.tool
    def plain(x: int) -> int:
        """Double it."""
        return 2 * x

    @tools.tool(name="renamed", tool_type=ToolType.ACTION, description="Explicit.", title="Renamed tool")
    async def original(y: str = "a") -> str:
        return y

    assert plain(4) == 8  # still the function
    assert [tool.name for tool in tools] == ["plain", "renamed"]
    assert "renamed" in tools and "original" not in tools
    assert len(tools) == 2
    plain_info, renamed_info = tools.list_tools()
    assert plain_info["tool_key"] == "data_collection::plain"
    assert plain_info["description"] == "Double it."
    assert renamed_info["tool_key"] == "action::renamed"
    assert renamed_info["title"] == "Renamed tool"
    assert renamed_info["description"] == "Explicit."


def test_duplicate_names_and_unusable_signatures_are_refused_at_registration() -> None:
    tools = ToolRegistry()
    tools.add(lambda: None, name="dup")

    with pytest.raises(ValueError, match="'dup' is already registered"):
        tools.add(lambda: None, name="dup")
    with pytest.raises(TypeError, match="parameter 'args' cannot be passed by keyword"):
        tools.add(lambda *args: None, name="varargs")
    with pytest.raises(ValueError, match="deadline must be > 0"):
        tools.add(lambda: None, name="bad_deadline", deadline=0)
    with pytest.raises(ValueError, match=r"'bogus'"):
        tools.add(lambda: None, name="bad_type", tool_type="bogus")


def test_tool_info_keys_match_the_recorded_list_tools_element() -> None:
    tools = ToolRegistry()
    tools.add(lambda: None, name="t")

    (info,) = tools.list_tools()

    for recorded in _recorded_tool_infos():
        assert list(info) == list(recorded)
    assert info == {
        "tool_key": "data_collection::t",
        "tool_name": "t",
        "title": None,
        "namespace": "galaxy_trio",
        "tool_type": "data_collection",
        "description": None,
        "input_schema": {"properties": {}, "type": "object"},
        "output_schema": None,
        "meta": None,
        "annotations": None,
    }


def test_input_schema_from_a_signature_matches_the_recorded_pydantic_schema() -> None:
    recorded = _recorded_tool_infos()[0]
    tools = ToolRegistry(namespace="BashExecutor")

    @tools.tool(name="execute_command", tool_type="action", description=EXECUTE_DESCRIPTION)
    def execute(
        command: Annotated[str, "Placeholder: the command line to run, e.g. 'uname -s' or 'grep -r \"x\" .'."],
        api_key: Annotated[str, "Placeholder: credential expected by the tool server."],
        timeout: Annotated[int, "Placeholder: time limit in seconds (1-120), default 30."] = 30,
        cwd: Annotated[str | None, "Placeholder: working directory, or null for the default."] = None,
    ) -> dict[str, Any]:
        return {}

    (info,) = tools.list_tools()

    # Same content and the same key order everywhere, as the bytes show.
    assert json.dumps(info["input_schema"]) == json.dumps(recorded["input_schema"])
    for key in ("tool_key", "tool_name", "title", "namespace", "tool_type", "description", "annotations"):
        assert info[key] == recorded[key]
    assert info["output_schema"] == {"additionalProperties": True, "type": "object"}


def test_schema_types_for_common_annotations() -> None:
    tools = ToolRegistry()

    @tools.tool
    def typed(
        s: str,
        i: int,
        f: float,
        b: bool,
        items: list[str],
        mapping: dict[str, int],
        anything: Any = None,
        **extra: Any,
    ) -> list[int]:
        return []

    schema = tools.list_tools()[0]["input_schema"]

    assert schema["properties"] == {
        "s": {"title": "S", "type": "string"},
        "i": {"title": "I", "type": "integer"},
        "f": {"title": "F", "type": "number"},
        "b": {"title": "B", "type": "boolean"},
        "items": {"items": {"type": "string"}, "title": "Items", "type": "array"},
        "mapping": {"additionalProperties": {"type": "integer"}, "title": "Mapping", "type": "object"},
        "anything": {"default": None, "title": "Anything"},
    }
    assert schema["required"] == ["s", "i", "f", "b", "items", "mapping"]
    assert schema["additionalProperties"] is True
    assert list(schema) == ["additionalProperties", "properties", "required", "type"]
    assert tools.list_tools()[0]["output_schema"] is None  # only objects get an output schema


def test_list_tools_filters_by_tool_type() -> None:
    tools = ToolRegistry()
    tools.add(lambda: 1, name="reader")
    tools.add(lambda: 2, name="doer", tool_type=ToolType.ACTION)

    assert [info["tool_name"] for info in tools.list_tools("action")] == ["doer"]
    assert [info["tool_name"] for info in tools.list_tools(ToolType.DATA_COLLECTION)] == ["reader"]
    assert [info["tool_name"] for info in tools.list_tools()] == ["reader", "doer"]


# --- built-ins -------------------------------------------------------------------------------------------------


async def test_builtin_list_tools_answers_ufos_first_command() -> None:
    tools = default_tools(lambda: {"platform": "linux"})

    result = await _executor(tools).run(_command("list_tools", {"tool_type": "action"}, call_id="78685b1c"))

    assert result.status is ResultStatus.SUCCESS
    assert result.call_id == "78685b1c"
    assert result.namespace == "galaxy_trio"
    assert [info["tool_key"] for info in result.result] == ["action::get_system_info", "action::echo"]
    assert result.result == tools.list_tools("action")


async def test_builtin_list_tools_rejects_an_unknown_tool_type() -> None:
    result = await _executor(default_tools(dict)).run(_command("list_tools", {"tool_type": "gui"}))

    assert result == _failure(
        "tool 'list_tools' parameter 'tool_type' must be one of 'data_collection', 'action' or null, got string"
    )


async def test_builtin_get_system_info_is_fresh_on_every_call() -> None:
    calls: list[int] = []

    def system_info() -> dict[str, Any]:
        calls.append(1)
        return {"device_id": "d", "call": len(calls)}

    executor = _executor(default_tools(system_info))

    first = await executor.run(_command("get_system_info"))
    second = await executor.run(_command("get_system_info"))

    assert first.result == {"device_id": "d", "call": 1}
    assert second.result == {"device_id": "d", "call": 2}


async def test_builtin_echo_returns_its_text() -> None:
    result = await _executor(default_tools(dict)).run(_command("echo", {"text": "héllo\n"}, call_id="c9"))

    assert result == Result(status=ResultStatus.SUCCESS, result="héllo\n", namespace="galaxy_trio", call_id="c9")


def test_no_builtin_runs_shell_commands() -> None:
    tools = ToolRegistry()
    add_builtin_tools(tools, dict)

    assert [tool.name for tool in tools] == ["list_tools", "get_system_info", "echo"]


# --- execution outcomes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ({"txt": "x"}, "tool 'echo' got unexpected parameter 'txt'"),
        ({"text": "x", "a": 1, "b": 2}, "tool 'echo' got unexpected parameters 'a', 'b'"),
        ({}, "tool 'echo' is missing required parameter 'text'"),
        (None, "tool 'echo' is missing required parameter 'text'"),
        ({"text": 5}, "tool 'echo' parameter 'text' must be string, got integer"),
        ({"text": None}, "tool 'echo' parameter 'text' must be string, got null"),
    ],
)
async def test_parameters_are_validated_against_the_signature(parameters: dict[str, Any] | None, error: str) -> None:
    result = await _executor(default_tools(dict)).run(_command("echo", parameters))

    assert result == _failure(error)


async def test_type_checks_follow_json_semantics() -> None:
    tools = ToolRegistry()
    seen: list[Any] = []

    @tools.tool(in_thread=False)
    def numbers(n: int, x: float, flag: bool, maybe: str | None = None) -> None:
        seen.append((n, x, flag, maybe))

    executor = _executor(tools)

    ok = await executor.run(_command("numbers", {"n": 1, "x": 2, "flag": False, "maybe": None}))
    bool_as_int = await executor.run(_command("numbers", {"n": True, "x": 2.5, "flag": True}))
    float_as_int = await executor.run(_command("numbers", {"n": 1.0, "x": 2.5, "flag": True}))

    assert ok.status is ResultStatus.SUCCESS and seen == [(1, 2, False, None)]
    assert bool_as_int.error == "tool 'numbers' parameter 'n' must be integer, got boolean"
    assert float_as_int.error == "tool 'numbers' parameter 'n' must be integer, got number"


async def test_var_keyword_tools_accept_any_parameter() -> None:
    tools = ToolRegistry()
    tools.add(lambda **kw: kw, name="collect", in_thread=False)

    result = await _executor(tools).run(_command("collect", {"a": 1, "b": [2]}))

    assert result.result == {"a": 1, "b": [2]}


@pytest.mark.parametrize("is_async", [False, True])
async def test_a_raising_tool_becomes_a_failure_naming_the_exception(is_async: bool) -> None:
    tools = ToolRegistry()
    if is_async:

        async def explode(path: str) -> None:
            raise FileNotFoundError(f"no such file: {path}")

        tools.add(explode)
    else:

        def explode_sync(path: str) -> None:
            raise FileNotFoundError(f"no such file: {path}")

        tools.add(explode_sync, name="explode")

    result = await _executor(tools).run(_command("explode", {"path": "/x"}, call_id="c2"))

    assert result == _failure("FileNotFoundError: no such file: /x", call_id="c2")


async def test_a_tool_error_is_reported_verbatim() -> None:
    tools = ToolRegistry()

    @tools.tool
    async def picky() -> None:
        raise ToolError("window 'Notepad' not found")

    result = await _executor(tools).run(_command("picky"))

    assert result == _failure("window 'Notepad' not found")


async def test_unknown_tool_is_a_failure() -> None:
    result = await _executor(default_tools(dict)).run(_command("rm_rf", {"path": "/"}, call_id="c3"))

    assert result == _failure("unknown tool 'rm_rf'", call_id="c3")


async def test_empty_tool_name_takes_no_action() -> None:
    result = await _executor(ToolRegistry()).run(_command("", {"whatever": 1}, call_id="c4"))

    assert result == Result(status=ResultStatus.SUCCESS, error=None, result=NO_ACTION_RESULT, call_id="c4")
    assert NO_ACTION_RESULT == "No action taken."


async def test_results_are_normalised_to_json_and_unencodable_ones_fail() -> None:
    @dataclass
    class Point:
        x: int
        y: int

    tools = ToolRegistry()
    tools.add(lambda: {"pair": (1, 2), "point": Point(3, 4), 5: "int key"}, name="shapes", in_thread=False)
    tools.add(lambda: object(), name="opaque", in_thread=False)
    loop: list[Any] = []
    loop.append(loop)
    tools.add(lambda: loop, name="self_referencing", in_thread=False)
    executor = _executor(tools)

    shapes = await executor.run(_command("shapes"))
    opaque = await executor.run(_command("opaque"))
    looped = await executor.run(_command("self_referencing"))

    assert msgspec.json.decode(msgspec.json.encode(shapes.result)) == {
        "pair": [1, 2],
        "point": {"x": 3, "y": 4},
        "5": "int key",
    }
    assert shapes.result["point"] == {"x": 3, "y": 4}
    assert opaque.status is ResultStatus.FAILURE
    assert opaque.error is not None and opaque.error.startswith("tool 'opaque' returned a value that cannot be sent")
    assert looped.status is ResultStatus.FAILURE
    assert looped.error is not None and "recursion" in looped.error


async def test_sync_tools_run_in_a_worker_thread_unless_told_otherwise() -> None:
    tools = ToolRegistry()
    tools.add(lambda: threading.current_thread() is threading.main_thread(), name="threaded")
    tools.add(lambda: threading.current_thread() is threading.main_thread(), name="inline", in_thread=False)
    executor = _executor(tools)

    assert (await executor.run(_command("threaded"))).result is False
    assert (await executor.run(_command("inline"))).result is True


# --- deadlines (virtual time) ----------------------------------------------------------------------------------


async def test_an_async_tool_past_the_default_deadline_times_out(autojump_clock: trio.testing.MockClock) -> None:
    tools = ToolRegistry()

    @tools.tool
    async def slow() -> str:
        await trio.sleep(3600)
        return "too late"

    start = trio.current_time()
    result = await _executor(tools, deadline=5).run(_command("slow", call_id="c5"))

    assert result == _failure("tool 'slow' timed out after 5 s", call_id="c5")
    assert trio.current_time() - start == pytest.approx(5)


async def test_a_tool_deadline_overrides_the_default(autojump_clock: trio.testing.MockClock) -> None:
    tools = ToolRegistry()

    @tools.tool(deadline=0.25)
    async def quick() -> None:
        await trio.sleep(1)

    start = trio.current_time()
    result = await _executor(tools, deadline=60).run(_command("quick"))

    assert result.error == "tool 'quick' timed out after 0.25 s"
    assert trio.current_time() - start == pytest.approx(0.25)


async def test_a_tool_that_turns_the_timeout_into_its_own_error_still_reports_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tools = ToolRegistry()

    @tools.tool
    async def wrapper() -> None:
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            raise RuntimeError("interrupted") from None

    result = await _executor(tools, deadline=2).run(_command("wrapper"))

    assert result.error == "tool 'wrapper' timed out after 2 s"


async def test_a_blocked_sync_tool_is_abandoned_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    release = threading.Event()
    tools = ToolRegistry()

    @tools.tool
    def stuck() -> str:
        release.wait(30)
        return "finished"

    try:
        start = trio.current_time()
        result = await _executor(tools, deadline=3).run(_command("stuck"))
    finally:
        release.set()

    assert result.error == "tool 'stuck' timed out after 3 s"
    assert trio.current_time() - start == pytest.approx(3)


# --- batches ---------------------------------------------------------------------------------------------------


def _batch_tools(ran: list[str]) -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool(in_thread=False)
    def ok(tag: str) -> str:
        ran.append(tag)
        return tag

    @tools.tool(in_thread=False)
    def fail(tag: str) -> str:
        ran.append(tag)
        raise ValueError(tag)

    return tools


async def test_a_batch_answers_one_result_per_command_in_order() -> None:
    ran: list[str] = []
    commands = [_command("ok", {"tag": "a"}, "c1"), _command("fail", {"tag": "b"}, "c2")]

    results = await _executor(_batch_tools(ran)).run_all(commands)

    assert [(r.status, r.call_id) for r in results] == [(ResultStatus.SUCCESS, "c1"), (ResultStatus.FAILURE, "c2")]
    assert results[1].error == "ValueError: b"
    assert ran == ["a", "b"]


async def test_after_a_failure_the_rest_of_the_batch_is_skipped() -> None:
    ran: list[str] = []
    commands = [_command("fail", {"tag": "a"}, "c1"), _command("ok", {"tag": "b"}, "c2"), _command("ok", {}, "c3")]

    results = await _executor(_batch_tools(ran)).run_all(commands)

    assert [(r.status, r.call_id) for r in results] == [
        (ResultStatus.FAILURE, "c1"),
        (ResultStatus.SKIPPED, "c2"),
        (ResultStatus.SKIPPED, "c3"),
    ]
    assert results[1].error == "skipped: an earlier action in this command failed ('fail')"
    assert ran == ["a"]


async def test_without_skip_after_failure_every_command_runs() -> None:
    ran: list[str] = []
    commands = [_command("fail", {"tag": "a"}, "c1"), _command("ok", {"tag": "b"}, "c2")]

    results = await _executor(_batch_tools(ran), skip_after_failure=False).run_all(commands)

    assert [r.status for r in results] == [ResultStatus.FAILURE, ResultStatus.SUCCESS]
    assert ran == ["a", "b"]


async def test_an_empty_batch_gives_no_results() -> None:
    assert await _executor(default_tools(dict)).run_all([]) == []


async def test_builtin_list_tools_takes_ufos_parameters() -> None:
    tools = default_tools(dict)
    executor = _executor(tools)

    async def keys(parameters: dict[str, Any] | None) -> list[str]:
        result = await executor.run(_command("list_tools", parameters))
        assert result.status is ResultStatus.SUCCESS, result.error
        return [info["tool_key"] for info in result.result]

    # UFO's meta tool: no parameter lists every type, without list_tools itself (remove_meta defaults to true).
    assert await keys(None) == ["action::get_system_info", "action::echo"]
    assert await keys({"tool_type": "data_collection"}) == []
    # With remove_meta false it is listed under the type asked for, or under every type.
    assert await keys({"tool_type": "data_collection", "remove_meta": False}) == ["data_collection::list_tools"]
    assert await keys({"remove_meta": False}) == [
        "data_collection::list_tools",
        "action::list_tools",
        "action::get_system_info",
        "action::echo",
    ]
    # One namespace per registry: another one lists nothing.
    assert await keys({"namespace": "galaxy_trio"}) == ["action::get_system_info", "action::echo"]
    assert await keys({"namespace": "HardwareExecutor"}) == []
    schema = tools.list_tools(remove_meta=False)[0]["input_schema"]
    assert list(schema["properties"]) == ["tool_type", "namespace", "remove_meta"]
    assert "required" not in schema


def test_registry_list_tools_hides_meta_tools_unless_asked() -> None:
    tools = ToolRegistry()
    tools.add(lambda: 1, name="meta", meta_tool=True)
    tools.add(lambda: 2, name="doer", tool_type=ToolType.ACTION)

    assert [info["tool_key"] for info in tools.list_tools()] == ["action::doer"]
    assert [info["tool_key"] for info in tools.list_tools("action", remove_meta=False)] == [
        "action::meta",
        "action::doer",
    ]
