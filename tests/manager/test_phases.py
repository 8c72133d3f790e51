"""The five phases against a scripted AIP peer that replays UFO's recorded frames (127.0.0.1, port 0)."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from galaxy_trio.aip import ClientMessageType, ClientType
from galaxy_trio.config import DeviceConfig
from galaxy_trio.manager import ConstellationDeviceManager, DeviceEvent, DeviceStatus, EventKind, EventSubscription

from .peer import DUPLICATE, SYSTEM_INFO, TARGET_NOT_CONNECTED, ScriptedPeer


def _config(device_id: str, url: str, **fields: object) -> DeviceConfig:
    return DeviceConfig(device_id=device_id, server_url=url, **fields)  # type: ignore[arg-type]


async def _wait_status(events: EventSubscription, status: DeviceStatus) -> DeviceEvent:
    async for event in events:
        if event.kind is EventKind.STATUS and event.new_status is status:
            return event
    raise AssertionError("event stream ended")


async def test_happy_path_reaches_idle_with_telemetry_merged(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    ok = await manager.register_device(
        "windowsagent",
        peer.url,
        os="windows",
        capabilities=["web_browsing", "gui"],
        metadata={"location": "office_desktop"},
    )
    assert ok
    profile = manager.get_device_info("windowsagent")
    assert profile is not None
    assert profile.status is DeviceStatus.IDLE
    assert profile.os == SYSTEM_INFO["platform"]
    assert profile.capabilities[:2] == ["web_browsing", "gui"]
    assert profile.capabilities[2:] == [f for f in SYSTEM_INFO["supported_features"] if f != "gui"]
    assert profile.metadata["location"] == "office_desktop"
    assert profile.metadata["system_info"]["hostname"] == SYSTEM_INFO["hostname"]
    assert profile.connection_attempts == 0
    assert profile.last_heartbeat is not None
    assert "s3cret-token" not in profile.server_url and "s3cret-token" not in repr(profile)
    assert manager.get_connected_devices() == ["windowsagent"]

    (register,) = peer.frames_of(ClientMessageType.REGISTER)
    assert register.client_type is ClientType.CONSTELLATION
    assert register.client_id == "tt@windowsagent"
    assert register.target_id == "windowsagent"
    assert register.metadata is not None and register.metadata["targeted_device_id"] == "windowsagent"
    (info_request,) = peer.frames_of(ClientMessageType.DEVICE_INFO_REQUEST)
    assert info_request.client_type is ClientType.CONSTELLATION and info_request.request_id


async def test_heartbeats_are_sent_every_interval_as_constellation(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    assert await manager.register_device("dev", peer.url)
    idle_at = trio.current_time()
    await peer.wait_for(lambda: len(peer.frames_of(ClientMessageType.HEARTBEAT)) >= 3)
    assert trio.current_time() - idle_at == 90.0
    for beat in peer.frames_of(ClientMessageType.HEARTBEAT):
        assert beat.client_type is ClientType.CONSTELLATION
        assert beat.client_id == "tt@dev"
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE


async def test_events_report_every_status_change(peer: ScriptedPeer, manager: ConstellationDeviceManager) -> None:
    with manager.subscribe() as events:
        assert await manager.register_device("dev", peer.url)
        seen = []
        while True:
            event = events.channel.receive_nowait()
            seen.append(event)
            if event.new_status is DeviceStatus.IDLE:
                break
    statuses = [(e.old_status, e.new_status) for e in seen if e.kind is EventKind.STATUS]
    assert statuses == [
        (DeviceStatus.DISCONNECTED, DeviceStatus.CONNECTING),
        (DeviceStatus.CONNECTING, DeviceStatus.CONNECTED),
        (DeviceStatus.CONNECTED, DeviceStatus.REGISTERING),
        (DeviceStatus.REGISTERING, DeviceStatus.IDLE),
    ]
    assert [e.kind for e in seen].count(EventKind.TELEMETRY) == 1
    phases = [e.reason for e in seen if e.kind is EventKind.PHASE]
    assert phases == ["connect", "register", "telemetry", "active"]


def _reject_first(n_rejections: int, frame: str):  # type: ignore[no-untyped-def]
    return lambda n: frame if n <= n_rejections else None


async def test_target_not_connected_is_retried_until_accepted(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = _reject_first(2, TARGET_NOT_CONNECTED)
    with manager.subscribe() as events:
        assert await manager.register_device("dev", peer.url, max_retries=5)
        reasons = [e.reason for e in events.pending() if e.new_status is DeviceStatus.DISCONNECTED]
    assert peer.registers == 3
    assert reasons == ["Target device 'no_such_device' is not connected"] * 2
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0


async def test_duplicate_client_id_fails_at_once_without_retry(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: DUPLICATE
    assert not await manager.register_device("dev", peer.url, max_retries=5)
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.FAILED
    assert profile.failure_reason is not None and "already registered" in profile.failure_reason
    assert peer.registers == 1 and len(peer.connections) == 1


async def test_bad_token_fails_at_once_with_403_and_no_retry(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    url = peer.url.replace(peer.token, "wrong-token")
    assert not await manager.register_device("dev", url, max_retries=5)
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.FAILED
    assert profile.failure_reason == "handshake rejected with HTTP 403: the token is wrong or missing"
    assert peer.handshakes == 1
    assert "wrong-token" not in repr(profile) and "wrong-token" not in profile.server_url


async def test_server_restart_brings_the_device_back_to_idle(
    nursery: trio.Nursery,
    peer: ScriptedPeer,
    manager: ConstellationDeviceManager,
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await manager.register_device("dev", peer.url)
    with manager.subscribe() as events:
        peer.stop()
        await _wait_status(events, DeviceStatus.DISCONNECTED)
        await nursery.start(peer.serve)
        await _wait_status(events, DeviceStatus.IDLE)
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0
    assert peer.registers == 2


async def test_a_silent_peer_is_detected_within_the_heartbeat_bounds(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    assert await manager.register_device("dev", peer.url)
    await trio.sleep(12.0)  # virtual: some time into the first heartbeat interval
    peer.silent = True
    silent_since = trio.current_time()
    with manager.subscribe() as events:
        event = await _wait_status(events, DeviceStatus.DISCONNECTED)
        detected = trio.current_time() - silent_since
        assert event.reason is not None and "heartbeat" in event.reason
        assert 10.0 <= detected <= 30.0 + 10.0
        peer.silent = False
        await _wait_status(events, DeviceStatus.IDLE)


async def test_a_peer_that_never_confirms_register_times_out_and_is_retried(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.answer_register = False
    with manager.subscribe() as events:
        start = trio.current_time()
        manager.add_device(_config("dev", peer.url, max_retries=3))
        event = await _wait_status(events, DeviceStatus.DISCONNECTED)
        assert event.reason == "register timed out after 5s"
        assert trio.current_time() - start == 5.0
        peer.answer_register = True
        await _wait_status(events, DeviceStatus.IDLE)
    assert peer.registers == 2


async def test_telemetry_that_never_comes_degrades_gracefully_to_idle(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.answer_device_info = False
    start = trio.current_time()
    assert await manager.register_device("dev", peer.url, os="linux", capabilities=["x"])
    assert trio.current_time() - start == 2.0  # telemetry_timeout
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.os == "linux" and profile.capabilities == ["x"]
    assert "system_info" not in profile.metadata


async def test_device_info_not_found_leaves_the_configured_profile(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    peer.system_info = None
    assert await manager.register_device("dev", peer.url, os="windows")
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.os == "windows" and "system_info" not in profile.metadata


async def test_backoff_delays_stay_inside_their_jitter_bounds_and_max_retries_ends_in_failed(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    times: list[float] = []

    def record() -> bool:
        if len(times) < peer.registers:
            times.append(trio.current_time())
        return False

    manager.add_device(_config("dev", peer.url, max_retries=5))
    async with trio.open_nursery() as watcher:
        watcher.start_soon(peer.wait_for, record)
        profile = await manager.wait_for_device("dev")
        watcher.cancel_scope.cancel()
    assert profile.status is DeviceStatus.FAILED
    assert profile.failure_reason is not None and profile.failure_reason.startswith(
        "gave up after 5 consecutive failed attempts"
    )
    assert peer.registers == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ceilings = [1.0, 2.0, 4.0, 8.0]  # reconnect_delay 1 doubling, capped at backoff_cap 8
    assert len(gaps) == 4
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert 0.0 <= gap <= ceiling


async def test_a_failed_device_stays_failed_until_connect_device(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: DUPLICATE if n == 1 else None
    assert not await manager.register_device("dev", peer.url)
    await trio.sleep(100.0)
    assert peer.registers == 1
    assert await manager.connect_device("dev")
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.failure_reason is None


async def test_disconnect_device_closes_its_link_and_stops_reconnecting(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    assert await manager.register_device("dev", peer.url)
    assert await manager.disconnect_device("dev")
    await peer.wait_for(lambda: not peer.live)
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.DISCONNECTED
    assert manager.get_connected_devices() == []
    await trio.sleep(100.0)
    assert len(peer.connections) == 1


async def test_a_stalled_handshake_gives_up_at_connect_timeout(
    manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # A TCP listener that accepts and never answers the WebSocket upgrade.
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted: list[trio.SocketStream] = []

    async def accept_and_stall() -> None:
        while True:
            accepted.append(await listeners[0].accept())

    nursery.start_soon(accept_and_stall)
    port = listeners[0].socket.getsockname()[1]
    with manager.subscribe() as events:
        start = trio.current_time()
        manager.add_device(_config("dev", f"ws://127.0.0.1:{port}/ws", max_retries=2))
        event = await _wait_status(events, DeviceStatus.DISCONNECTED)
        assert event.reason == "connect timed out after 5s"
        assert trio.current_time() - start == 5.0
        event = await _wait_status(events, DeviceStatus.FAILED)
    assert len(accepted) == 2
    for stream in accepted:
        await stream.aclose()


async def test_shutdown_during_a_reconnect_loop_is_clean(
    peer: ScriptedPeer, autojump_clock: trio.testing.MockClock
) -> None:
    peer.stop()
    await trio.testing.wait_all_tasks_blocked()
    async with ConstellationDeviceManager(task_name="tt", reconnect_delay=1.0, backoff_cap=4.0) as manager:
        with manager.subscribe() as events:
            manager.add_device(_config("dev", peer.url, max_retries=1000))
            for _ in range(3):
                await _wait_status(events, DeviceStatus.DISCONNECTED)
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.DISCONNECTED


async def test_a_subscriber_that_never_reads_does_not_block_the_manager(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    lazy = manager.subscribe(buffer=1)
    assert await manager.register_device("dev", peer.url)
    assert lazy.dropped >= 3  # 4 status changes + telemetry, room for 1
    first = lazy.channel.receive_nowait()
    assert first.new_status is DeviceStatus.CONNECTING


async def test_remove_device_disconnects_and_forgets_it(
    peer: ScriptedPeer, manager: ConstellationDeviceManager
) -> None:
    assert await manager.register_device("dev", peer.url)
    assert manager.client_id("dev") == "tt@dev"
    last = await manager.remove_device("dev")
    assert last.status is DeviceStatus.DISCONNECTED
    assert manager.get_device_info("dev") is None and manager.get_all_devices() == {}
    await peer.wait_for(lambda: not peer.live)
    assert await manager.register_device("dev", peer.url)  # the id may be registered again


async def test_a_duplicate_after_losing_an_idle_link_is_our_stale_link_and_is_retried(
    nursery: trio.Nursery,
    peer: ScriptedPeer,
    manager: ConstellationDeviceManager,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A partition: our old link still holds the id on the server until its keepalive drops it."""
    assert await manager.register_device("dev", peer.url, max_retries=2)
    with manager.subscribe() as events:
        peer.stop()
        await _wait_status(events, DeviceStatus.DISCONNECTED)
        first = peer.registers
        peer.register_verdict = lambda n: DUPLICATE if n <= first + 4 else None  # four refusals, then accepted
        await nursery.start(peer.serve)
        await _wait_status(events, DeviceStatus.IDLE)
    assert peer.registers == first + 5  # more refusals than max_retries, none of them counted
    profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0


async def test_a_duplicate_long_after_the_loss_fails_the_device(
    nursery: trio.Nursery,
    peer: ScriptedPeer,
    manager: ConstellationDeviceManager,
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await manager.register_device("dev", peer.url, max_retries=1000)
    with manager.subscribe() as events:
        peer.stop()
        await _wait_status(events, DeviceStatus.DISCONNECTED)
        await trio.sleep(120.0)  # virtual: longer than any server keeps a dead link
        peer.register_verdict = lambda n: DUPLICATE
        await nursery.start(peer.serve)
        event = await _wait_status(events, DeviceStatus.FAILED)
    assert event.reason is not None and "already registered" in event.reason
