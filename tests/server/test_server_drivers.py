"""The session-driver seam: custom drivers plugged into serve_aip, and the default driver's request syntax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from galaxy_trio.aip import ClientType, Command, Result, ResultStatus, ServerMessageType, TaskStatus, ToolType, builders
from galaxy_trio.server import AIPServer, SessionDriver, SessionHandle, TaskFailed, parse_tool_request

from ._peers import Peer, ok, open_peer, results_for, start_server

SYSTEM_INFO = {"device_id": "dev", "platform": "linux", "cpu_count": 8}


async def run_task(nursery: trio.Nursery, driver: SessionDriver, device_script: Any) -> Any:
    """Serve with ``driver``, send one TASK from a scoped constellation, let ``device_script(device)`` play the
    device, and return the TASK_END the constellation got (after checking the device got the same one)."""
    server = await start_server(nursery, driver=driver)
    # A guard, not a timing check: a server that never sends TASK_END must fail the test, not hang it.
    with trio.fail_after(30):
        return await _play(server, device_script)


async def _play(server: Any, device_script: Any) -> Any:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("dev", platform="linux", system_info=SYSTEM_INFO))
        await constellation.register(builders.constellation_register("job", "dev"))
        await constellation.send(
            builders.task_request("job@dev", "dev", session_id="S", task_name="galaxy/job/1", request="do it")
        )
        await constellation.expect_ack("S")
        await device_script(device)
        final = await device.expect(ServerMessageType.COMMAND, actions=[])
        await device.send(results_for(final, "dev", []))
        end = await constellation.expect(ServerMessageType.TASK_END, session_id="S")
        await device.expect(ServerMessageType.TASK_END, response_id=end.response_id, result=end.result)
        assert server.running_sessions() == {}
        return end


async def no_commands(device: Peer) -> None:
    return None


async def test_custom_driver_sees_the_task_and_batches_commands(nursery: trio.Nursery) -> None:
    seen: dict[str, Any] = {}

    async def planner(session: SessionHandle) -> Any:
        seen.update(
            session_id=session.session_id,
            task_name=session.task_name,
            request=session.request,
            requester_id=session.requester_id,
            device_id=session.device_id,
            platform=session.platform,
            system_info=dict(session.system_info or {}),
        )
        first, second = await session.call_tools(
            [
                Command(tool_name="read", parameters={"path": "/a"}, tool_type=ToolType.DATA_COLLECTION),
                Command(tool_name="write", parameters={"path": "/b"}, tool_type=ToolType.ACTION),
            ]
        )
        return {"read": first.result, "write": second.status.value}

    async def device(peer: Peer) -> None:
        command = await peer.expect(ServerMessageType.COMMAND, agent_name="LinuxAgent", task_name="galaxy_job_1")
        assert command.actions is not None
        assert [(a.tool_name, a.tool_type) for a in command.actions] == [
            ("read", ToolType.DATA_COLLECTION),
            ("write", ToolType.ACTION),
        ]
        read, write = command.actions
        assert read.call_id and write.call_id and read.call_id != write.call_id
        # Answer out of order: results are matched by call_id, as the device echoes them.
        answer = builders.command_results(
            "dev",
            session_id="S",
            prev_response_id=command.response_id,
            results=[
                Result(status=ResultStatus.SUCCESS, result=None, call_id=write.call_id),
                Result(status=ResultStatus.SUCCESS, result="contents of /a", call_id=read.call_id),
            ],
        )
        await peer.send(answer)

    end = await run_task(nursery, planner, device)
    assert (end.status, end.error) == (TaskStatus.COMPLETED, None)
    assert end.result == {"read": "contents of /a", "write": "success"}
    assert seen == {
        "session_id": "S",
        "task_name": "galaxy/job/1",
        "request": "do it",
        "requester_id": "job@dev",
        "device_id": "dev",
        "platform": "linux",
        "system_info": SYSTEM_INFO,
    }


async def test_driver_tool_calls_go_one_command_at_a_time(nursery: trio.Nursery) -> None:
    async def eager(session: SessionHandle) -> list[Any]:
        results: list[Any] = [None, None]

        async def call(index: int) -> None:
            results[index] = (await session.call_tool(f"tool{index}")).result

        async with trio.open_nursery() as inner:
            inner.start_soon(call, 0)
            inner.start_soon(call, 1)
        return results

    async def device(peer: Peer) -> None:
        for _ in range(2):
            command = await peer.expect(ServerMessageType.COMMAND)
            assert command.actions is not None and len(command.actions) == 1
            await peer.assert_quiet("dev", ClientType.DEVICE)  # the second COMMAND waits for this answer
            await peer.send(results_for(command, "dev", [ok(command.actions[0].tool_name)]))

    end = await run_task(nursery, eager, device)
    assert end.status is TaskStatus.COMPLETED
    assert sorted(end.result) == ["tool0", "tool1"]


async def test_driver_without_tool_calls_still_ends_like_ufo(nursery: trio.Nursery) -> None:
    async def trivial(session: SessionHandle) -> str:
        return "nothing to do"

    end = await run_task(nursery, trivial, no_commands)
    assert (end.status, end.result) == (TaskStatus.COMPLETED, "nothing to do")


async def test_task_failed_carries_message_and_result(nursery: trio.Nursery) -> None:
    async def refuses(session: SessionHandle) -> None:
        raise TaskFailed("planner gave up", result={"failure": "no plan"})

    end = await run_task(nursery, refuses, no_commands)
    assert (end.status, end.error, end.result) == (TaskStatus.FAILED, "planner gave up", {"failure": "no plan"})


async def test_task_failed_inside_a_driver_nursery_is_found(nursery: trio.Nursery) -> None:
    async def grouped(session: SessionHandle) -> None:
        async def fail() -> None:
            raise TaskFailed("sub-step failed")

        async with trio.open_nursery() as inner:
            inner.start_soon(fail)

    end = await run_task(nursery, grouped, no_commands)
    assert (end.status, end.error, end.result) == (TaskStatus.FAILED, "sub-step failed", [])


async def test_driver_crash_fails_the_task_with_a_clear_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def buggy(session: SessionHandle) -> None:
        raise KeyError("plan")

    end = await run_task(nursery, buggy, no_commands)
    assert (end.status, end.error, end.result) == (TaskStatus.FAILED, "Session driver failed: KeyError: 'plan'", [])
    assert any(r.exc_info and r.name == "galaxy_trio.server" for r in caplog.records)  # traceback is logged


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


@pytest.mark.parametrize("make_result", [lambda: {"when": object()}, _cyclic], ids=["unsupported-type", "cyclic"])
async def test_driver_result_that_is_not_json_fails_the_task(
    nursery: trio.Nursery, make_result: Callable[[], object]
) -> None:
    """A value that contains itself makes msgspec raise RecursionError, not an EncodeError: it, too, must fail
    the task with a clear error rather than end the requester's connection without a TASK_END."""

    async def odd(session: SessionHandle) -> object:
        return make_result()

    end = await run_task(nursery, odd, no_commands)
    assert end.status is TaskStatus.FAILED
    assert end.error.startswith("The session driver returned a result that cannot be sent as JSON")


# --- the default driver's request syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "tool_name", "parameters"),
    [
        ("get_system_info", "get_system_info", None),
        ("  get_system_info\n", "get_system_info", None),
        ("action::execute_command", "action::execute_command", None),
        ('{"tool_name":"execute_command","parameters":{"command":"ls"}}', "execute_command", {"command": "ls"}),
        ('{"tool_name":"x","parameters":null}', "x", None),
        ('{"tool_name":"x"}', "x", None),
    ],
)
def test_parse_tool_request_accepts(request_text: str, tool_name: str, parameters: dict[str, Any] | None) -> None:
    call = parse_tool_request(request_text)
    assert (call.tool_name, call.parameters) == (tool_name, parameters)


@pytest.mark.parametrize(
    ("request_text", "error"),
    [
        ("list the files", "cannot interpret the request 'list the files'"),
        ("", "cannot interpret the request ''"),
        ('{"tool_name":1}', "not a valid tool call: Expected `str`, got `int` - at `$.tool_name`"),
        ('{"tool_name":""}', "not a valid tool call: tool_name is empty"),
        ('{"tool_name":"x","extra":1}', "not a valid tool call: Object contains unknown field `extra`"),
        ('{"tool_name":"x"', "not a valid tool call: Input data was truncated"),
        ("x" * 1000 + " y", "cannot interpret the request '" + "x" * 128 + "…'"),
    ],
)
def test_parse_tool_request_rejects_with_a_clear_error(request_text: str, error: str) -> None:
    with pytest.raises(TaskFailed) as info:
        parse_tool_request(request_text)
    assert error in info.value.message


async def test_default_driver_uses_the_listed_tool_type(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("dev", platform="darwin", system_info=None))
        await constellation.register(builders.constellation_register("job", "dev"))
        await constellation.send(
            builders.task_request("job@dev", "dev", session_id="S", task_name="t", request="screenshot")
        )
        await constellation.expect_ack("S")
        listing = await device.expect(ServerMessageType.COMMAND, agent_name="MacOSAgent")
        tool = {"tool_name": "screenshot", "tool_type": "data_collection"}
        await device.send(results_for(listing, "dev", [ok([tool, "not a tool object"])]))
        call = await device.expect(ServerMessageType.COMMAND)
        assert call.actions is not None
        assert (call.actions[0].tool_name, call.actions[0].tool_type) == ("screenshot", ToolType.DATA_COLLECTION)


async def test_task_failed_with_a_result_that_is_not_json(nursery: trio.Nursery) -> None:
    async def odd_failure(session: SessionHandle) -> None:
        raise TaskFailed("gave up", result=[object()])

    end = await run_task(nursery, odd_failure, no_commands)
    assert (end.status, end.error, end.result) == (
        TaskStatus.FAILED,
        "gave up (its result cannot be sent as JSON)",
        [],
    )


async def test_handle_is_dead_once_its_session_ended(nursery: trio.Nursery) -> None:
    kept: list[SessionHandle] = []

    async def keeps_handle(session: SessionHandle) -> str:
        kept.append(session)
        return "done"

    end = await run_task(nursery, keeps_handle, no_commands)
    assert end.status is TaskStatus.COMPLETED
    with pytest.raises(TaskFailed, match="has ended"):
        await kept[0].call_tool("rm")
