"""Frames after registration: heartbeats, DEVICE_INFO, identity pinning, errors, bad and oversized frames."""

from __future__ import annotations

import json

import msgspec
import pytest
import trio
import wsproto
import wsproto.events

from galaxy_trio.aip import (
    ClientType,
    ServerMessageType,
    TaskStatus,
    builders,
    decode_server_message,
    encode,
    encode_text,
)
from galaxy_trio.server import AIPServer, ServerSettings

from ._peers import (
    TOKEN,
    assert_like_recorded,
    client_frame,
    frame,
    ok,
    open_peer,
    results_for,
    start_server,
    tool_info,
)

CLIENT_ID_MISMATCH = "client_id does not match the registered connection"
CLIENT_TYPE_MISMATCH = "client_type does not match the registered connection"


# --- heartbeats (frames/heartbeat.jsonl) -------------------------------------------------------------------------


async def test_recorded_heartbeats(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(frame("device_registration", 1))  # capdev
        await constellation.register(frame("heartbeat", 1))  # hb@capdev
        # UFO Galaxy's heartbeat leaves client_type at "device": rejected, as UFO's server does (§8.5).
        await constellation.send_raw(frame("heartbeat", 3))
        assert_like_recorded(await constellation.expect(ServerMessageType.ERROR), "heartbeat", 4)
        await constellation.send_raw(frame("heartbeat", 5))
        assert_like_recorded(await constellation.receive(), "heartbeat", 6)
        await constellation.send_raw(frame("heartbeat", 7))  # client_id null: the registered id
        assert_like_recorded(await constellation.receive(), "heartbeat", 8)
        await device.send_raw(frame("heartbeat", 9))
        assert_like_recorded(await device.receive(), "heartbeat", 10)
        assert server.online_clients() == {"capdev": ClientType.DEVICE, "hb@capdev": ClientType.CONSTELLATION}


# --- identity pinning (§7.7) -------------------------------------------------------------------------------------


async def test_device_link_rejects_other_client_id_and_role(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register(frame("errors", 2))  # dup_dev
        await device.send_raw(frame("errors", 7))  # client_id someone_else
        assert_like_recorded(await device.expect(ServerMessageType.ERROR), "errors", 8)
        await device.send_raw(frame("errors", 9))  # client_type constellation
        assert_like_recorded(await device.expect(ServerMessageType.ERROR), "errors", 10)
        # A mismatch does not close the connection, and nothing about the identity changed.
        await device.assert_quiet("dup_dev", ClientType.DEVICE)
        assert server.online_clients() == {"dup_dev": ClientType.DEVICE}


async def test_constellation_link_rejects_device_frames(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(frame("device_registration", 1))
        await constellation.register(frame("task_roundtrip", 1))  # rt@capdev
        # The device's own frame replayed on the constellation link: wrong client_id first.
        await constellation.send_raw(frame("heartbeat", 9))
        await constellation.expect_error(CLIENT_ID_MISMATCH)
        # The right id but labelled (or defaulted to) device.
        await constellation.send(builders.heartbeat("rt@capdev", ClientType.DEVICE))
        await constellation.expect_error(CLIENT_TYPE_MISMATCH)
        await constellation.send_raw('{"type":"heartbeat","status":"ok","client_id":"rt@capdev"}')
        await constellation.expect_error(CLIENT_TYPE_MISMATCH)
        # A device cannot pose as the constellation to run a task on someone else's link either.
        await device.send(builders.task_request("rt@capdev", "capdev", session_id="s", task_name="t", request="x"))
        await device.expect_error(CLIENT_ID_MISMATCH)
        await constellation.assert_quiet("rt@capdev", ClientType.CONSTELLATION)
        await device.assert_quiet("capdev", ClientType.DEVICE)
        assert server.running_sessions() == {}


# --- DEVICE_INFO (frames/device_info.jsonl, §8.4) ----------------------------------------------------------------


async def test_recorded_device_info_exchange(server: AIPServer) -> None:
    async with (
        open_peer(server) as device,
        open_peer(server) as scoped,
        open_peer(server) as unscoped,
        open_peer(server) as other_device,
    ):
        await device.register(frame("device_registration", 1))  # capdev
        await scoped.register(frame("device_info", 1))  # info@capdev
        await scoped.send_raw(frame("device_info", 3))
        response = await scoped.receive()
        assert_like_recorded(response, "device_info", 4)
        assert response.response_id == client_frame("device_info", 3).request_id
        assert response.result == client_frame("device_registration", 1).metadata["system_info"]  # type: ignore[index]

        await scoped.send_raw(frame("device_info", 5))  # about some_other_device
        assert_like_recorded(await scoped.expect(ServerMessageType.ERROR), "device_info", 6)

        await unscoped.register(frame("device_info", 7))
        await unscoped.send_raw(frame("device_info", 9))  # ghost_device
        assert_like_recorded(await unscoped.receive(), "device_info", 10)
        # An unscoped constellation may ask about any device.
        await unscoped.send(builders.device_info_request("info_unscoped", "capdev", "rid-capdev"))
        answer = await unscoped.expect(ServerMessageType.DEVICE_INFO_RESPONSE, response_id="rid-capdev")
        assert answer.result == server.system_info("capdev")

        await other_device.register(frame("device_info", 11))  # raw_dev_info, a device
        await other_device.send_raw(frame("device_info", 13))
        assert_like_recorded(await other_device.expect(ServerMessageType.ERROR), "device_info", 14)


async def test_device_info_for_a_device_without_system_info(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register('{"type":"register","status":"ok","client_id":"bare"}')
        await constellation.register(builders.constellation_register("q", "bare"))
        # target_id omitted: the scoped constellation's own device is meant.
        await constellation.send_raw(
            '{"type":"device_info_request","status":"ok","client_type":"constellation","request_id":"r1"}'
        )
        answer = await constellation.expect(ServerMessageType.DEVICE_INFO_RESPONSE, response_id="r1", error=None)
        assert answer.status is TaskStatus.OK
        assert answer.result == {"error": "Device bare not found or no system info available"}


# --- the other message types (frames/errors.jsonl, §7 table) -----------------------------------------------------


async def test_recorded_error_echo_silent_frames_and_unknown_types(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register(frame("errors", 2))  # dup_dev
        await device.send_raw(frame("errors", 11))  # the client's own ERROR: logged and echoed
        assert_like_recorded(await device.expect(ServerMessageType.ERROR), "errors", 12)
        await device.send_raw(frame("errors", 13))  # device_info_response: logged, no reply
        await device.send_raw(frame("errors", 18))  # command_results for no session: dropped, no reply
        await device.assert_quiet("dup_dev", ClientType.DEVICE)
        await device.send_raw(frame("errors", 14))  # task_end from a client
        # UFO says "ClientMessageType.TASK_END" (a Python member name, §11.8); we give the wire value.
        await device.expect_error("Unknown message type: task_end")
        await device.send_raw(frame("errors", 2))  # REGISTER again
        await device.expect_error("Unknown message type: register")
        await device.send_raw(frame("errors", 16))  # device TASK naming another device
        assert_like_recorded(await device.expect(ServerMessageType.ERROR), "errors", 17)
        assert server.online_clients() == {"dup_dev": ClientType.DEVICE}


async def test_command_results_from_a_constellation_are_dropped(server: AIPServer) -> None:
    """Only the device a COMMAND went to can answer it. An unscoped constellation that answers the COMMAND of the
    very session it asked for (its session_id, prev_response_id and call_ids, under its own identity) is not
    heard, and the session goes on with the device's own, different, answer."""
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("dev", platform="linux", system_info=None))
        await constellation.register(frame("errors", 19))  # err_notarget: registered for no device
        recorded = json.loads(frame("errors", 18))  # command_results for no session, relabelled
        recorded.update(client_type="constellation", client_id=None)
        await constellation.send_raw(json.dumps(recorded))
        await constellation.assert_quiet("err_notarget", ClientType.CONSTELLATION)

        await constellation.send(
            builders.task_request("err_notarget", "dev", session_id="s1", task_name="t", request="echo")
        )
        await constellation.expect_ack("s1")
        list_tools = await device.expect(ServerMessageType.COMMAND, session_id="s1")
        forged = results_for(list_tools, "dev", [ok([tool_info("forged")], namespace=None)])
        await constellation.send(
            msgspec.structs.replace(forged, client_id="err_notarget", client_type=ClientType.CONSTELLATION)
        )
        await constellation.assert_quiet("err_notarget", ClientType.CONSTELLATION)  # no reply, as UFO's clients expect

        # The COMMAND still waits for its device: the device's tool list, not the forged one, decides what runs.
        await device.send(results_for(list_tools, "dev", [ok([tool_info("echo")], namespace=None)]))
        echo = await device.expect(ServerMessageType.COMMAND, session_id="s1")
        assert echo.actions is not None and [a.tool_name for a in echo.actions] == ["echo"]
        await device.send(results_for(echo, "dev", [ok("real")]))
        final = await device.expect(ServerMessageType.COMMAND, session_id="s1", actions=[])
        await device.send(results_for(final, "dev", []))
        end = await constellation.expect(ServerMessageType.TASK_END, session_id="s1", status=TaskStatus.COMPLETED)
        assert end.result == [{"request": "echo", "result": "real"}]


@pytest.mark.parametrize(
    ("bad_frame", "path", "detail"),
    [
        ("hello", "$", "JSON is malformed"),
        ('{"type":"heartbeat"}', "$", "missing required field `status`"),
        ("[1,2]", "$", "Expected `object`"),
        ('{"type":"heartbeat","status":"ok","client_id":5}', "$.client_id", "Expected `str | null`"),
        ('{"type":"HEARTBEAT","status":"ok"}', "$.type", "Invalid enum value 'HEARTBEAT'"),
        ('{"type":"heartbeat","status":"ok","client_type":null}', "$.client_type", "got `null`"),
        (
            '{"type":"command_results","status":"continue","action_results":[{"status":"done"}]}',
            "$.action_results[0].status",
            "Invalid enum value 'done'",
        ),
        ('{"type":"heartbeat","status":"ok","metadata":"' + "z" * 5000 + '"}', "$.metadata", "Expected `object"),
    ],
)
async def test_invalid_frames_after_registration_get_an_error_naming_the_path(
    server: AIPServer, bad_frame: str, path: str, detail: str
) -> None:
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 3))
        await device.send_raw(bad_frame)
        error = await device.expect_error()
        assert error.startswith(f"invalid ClientMessage at {path}: ")
        assert detail in error
        assert len(error) < 300
        await device.assert_quiet("raw_dev_1", ClientType.DEVICE)  # the link is still usable
        assert server.online_clients() == {"raw_dev_1": ClientType.DEVICE}


async def test_binary_frame_after_registration_closes_1003_and_unregisters(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register(frame("binary_frame", 1))
        await device.send_raw(b"\x00\x01binary")
        assert "Binary frames are not supported" in await device.expect_error()
        assert server.online_clients() == {}
        reason = await device.expect_closed()
        assert (reason.code, reason.reason) == (1003, "binary frame")


async def test_frame_size_is_bounded_and_oversized_frames_close_1009(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, max_frame_size=4096)
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 3))
        fits = builders.heartbeat("raw_dev_1", ClientType.DEVICE, metadata={"pad": "a" * 3500})
        assert len(encode_text(fits)) <= 4096
        await device.send(fits)
        await device.expect_ack()
        too_big = builders.heartbeat("raw_dev_1", ClientType.DEVICE, metadata={"pad": "a" * 5000})
        await device.send(too_big)
        reason = await device.expect_closed()
        assert reason.code == 1009
    assert server.online_clients() == {}


async def test_default_frame_bound_is_one_mib(server: AIPServer) -> None:
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 3))
        await device.send(builders.heartbeat("raw_dev_1", ClientType.DEVICE, metadata={"pad": "a" * (1 << 20)}))
        assert (await device.expect_closed()).code == 1009


async def test_one_client_misbehaving_does_not_affect_another(server: AIPServer) -> None:
    async with open_peer(server) as good, open_peer(server) as bad:
        await good.register(frame("device_registration", 1))
        await bad.register(frame("device_registration", 3))
        await bad.send_raw("{{{")
        await bad.expect_error()
        await bad.send_raw(b"\xff")
        await bad.expect_error()
        assert (await bad.expect_closed()).code == 1003
        await good.assert_quiet("capdev", ClientType.DEVICE)
        assert server.online_clients() == {"capdev": ClientType.DEVICE}


# --- keepalive -----------------------------------------------------------------------------------------------------


async def test_peer_that_stops_answering_pings_is_closed_and_unregistered(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A raw peer that never pongs (a vanished host, as far as the server can tell) must not stay registered."""
    server = await start_server(nursery, settings=ServerSettings(ping_interval=20, ping_timeout=5))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(wsproto.events.Request(host="127.0.0.1", target=f"/ws?token={TOKEN}")))
    events: list[wsproto.events.Event] = []

    async def next_event() -> wsproto.events.Event:
        with trio.fail_after(60):  # virtual seconds: a server that never pings fails here instead of hanging
            while not events:
                data = await stream.receive_some()
                ws.receive_data(data or None)
                events.extend(ws.events())
        return events.pop(0)

    assert isinstance(await next_event(), wsproto.events.AcceptConnection)
    await stream.send_all(ws.send(wsproto.events.TextMessage(data=frame("device_registration", 3))))
    confirmation = await next_event()
    assert isinstance(confirmation, wsproto.events.TextMessage)
    message = decode_server_message(confirmation.data)
    assert encode(message) == confirmation.data.encode()
    assert (message.type, message.status) == (ServerMessageType.HEARTBEAT, TaskStatus.OK)
    registered_at = trio.current_time()
    assert server.online_clients() == {"raw_dev_1": ClientType.DEVICE}

    ping = await next_event()
    assert isinstance(ping, wsproto.events.Ping)
    assert trio.current_time() - registered_at == pytest.approx(20, abs=0.01)
    # No pong: the server gives up after ping_timeout.
    close = await next_event()
    assert isinstance(close, wsproto.events.CloseConnection)
    assert (close.code, close.reason) == (1011, "keepalive ping timeout")
    assert trio.current_time() - registered_at == pytest.approx(25, abs=0.01)
    assert server.online_clients() == {}
    await stream.aclose()


async def test_peer_that_answers_pings_stays(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = await start_server(nursery, settings=ServerSettings(ping_interval=20, ping_timeout=5))
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 3))
        await trio.sleep(300)  # fifteen pings, each answered by the client library
        await device.assert_quiet("raw_dev_1", ClientType.DEVICE)
        assert server.online_clients() == {"raw_dev_1": ClientType.DEVICE}
