"""``list_tools`` as the tool of a task: the default driver runs it although a UFO device does not list it."""

from __future__ import annotations

from typing import Any

from galaxy_trio.aip import ServerMessage, ServerMessageType, TaskStatus, ToolType
from galaxy_trio.server import AIPServer

from ._peers import ok, open_peer, serve_device, tool_info
from .test_server_tasks import connect_pair, task


async def _run(server: AIPServer, request: str) -> tuple[list[ServerMessage], ServerMessage]:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", request))
        await constellation.expect_ack("job@t1")
        # Like UFO's device, the scripted one does not list list_tools among its tools.
        frames = await serve_device(device, "dev", {"echo": ok})
        end = await constellation.expect(ServerMessageType.TASK_END)
        return frames, end


async def test_a_bare_list_tools_task_sends_list_tools_as_the_tool_and_returns_its_list(server: AIPServer) -> None:
    frames, end = await _run(server, "list_tools")

    commands = [f for f in frames if f.type is ServerMessageType.COMMAND]
    first, tool, final = (c.actions for c in commands)
    assert first is not None and tool is not None
    assert [(a.tool_name, a.parameters) for a in first] == [("list_tools", {"tool_type": "action"})]
    assert [(a.tool_name, a.tool_type, a.parameters) for a in tool] == [("list_tools", ToolType.ACTION, None)]
    assert final == []
    assert end.status is TaskStatus.COMPLETED, end.error
    expected: Any = [tool_info("echo")]
    assert end.result == [{"request": "list_tools", "result": expected}]


async def test_list_tools_parameters_reach_the_device(server: AIPServer) -> None:
    request = '{"tool_name":"list_tools","parameters":{"tool_type":"data_collection","remove_meta":false}}'
    frames, end = await _run(server, request)

    tool = [f for f in frames if f.type is ServerMessageType.COMMAND][1].actions
    assert tool is not None
    assert tool[0].parameters == {"tool_type": "data_collection", "remove_meta": False}
    assert end.status is TaskStatus.COMPLETED, end.error


async def test_another_unlisted_tool_is_still_unknown(server: AIPServer) -> None:
    _, end = await _run(server, "list_tool")

    assert end.status is TaskStatus.FAILED
    assert end.error == "Unknown tool 'list_tool' on device 'dev'; available tools: echo"
