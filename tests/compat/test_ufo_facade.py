"""galaxy_trio.compat.ufo against a stand-in of UFO's ``galaxy`` package (tests/compat/standin, written from UFO's
public source: module paths, class names, fields, enum values, the event bus call). The stand-in is put on
sys.path by the ``ufo`` fixture only; UFO's types are compared by identity, as UFO compares them."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from galaxy_trio import DeviceStatus, aio
from galaxy_trio.aip import ClientMessage, ClientMessageType
from galaxy_trio.compat.ufo import ConstellationDeviceManager, ExecutionResult
from tests.manager.peer import Conn, ScriptedPeer
from tests.net import free_port

STANDIN = Path(__file__).parent / "standin"
TOKEN = "ufo-facade-token"
ECHO = '{"tool_name": "echo", "parameters": {"text": "hi"}}'


def _forget_standin() -> None:
    for name in list(sys.modules):
        if name in ("galaxy", "aip") or name.startswith(("galaxy.", "aip.")):
            del sys.modules[name]


@pytest.fixture
def ufo(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    _forget_standin()
    monkeypatch.syspath_prepend(str(STANDIN))
    modules = {
        name: importlib.import_module(name)
        for name in ("galaxy.client.components.types", "galaxy.core.types", "galaxy.core.events", "aip.messages")
    }
    yield modules
    _forget_standin()


class Recorder:
    """An observer on UFO's event bus, as UFO's web UI subscribes one."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    async def on_event(self, event: Any) -> None:
        self.events.append(event)


def run(main: Any) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await main()

    asyncio.run(bounded())


def test_drives_like_constellation_client_initialize_and_a_task_star(ufo: dict[str, ModuleType]) -> None:
    types, core, events = ufo["galaxy.client.components.types"], ufo["galaxy.core.types"], ufo["galaxy.core.events"]
    recorder = Recorder()
    events.get_event_bus().subscribe(recorder)
    # UFO's ConstellationClient builds its manager in __init__, with no loop running.
    manager = ConstellationDeviceManager(task_name="galaxy_session", heartbeat_interval=30.0, reconnect_delay=0.01)
    devices = [  # what ConstellationConfig.devices holds
        {"device_id": "win", "os": "windows", "capabilities": ["office"], "metadata": {"room": "a"}, "up": True},
        {"device_id": "gone", "os": "linux", "capabilities": [], "metadata": {}, "up": False},
    ]

    async def main() -> None:
        async with aio.open_server(port=0, token=TOKEN) as server:
            url = f"{server.url}?token={TOKEN}"
            async with aio.open_agent(url, "win"):
                # ConstellationClient.initialize(): register_device_from_config for each device, collecting bools.
                results = {}
                for device in devices:
                    server_url = url if device["up"] else f"ws://127.0.0.1:{free_port()}/ws?token={TOKEN}"
                    results[device["device_id"]] = await manager.register_device(
                        device_id=device["device_id"],
                        server_url=server_url,
                        os=device["os"],
                        capabilities=device["capabilities"],
                        metadata=device["metadata"],
                        auto_connect=True,
                    )
                assert results == {"win": True, "gone": False}
                profile = manager.get_device_info("win")
                assert type(profile) is types.AgentProfile and profile.status is types.DeviceStatus.IDLE
                assert manager.get_device_info("gone").status is types.DeviceStatus.FAILED
                assert set(manager.get_all_devices()) == {"win", "gone"}
                assert set(manager.get_all_devices(connected=True)) == {"win"}
                assert manager.get_connected_devices() == ["win"]  # UFO's registry counts only CONNECTED, not IDLE
                registry = manager.device_registry
                assert registry.is_device_registered("gone") and not registry.is_device_registered("nobody")
                assert not registry.is_device_busy("win") and registry.get_current_task("win") is None
                assert registry.get_device_system_info("win") == manager.get_device_system_info("win")
                assert "office" in manager.get_device_capabilities("win")["capabilities"]
                assert manager.get_device_system_info("win")["platform"]  # type: ignore[index]
                # A TaskStar executes through assign_task_to_device with keywords and reads the ExecutionResult.
                result = await manager.assign_task_to_device(
                    task_id="star-1",
                    device_id="win",
                    task_description=ECHO,
                    task_data={"step": 1},
                    timeout=10.0,
                )
                assert type(result) is core.ExecutionResult
                assert result.status is ufo["aip.messages"].TaskStatus.COMPLETED and result.error is None
                assert result.result[0]["result"] == "hi"
                assert result.start_time <= result.end_time
                queue = manager.get_task_queue_status("win")
                assert queue["queue_size"] == 0 and queue["is_busy"] is False
                assert manager.get_device_status("win")["status"] == "idle"
                assert await manager.ensure_devices_connected() == {"win": True, "gone": False}
                await manager.shutdown()

    run(main)
    seen = [(e.device_id, e.event_type, e.device_status) for e in recorder.events]
    assert all(type(e) is events.DeviceEvent for e in recorder.events)
    kinds = events.EventType
    assert ("win", kinds.DEVICE_CONNECTED, "idle") in seen
    assert ("gone", kinds.DEVICE_STATUS_CHANGED, "failed") in seen  # UFO never publishes FAILED; we do
    assert ("win", kinds.DEVICE_STATUS_CHANGED, "busy") in seen
    assert seen[-1][1] is kinds.DEVICE_DISCONNECTED or ("win", kinds.DEVICE_DISCONNECTED, "disconnected") in seen
    last = [e for e in recorder.events if e.device_id == "win"][-1]
    assert last.device_status == "disconnected" and set(last.all_devices) == {"win", "gone"}


async def drop_the_link(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
    peer.stop()  # the server goes away mid-task


def test_task_data_reaches_the_device_and_a_mid_task_disconnect_is_not_idle(ufo: dict[str, ModuleType]) -> None:
    types = ufo["galaxy.client.components.types"]
    peer = ScriptedPeer()

    async def main() -> None:
        manager = ConstellationDeviceManager(task_name="t", reconnect_delay=5.0)
        async with aio.open_service(peer.serve):
            assert await manager.register_device("d", peer.url, os="linux")
            ok = await manager.assign_task_to_device("t1", "d", "anything", {"files": ["a.txt"]}, timeout=10.0)
            assert ok.status.value == "completed"
            (task,) = peer.frames_of(ClientMessageType.TASK)
            assert task.metadata == {"task_data": {"files": ["a.txt"]}}
            peer.task_handler = drop_the_link
            lost = await manager.assign_task_to_device("t2", "d", "anything", {}, timeout=10.0)
            assert lost.status.value == "failed" and lost.metadata.get("disconnected") is True
            assert manager.get_device_info("d").status is not types.DeviceStatus.IDLE  # UFO says IDLE here
        await manager.shutdown()

    run(main)


def test_registry_max_retries_is_honoured_and_failed_is_final(ufo: dict[str, ModuleType]) -> None:
    types = ufo["galaxy.client.components.types"]

    async def main() -> None:
        manager = ConstellationDeviceManager(task_name="t", reconnect_delay=0.01)
        url = f"ws://127.0.0.1:{free_port()}/ws?token=x"
        staged = manager.device_registry.register_device("d", url, "linux", ["x"], {}, max_retries=2)
        assert staged.status is types.DeviceStatus.DISCONNECTED and staged.max_retries == 2
        assert manager.device_registry.get_device("d").max_retries == 2
        with pytest.raises(ValueError, match="already registered"):
            manager.device_registry.register_device("d", url, "linux")
        assert await manager.connect_device("d") is False
        profile = manager.get_device_info("d")
        assert profile.status is types.DeviceStatus.FAILED and profile.connection_attempts == 2
        assert await manager.register_device("bad", "http://nope", os="linux") is False  # logged, as UFO does
        with pytest.raises(ValueError, match="not registered"):
            await manager.assign_task_to_device("t", "nobody", ECHO, {})
        await manager.shutdown()

    run(main)


def test_without_ufo_installed_the_facade_returns_galaxy_trio_types() -> None:
    _forget_standin()
    peer = ScriptedPeer()

    async def main() -> None:
        manager = ConstellationDeviceManager(task_name="t")
        assert not manager.types.from_ufo
        async with aio.open_service(peer.serve):
            assert await manager.register_device("d", peer.url, os="linux")
            assert manager.get_device_info("d").status is DeviceStatus.IDLE
            result = await manager.assign_task_to_device("t1", "d", "x", {}, timeout=10.0)
            assert type(result) is ExecutionResult and result.is_successful
        await manager.shutdown()

    run(main)


def test_a_cancelled_caller_s_queued_task_leaves_the_queue(ufo: dict[str, ModuleType]) -> None:
    peer = ScriptedPeer()
    held: list[ClientMessage] = []
    got_first = asyncio.Event()

    async def hold(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        held.append(task)  # acked never, ended never: the device stays BUSY with it
        got_first.set()  # the guest runs on the loop's thread, so an asyncio.Event can be set from trio here

    peer.task_handler = hold

    async def main() -> None:
        manager = ConstellationDeviceManager(task_name="t")
        async with aio.open_service(peer.serve):
            assert await manager.register_device("d", peer.url, os="linux")
            running = asyncio.create_task(manager.assign_task_to_device("a", "d", "x", {}, timeout=10.0))
            await got_first.wait()
            queued = asyncio.create_task(manager.assign_task_to_device("b", "d", "x", {}, timeout=10.0))
            await asyncio.sleep(0)  # one loop turn: the new task runs up to its first suspension (b submitted)
            status = manager.get_task_queue_status("d")
            assert status["is_busy"] and status["current_task_id"] == "a" and status["pending_task_ids"] == ["a", "b"]
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert manager.get_task_queue_status("d")["queued_task_ids"] == []
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        await manager.shutdown()
        assert len(held) == 1  # b was never sent

    run(main)
