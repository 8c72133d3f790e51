"""Manager ↔ our AIP server ↔ our device agents, over real loopback sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import psutil
import trio
import trio.testing

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus, EventKind
from galaxy_trio.agent import DeviceAgent
from galaxy_trio.server import AIPServer, serve_aip

from ..net import free_port as _free_port

TOKEN = "e2e-token"
REPO = Path(__file__).resolve().parents[2]


async def _server(nursery: trio.Nursery) -> tuple[AIPServer, str]:
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=TOKEN))
    return server, f"{server.url}?token={TOKEN}"


def _device(device_id: str, url: str, **fields: object) -> DeviceConfig:
    return DeviceConfig(device_id=device_id, server_url=url, **fields)  # type: ignore[arg-type]


async def test_twenty_devices_reach_idle_with_real_telemetry_merged(nursery: trio.Nursery) -> None:
    server, url = await _server(nursery)
    ids = [f"dev{i:02d}" for i in range(20)]
    async with trio.open_nursery() as starting:
        for device_id in ids:
            starting.start_soon(nursery.start, DeviceAgent(url, device_id).run)
    async with ConstellationDeviceManager(task_name="e2e") as manager:
        manager.add_devices(_device(i, url, capabilities=("configured",)) for i in ids)
        profiles = await manager.wait_until_settled()
    assert {p.status for p in profiles.values()} == {DeviceStatus.IDLE}
    expected_cpus = psutil.cpu_count()
    for profile in profiles.values():
        info = profile.metadata["system_info"]
        assert info["cpu_count"] == expected_cpus
        assert info["memory_total_gb"] > 0
        assert profile.os == info["platform"]
        assert profile.capabilities[0] == "configured" and "cli" in profile.capabilities
    assert sorted(server.online_clients()) == ids  # the constellations have gone; the devices stay


async def test_a_task_round_trip_through_the_default_driver(nursery: trio.Nursery) -> None:
    _, url = await _server(nursery)
    await nursery.start(DeviceAgent(url, "worker").run)
    async with ConstellationDeviceManager(task_name="e2e") as manager:
        assert await manager.register_device("worker", url)
        result = await manager.assign_task_to_device(
            "t1", "worker", json.dumps({"tool_name": "echo", "parameters": {"text": "ping"}})
        )
        assert result.ok, result.error
        assert result.result == [{"request": '{"tool_name": "echo", "parameters": {"text": "ping"}}', "result": "ping"}]
        unknown = await manager.assign_task_to_device("t2", "worker", "no_such_tool")
        assert unknown.status == "failed" and unknown.error_type == "task_failed"
        assert unknown.error is not None and "no_such_tool" in unknown.error
        profile = manager.get_device_info("worker")
        assert profile is not None and profile.status is DeviceStatus.IDLE


async def test_an_agent_killed_and_restarted_takes_its_device_out_of_idle_and_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, url = await _server(nursery)
    agent_scope = trio.CancelScope()
    await nursery.start(_run_in_scope, agent_scope, DeviceAgent(url, "flaky"))
    async with ConstellationDeviceManager(task_name="e2e", reconnect_delay=0.5, backoff_cap=2.0) as manager:
        assert await manager.register_device("flaky", url, max_retries=1000)
        with manager.subscribe() as events:
            agent_scope.cancel()  # the device agent dies
            left_idle = await _next_status(events)
            assert left_idle.old_status is DeviceStatus.IDLE
            await trio.sleep(5.0)
            profile = manager.get_device_info("flaky")
            assert profile is not None and profile.status is not DeviceStatus.IDLE
            await nursery.start(DeviceAgent(url, "flaky").run)  # it comes back
            while (await _next_status(events)).new_status is not DeviceStatus.IDLE:
                pass


async def _run_in_scope(scope: trio.CancelScope, agent: DeviceAgent, *, task_status: trio.TaskStatus[None]) -> None:
    with scope:
        await agent.run(task_status=task_status)


async def _next_status(events):  # type: ignore[no-untyped-def]
    async for event in events:
        if event.kind is EventKind.STATUS:
            return event
    raise AssertionError("no more events")


async def test_a_constellation_that_starts_before_its_device_retries_until_the_agent_arrives(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, url = await _server(nursery)
    async with ConstellationDeviceManager(task_name="e2e", reconnect_delay=0.5, backoff_cap=2.0) as manager:
        with manager.subscribe() as events:
            manager.add_device(_device("late", url, max_retries=100))
            rejection = await _next_disconnect(events)
            assert rejection == "Target device 'late' is not connected"
            await trio.sleep(10.0)
            await nursery.start(DeviceAgent(url, "late").run)
            profile = await manager.wait_for_device("late")
    assert profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0


async def _next_disconnect(events) -> str | None:  # type: ignore[no-untyped-def]
    async for event in events:
        if event.kind is EventKind.STATUS and event.new_status is DeviceStatus.DISCONNECTED:
            return event.reason  # type: ignore[no-any-return]
    raise AssertionError("no more events")


def test_run_local_once_json_as_a_subprocess(tmp_path: Path) -> None:
    config = tmp_path / "devices.yaml"
    config.write_text(
        "devices:\n"
        + "".join(
            f"  - device_id: {name}\n    server_url: ws://127.0.0.1:{port}/ws\n    capabilities: [configured]\n"
            for name, port in (("alpha", _free_port()), ("beta", _free_port()))
        ),
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "galaxy_trio", "run", str(config), "--local", "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    profiles = json.loads(done.stdout)
    assert [p["device_id"] for p in profiles] == ["alpha", "beta"]
    for profile in profiles:
        assert profile["status"] == "idle"
        assert profile["connection_attempts"] == 0
        assert profile["failure_reason"] is None
        assert profile["last_heartbeat"]
        assert profile["metadata"]["system_info"]["cpu_count"] == psutil.cpu_count()
        assert profile["capabilities"][0] == "configured"
        assert "token=***" in profile["server_url"]
    assert "token=" not in done.stderr.replace("token=***", "")


def test_run_once_exits_1_when_a_device_fails(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    config = tmp_path / "devices.yaml"
    config.write_text(
        "manager: {reconnect_delay: 0.01, backoff_cap: 0.02}\n"
        f"devices:\n  - device_id: ghost\n    server_url: ws://127.0.0.1:{port}/ws\n    max_retries: 2\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "galaxy_trio", "run", str(config), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    (profile,) = json.loads(done.stdout)
    assert profile["status"] == "failed"
    assert profile["failure_reason"].startswith("gave up after 2 consecutive failed attempts")
