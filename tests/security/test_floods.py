"""Floods and exhaustion (issue 15, item 3), scaled down: each flood is bounded, the server stays up, and a
bystander client is answered throughout.

Real sockets on 127.0.0.1, port 0; every time is virtual (``autojump_clock``). The full-size floods (10,000
frames/s, 1,000 silent TCP clients, 5,000 held connections, a device that reads nothing) and the bystander's
heartbeat round trips under them are measured by ``benchmarks/floods.py``.
"""

from __future__ import annotations

import itertools
import socket

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import CloseConnection, Request, TextMessage

from galaxy_trio.aip import (
    ClientType,
    ServerMessageType,
    TaskStatus,
    builders,
    decode_server_message,
    encode_text,
)
from galaxy_trio.aip.builders import DEVICE_DISCONNECTED
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.server import AIPServer, ServerSettings
from galaxy_trio.server.rules import FRAME_RATE_EXCEEDED, FrameBudget
from galaxy_trio.server.sessions import SessionHandle

from ..manager.peer import DEVICE_INFO_RESPONSE, HEARTBEAT_ACK, ScriptedPeer, patched
from ..server._peers import TOKEN, open_peer, start_server
from ._rawws import RawWebSocket

BYSTANDER = "bystander"


def _target() -> str:
    return f"/ws?token={TOKEN}"


async def _raw(server: AIPServer, *, rcvbuf: int | None = None) -> RawWebSocket:
    """A raw WebSocket client; ``rcvbuf`` shrinks its socket's receive buffer (a peer whose window fills fast)."""
    if rcvbuf is None:
        return await RawWebSocket.connect(server.host, server.port, _target())
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((server.host, server.port))
    raw = RawWebSocket(trio.SocketStream(sock), wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
    await raw.send(Request(host=f"{server.host}:{server.port}", target=_target()))
    await raw.next_event()
    return raw


async def _register_raw(raw: RawWebSocket, device_id: str) -> None:
    await raw.send(TextMessage(encode_text(builders.device_register(device_id, platform="linux", system_info=None))))
    confirmation = decode_server_message(await raw.next_text())
    assert (confirmation.type, confirmation.status) == (ServerMessageType.HEARTBEAT, TaskStatus.OK)


def _heartbeats(raw: RawWebSocket, device_id: str, count: int) -> bytes:
    frame = TextMessage(encode_text(builders.heartbeat(device_id, ClientType.DEVICE)))
    return raw.prepare(*[frame] * count)


# --- the budget itself (pure) -------------------------------------------------------------------------------------


def test_a_full_budget_allows_exactly_its_burst_at_one_instant() -> None:
    budget = FrameBudget(rate=10.0, burst=5, now=100.0)
    assert [budget.take(100.0) for _ in range(7)] == [True] * 5 + [False] * 2


def test_the_budget_refills_at_its_rate_and_never_above_its_burst() -> None:
    budget = FrameBudget(rate=10.0, burst=5, now=0.0)
    assert all(budget.take(0.0) for _ in range(5))
    assert not budget.take(0.05)  # half a token back
    assert budget.take(0.1)  # one token
    assert not budget.take(0.1)
    # A long silence refills the bucket to its burst, not beyond.
    assert [budget.take(1000.0) for _ in range(6)] == [True] * 5 + [False]


def test_a_refused_frame_costs_nothing_and_a_clock_going_back_adds_nothing() -> None:
    budget = FrameBudget(rate=1.0, burst=1, now=10.0)
    assert budget.take(10.0)
    assert not budget.take(10.5)
    assert budget.take(11.0)  # the refused frame at 10.5 spent no token: one whole token back by 11.0
    assert not budget.take(5.0)  # time going backwards gives no token
    assert not budget.take(11.9)
    assert budget.take(12.0)


def test_a_steady_rate_at_the_budget_is_never_refused() -> None:
    budget = FrameBudget(rate=10.0, burst=2, now=0.0)
    assert all(budget.take(i / 10) for i in range(1, 1001))


def test_the_refusal_names_the_budget() -> None:
    text = FrameBudget(rate=200.0, burst=2000, now=0.0).refusal()
    assert "2000 frames at once" in text and "200 frames per second" in text


@pytest.mark.parametrize("bad", [{"frame_rate": 0}, {"frame_burst": 0}, {"frame_burst": 2.5}, {"frame_rate": -1}])
def test_settings_refuse_a_budget_that_admits_nothing(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="frame_"):
        ServerSettings(**bad)  # type: ignore[arg-type]


# --- one client flooding frames -----------------------------------------------------------------------------------


async def test_a_client_flooding_frames_gets_its_burst_answered_then_an_error_and_1008(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(frame_rate=10.0, frame_burst=50))
    async with open_peer(server) as bystander:
        await bystander.register(builders.device_register(BYSTANDER, platform="linux", system_info=None))
        flooder = await _raw(server)
        await _register_raw(flooder, "flooder")
        await flooder.write(_heartbeats(flooder, "flooder", 400))  # 400 frames in one instant: a burst of 50 is allowed
        answers = []
        while True:
            event = await flooder.next_event()
            if isinstance(event, CloseConnection):
                break
            assert isinstance(event, TextMessage), event
            answers.append(decode_server_message(event.data))
        assert [a.type for a in answers[:50]] == [ServerMessageType.HEARTBEAT] * 50
        assert [a.type for a in answers[50:]] == [ServerMessageType.ERROR]
        assert answers[50].error == FrameBudget(10.0, 50, 0.0).refusal()
        assert (event.code, event.reason) == (1008, FRAME_RATE_EXCEEDED)
        await flooder.until_eof()
        assert server.online_clients() == {BYSTANDER: ClientType.DEVICE}
        await bystander.assert_quiet(BYSTANDER, ClientType.DEVICE)
        assert server.stats.rejected["frame_budget"] == 1  # /metrics: frames_rejected_total{rule="frame_budget"}


async def test_a_client_at_the_budgets_rate_is_served_for_as_long_as_it_likes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(frame_rate=10.0, frame_burst=3))
    async with open_peer(server) as peer:
        await peer.register(builders.device_register("steady", platform="linux", system_info=None))
        for _ in range(300):  # 30 virtual seconds at exactly the budget's rate, each answered
            await trio.sleep(0.1)
            await peer.send(builders.heartbeat("steady", ClientType.DEVICE))
            await peer.expect_ack()
        assert server.online_clients() == {"steady": ClientType.DEVICE}


# --- silent TCP clients, connections held open --------------------------------------------------------------------


async def test_tcp_clients_that_send_nothing_are_dropped_at_the_handshake_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(handshake_deadline=3.0))
    silent = [await trio.open_tcp_stream(server.host, server.port) for _ in range(100)]
    start = trio.current_time()
    async with open_peer(server) as bystander:  # served while the 100 wait for their deadline
        await bystander.register(builders.device_register(BYSTANDER, platform="linux", system_info=None))
        await bystander.assert_quiet(BYSTANDER, ClientType.DEVICE)
        assert trio.current_time() - start < 3.0
        for stream in silent:
            assert await stream.receive_some(100) == b""  # the server hung up, nothing sent
            assert trio.current_time() - start == pytest.approx(3.0, abs=0.05)
            await stream.aclose()
        await bystander.assert_quiet(BYSTANDER, ClientType.DEVICE)
        assert server.online_clients() == {BYSTANDER: ClientType.DEVICE}


async def test_connections_held_open_unregistered_are_closed_and_registered_ones_all_served(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(registration_deadline=5.0))
    idle = [await _raw(server) for _ in range(150)]  # upgraded, never registered
    held = []
    for i in range(150):  # registered and held open
        raw = await _raw(server)
        await _register_raw(raw, f"held-{i}")
        held.append(raw)
    assert len(server.online_clients()) == 150
    for raw in idle:
        error = decode_server_message(await raw.next_text())
        assert error.error == "No REGISTER frame received within 5 s"
        close = await raw.next_event()
        assert isinstance(close, CloseConnection) and (close.code, close.reason) == (1008, "registration timeout")
    # Every held connection still answers, in one round of heartbeats written before any answer is read.
    for i, raw in enumerate(held):
        await raw.write(_heartbeats(raw, f"held-{i}", 1))
    for raw in held:
        ack = decode_server_message(await raw.next_text())
        assert ack.type is ServerMessageType.HEARTBEAT
    for raw in held:
        await raw.stream.aclose()
    for raw in idle:
        await raw.stream.aclose()
    with trio.fail_after(10):
        while server.online_clients():  # noqa: ASYNC110 (the registry has no event to wait on)
            await trio.sleep(0.01)


# --- a peer that reads nothing ------------------------------------------------------------------------------------

#: Bigger than any loopback socket buffer can absorb (tcp_wmem max 4 MiB + a 4 KiB receive buffer).
_BLOB = "x" * (16 << 20)


async def _blob_driver(handle: SessionHandle) -> object:
    result = await handle.call_tool("store", {"blob": _BLOB})
    return result.result


async def test_a_device_that_reads_nothing_is_closed_at_the_send_deadline_and_its_queue_fails(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Keepalive off: the send bound alone ends it (before, the session and the 4 queued behind it waited on the
    blocked send forever)."""
    settings = ServerSettings(send_deadline=6.0, ping_interval=None, command_deadline=1000.0)
    server = await start_server(nursery, driver=_blob_driver, settings=settings)
    device = await _raw(server, rcvbuf=4096)
    await _register_raw(device, "deaf")  # and reads nothing from now on
    async with open_peer(server) as constellation:
        await constellation.register(builders.constellation_register("t", "deaf"))
        start = trio.current_time()
        for i in range(5):
            await constellation.send(
                builders.task_request("t@deaf", "deaf", session_id=f"s{i}", task_name="t", request="store")
            )
            await constellation.expect_ack(f"s{i}")
        ends = {}
        with trio.fail_after(100):
            for _ in range(5):
                end = await constellation.expect(ServerMessageType.TASK_END)
                ends[end.session_id] = (end.status, end.error)
        assert trio.current_time() - start == pytest.approx(6.0, abs=0.05)
        assert ends == {f"s{i}": (TaskStatus.FAILED, DEVICE_DISCONNECTED) for i in range(5)}
        assert "deaf" not in server.online_clients()
        assert server.running_sessions() == {}
        assert await constellation.expect_error() == "Target device 'deaf' disconnected"
        assert (await constellation.expect_closed()).code == 1000
    with trio.fail_after(10):
        await device.until_eof()  # and the server let go of the socket


async def test_a_client_that_reads_none_of_its_answers_is_closed_at_the_send_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    settings = ServerSettings(send_deadline=4.0, ping_interval=None, frame_burst=10**9)
    server = await start_server(nursery, settings=settings)
    async with open_peer(server) as bystander:
        await bystander.register(builders.device_register(BYSTANDER, platform="linux", system_info=None))
        deaf = await _raw(server, rcvbuf=4096)
        await _register_raw(deaf, "deaf")
        start = trio.current_time()
        async with trio.open_nursery() as writers:

            async def flood() -> None:
                try:
                    while True:  # heartbeats whose answers are never read; this blocks once the server stops reading
                        await deaf.write(_heartbeats(deaf, "deaf", 1000))
                except trio.BrokenResourceError:
                    pass

            writers.start_soon(flood)
            with trio.fail_after(60):
                while "deaf" in server.online_clients():
                    await trio.sleep(0.5)
                    await bystander.assert_quiet(BYSTANDER, ClientType.DEVICE)
            writers.cancel_scope.cancel()
        # The server's answers jam at once; it gives up on them send_deadline later (plus the 0.5 s polling).
        assert trio.current_time() - start == pytest.approx(4.0, abs=0.6)
        await deaf.stream.aclose()
        await bystander.assert_quiet(BYSTANDER, ClientType.DEVICE)


# --- a manager flooded by one of its servers ----------------------------------------------------------------------


async def test_a_manager_flooded_by_one_server_keeps_its_other_devices_heartbeats_on_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Device a's server sends 2,000 frames a (virtual) second for 10 s: unsolicited acks and DEVICE_INFO answers
    nobody asked for. Device b, on a calm server, keeps a heartbeat every interval throughout, and a stays IDLE
    (the frames are harmless, only many). The real-time figure comes from ``benchmarks/floods.py``."""
    flooding, calm = ScriptedPeer(), ScriptedPeer()
    await nursery.start(flooding.serve)
    await nursery.start(calm.serve)
    unsolicited = [HEARTBEAT_ACK, patched(DEVICE_INFO_RESPONSE, response_id="nobody-asked")]
    async with ConstellationDeviceManager(task_name="tt", heartbeat_interval=1.0, heartbeat_timeout=5.0) as manager:
        assert await manager.register_device("a", flooding.url)
        assert await manager.register_device("b", calm.url)
        (conn,) = flooding.live
        start = trio.current_time()
        for _ in range(1000):  # 10 virtual seconds, 20 frames every 10 ms
            for i in range(20):
                await conn.send(unsolicited[i % 2])
            await trio.sleep(0.01)
        end = trio.current_time()
        for device_id in ("a", "b"):
            profile = manager.get_device_info(device_id)
            assert profile is not None and profile.status is DeviceStatus.IDLE, profile
    beats = [t for t, _ in calm.heartbeat_times() if start <= t <= end]
    assert len(beats) >= 9
    assert [b - a for a, b in itertools.pairwise(beats)] == [pytest.approx(1.0, abs=0.02)] * (len(beats) - 1)
    assert len(flooding.connections) == 1  # a's link was never dropped
