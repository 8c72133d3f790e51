"""``list_tools`` as a task through the manager, our server's default driver and our device agent (issue 12)."""

from __future__ import annotations

import json
from functools import partial

import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.agent import DeviceAgent
from galaxy_trio.server import AIPServer, serve_aip

TOKEN = "e2e-token"


async def _worker(nursery: trio.Nursery) -> str:
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=TOKEN))
    url = f"{server.url}?token={TOKEN}"
    await nursery.start(DeviceAgent(url, "worker").run)
    return url


def _keys(result: object) -> list[str]:
    assert isinstance(result, list) and len(result) == 1
    (entry,) = result
    return [info["tool_key"] for info in entry["result"]]


async def test_list_tools_runs_as_a_task_and_returns_the_tool_list(nursery: trio.Nursery) -> None:
    url = await _worker(nursery)
    async with ConstellationDeviceManager(task_name="e2e") as manager:
        assert await manager.register_device("worker", url)
        bare = await manager.assign_task_to_device("t1", "worker", "list_tools")
        assert bare.ok, bare.error
        assert bare.result[0]["request"] == "list_tools"
        # As UFO's meta tool: every type, list_tools itself left out.
        assert _keys(bare.result) == ["action::get_system_info", "action::echo"]
        assert bare.result[0]["result"][0]["namespace"] == "galaxy_trio"


async def test_list_tools_task_takes_ufos_parameters(nursery: trio.Nursery) -> None:
    url = await _worker(nursery)
    async with ConstellationDeviceManager(task_name="e2e") as manager:
        assert await manager.register_device("worker", url)
        parameters = {"tool_type": "data_collection", "remove_meta": False}
        request = json.dumps({"tool_name": "list_tools", "parameters": parameters})
        with_meta = await manager.assign_task_to_device("t1", "worker", request)
        assert with_meta.ok, with_meta.error
        assert _keys(with_meta.result) == ["data_collection::list_tools"]
        other_namespace = await manager.assign_task_to_device(
            "t2", "worker", json.dumps({"tool_name": "list_tools", "parameters": {"namespace": "HardwareExecutor"}})
        )
        assert other_namespace.ok and _keys(other_namespace.result) == []
        bad_type = await manager.assign_task_to_device(
            "t3", "worker", json.dumps({"tool_name": "list_tools", "parameters": {"tool_type": "gui"}})
        )
        assert bad_type.status == "failed" and bad_type.error is not None
        assert "Tool 'list_tools' failed on device 'worker'" in bad_type.error and "tool_type" in bad_type.error
