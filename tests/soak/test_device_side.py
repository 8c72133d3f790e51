"""The soaks' device side (``device_side.py``): the server and the agents in a child process. A manager reaches
them, a task's execution comes back as a ``run`` record, each command is carried out before it returns (an agent
killed and started, the server stopped and started on the same port), ``online`` says who is registered, a bad
command is an error naming it, and :meth:`DeviceSide.stop` ends the child with every record read."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus

from .device_side import DeviceSide

IDS = ["side-0", "side-1"]


async def _until(manager: ConstellationDeviceManager, device_id: str, status: DeviceStatus) -> None:
    with manager.subscribe() as events:
        if manager.get_device_state(device_id).status is status:
            return
        async for event in events:
            if event.device_id == device_id and event.new_status is status:
                return


async def _until_online(side: DeviceSide, predicate: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    """Ask ``online`` until ``predicate`` holds of it (the state is in another process: nothing to wait on here)."""
    while True:
        online = await side.online() or {}
        if predicate(online):
            return online
        await trio.sleep(0.05)


def _all(*ids: str) -> Callable[[dict[str, str]], bool]:
    return lambda online: set(ids) <= set(online)


async def test_the_device_side_runs_tasks_records_them_and_obeys_its_commands() -> None:
    runs: list[str] = []
    overlaps: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            side = DeviceSide(IDS, on_run=runs.append, on_overlap=overlaps.append)
            await nursery.start(side.run)
            assert side.server_running and side.port > 0
            online = await _until_online(side, _all(*IDS))
            assert online == {d: "device" for d in IDS}

            settings = {"heartbeat_interval": 1.0, "reconnect_delay": 0.1, "backoff_cap": 0.5}
            async with ConstellationDeviceManager(task_name="side", **settings) as manager:  # type: ignore[arg-type]
                manager.add_devices(DeviceConfig(device_id=d, server_url=side.url, max_retries=100) for d in IDS)
                for device_id in IDS:
                    await _until(manager, device_id, DeviceStatus.IDLE)
                request = json.dumps({"tool_name": "work", "parameters": {"token": "c0-1", "ms": 1}})
                result = await manager.assign_task_to_device("c0-1", "side-0", request)
                assert result.ok, result
                online = await _until_online(side, _all(*IDS, "side@side-0", "side@side-1"))
                assert online["side@side-0"] == "constellation"

                await side.kill_agent("side-1")
                await _until_online(side, lambda online: "side-1" not in online)
                await side.start_agent("side-1")
                await _until_online(side, _all("side-1"))

                await side.stop_server()
                assert not side.server_running
                assert await side.online() is None
                await side.start_server()  # the same port: the manager and the agents come back by themselves
                await _until_online(side, _all(*IDS, "side@side-0", "side@side-1"))

                with pytest.raises(RuntimeError, match="no device 'side-9'"):
                    await side.kill_agent("side-9")
            await side.stop()
            assert runs == ["c0-1"]
            assert overlaps == [1]
            assert side.usage() is None  # the child is gone
