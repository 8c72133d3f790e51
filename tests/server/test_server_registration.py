"""REGISTER over a real socket (PROTOCOL.md §7, §8.1–§8.3), with the recorded frames of UFO's peers."""

from __future__ import annotations

import pytest
import trio

from galaxy_trio.aip import ClientType, ServerMessageType, builders
from galaxy_trio.server import AIPServer, ServerSettings

from ._peers import assert_like_recorded, frame, open_peer, start_server

DEVICE_ID = "capdev"


async def test_real_ufo_device_register_is_confirmed_and_stored(server: AIPServer) -> None:
    async with open_peer(server) as device:
        confirmation = await device.register(frame("device_registration", 1))
        assert_like_recorded(confirmation, "device_registration", 2)
        assert server.online_clients() == {DEVICE_ID: ClientType.DEVICE}
        info = server.client_info(DEVICE_ID)
        assert info is not None
        assert info.platform == "linux"
        assert info.target_id is None
        system_info = server.system_info(DEVICE_ID)
        assert system_info is not None
        assert system_info["hostname"] == "vm" and system_info["cpu_count"] == 2
        assert system_info["supported_features"][-1] == "linux_apps"


async def test_minimal_register_defaults_to_windows_without_system_info(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register('{"type":"register","status":"ok","client_id":"x"}')
        info = server.client_info("x")
        assert info is not None
        assert (info.role, info.platform, info.system_info) == (ClientType.DEVICE, "windows", None)


async def test_constellation_register_accepted_when_target_connected(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(frame("device_registration", 1))
        confirmation = await constellation.register(frame("constellation_registration", 1))
        assert_like_recorded(confirmation, "constellation_registration", 2)
        assert server.online_clients() == {DEVICE_ID: ClientType.DEVICE, "cap@capdev": ClientType.CONSTELLATION}
        info = server.client_info("cap@capdev")
        assert info is not None and info.target_id == DEVICE_ID
        assert server.system_info("cap@capdev") is None  # constellations have no system_info


async def test_unscoped_constellation_register_accepted_without_any_device(server: AIPServer) -> None:
    async with open_peer(server) as constellation:
        confirmation = await constellation.register(frame("constellation_registration", 5))
        assert_like_recorded(confirmation, "constellation_registration", 6)


async def test_target_not_connected_gets_error_and_close_1000(server: AIPServer) -> None:
    async with open_peer(server) as constellation:
        await constellation.send_raw(frame("constellation_registration", 3))
        await constellation.expect_error("Target device 'no_such_device' is not connected")
        reason = await constellation.expect_closed()
        assert reason.code == 1000
    assert server.online_clients() == {}


async def test_target_that_is_a_constellation_is_not_a_connected_device(server: AIPServer) -> None:
    async with open_peer(server) as first, open_peer(server) as second:
        await first.register(frame("errors", 19))  # unscoped constellation "err_notarget"
        await second.send(builders.constellation_register("t", "err_notarget"))
        await second.expect_error("Target device 'err_notarget' is not connected")
        assert (await second.expect_closed()).code == 1000


async def test_duplicate_client_id_rejected_and_holder_untouched(server: AIPServer) -> None:
    async with open_peer(server) as holder:
        await holder.register(frame("errors", 2))
        async with open_peer(server) as duplicate:
            await duplicate.send_raw(frame("errors", 4))
            error = await duplicate.expect(ServerMessageType.ERROR)
            assert_like_recorded(error, "errors", 5)
            assert (await duplicate.expect_closed()).code == 1000
        assert server.online_clients() == {"dup_dev": ClientType.DEVICE}
        system_info = server.system_info("dup_dev")
        assert system_info is not None and system_info["ip_address"] == "127.0.0.1"
        await holder.assert_quiet("dup_dev", ClientType.DEVICE)  # still registered, still answered


async def test_devices_and_constellations_share_one_namespace(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("shared", platform="linux", system_info=None))
        await constellation.send_raw(
            '{"type":"register","status":"ok","client_type":"constellation","client_id":"shared"}'
        )
        await constellation.expect_error(
            "client_id 'shared' is already registered; duplicate registrations are not allowed"
        )
        assert (await constellation.expect_closed()).code == 1000
        assert server.online_clients() == {"shared": ClientType.DEVICE}


async def test_id_is_free_again_after_disconnect(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register(frame("errors", 2))
    async with open_peer(server) as again:
        await again.register(frame("errors", 4))
        assert server.online_clients() == {"dup_dev": ClientType.DEVICE}


@pytest.mark.parametrize(
    ("first_frame", "expected"),
    [
        (frame("errors", 1), "First frame must be a REGISTER message, got 'heartbeat'"),
        ("hello", "First frame must be a REGISTER message: invalid ClientMessage at $: JSON is malformed"),
        ('{"type":"register"}', "First frame must be a REGISTER message: invalid ClientMessage at $: Object missing"),
        ('{"type":"register","status":"ok"}', "REGISTER requires a non-empty client_id"),
        ('{"type":"register","status":"ok","client_id":""}', "REGISTER requires a non-empty client_id"),
        (
            '{"type":"register","status":"ok","client_id":5}',
            "First frame must be a REGISTER message: invalid ClientMessage at $.client_id",
        ),
        (
            '{"type":"register","status":"ok","client_id":"d","metadata":{"platform":7}}',
            "REGISTER metadata.platform must be a non-empty string",
        ),
        (
            '{"type":"register","status":"ok","client_id":"d","metadata":{"system_info":[1]}}',
            "REGISTER metadata.system_info must be an object",
        ),
        ('{"type":"register","status":"ok","client_id":"' + "x" * 300 + '"}', "client_id is too long (300 characters"),
    ],
)
async def test_invalid_first_frame_gets_error_and_close_1008(
    server: AIPServer, first_frame: str, expected: str
) -> None:
    """UFO goes silent and leaves such a socket open forever (§11.3); we say what was wrong and close."""
    async with open_peer(server) as peer:
        await peer.send_raw(first_frame)
        error = await peer.expect_error()
        assert error.startswith(expected)
        assert len(error) < 400  # bounded, never the whole input echoed
        reason = await peer.expect_closed()
        assert reason.code == 1008
        assert reason.reason == "first frame must be a valid REGISTER"
    assert server.online_clients() == {}


async def test_binary_first_frame_gets_error_and_close_1003(server: AIPServer) -> None:
    async with open_peer(server) as peer:
        await peer.send_raw(b"\x00\x01binary")
        assert "Binary frames are not supported" in await peer.expect_error()
        assert (await peer.expect_closed()).code == 1003


async def test_stalled_first_frame_is_closed_at_the_registration_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(registration_deadline=7.5))
    async with open_peer(server) as peer:
        start = trio.current_time()
        assert await peer.expect_error() == "No REGISTER frame received within 7.5 s"
        reason = await peer.expect_closed()
        assert trio.current_time() - start == pytest.approx(7.5, abs=0.01)
    assert (reason.code, reason.reason) == (1008, "registration timeout")


async def test_register_just_before_the_deadline_is_accepted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(registration_deadline=7.5))
    async with open_peer(server) as peer:
        await trio.sleep(7.4)
        await peer.register(frame("device_registration", 3))
        await trio.sleep(60)  # the deadline is only for the first frame
        await peer.assert_quiet("raw_dev_1", ClientType.DEVICE)
