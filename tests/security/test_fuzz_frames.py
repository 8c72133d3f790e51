"""Bad input, fuzzed with Hypothesis, against the manager's reader and against the AIP server.

Each strategy (see :mod:`.strategies`) grows frames from UFO's recordings: random text and JSON, mutated frames,
~900 KB strings, nesting thousands of levels deep, binary frames, frames over the 1 MiB bound.

- The manager's reader (a scripted server plays the hostile peer): nothing crashes the manager; a bad text frame
  is logged and ignored and the link stays up; a binary or oversized frame drops the link and the device comes
  back to IDLE; a device on another link never notices. Each example is one ``trio.run`` on the real clock:
  nothing in them waits for time but the manager's own (tiny) reconnect backoff, and a MockClock would jump
  deadlines while a megabyte frame is still in flight on the loopback (TCP can pause for an ACK).
- The server (raw clients play the hostile peer): every bad frame gets an ERROR frame or a close with a reason
  (1003 binary, 1008 bad first frame, 1009 oversized) — never silence, never a hang, never an internal error —
  and an unrelated client, connected to the same server for the whole test, keeps being answered. One server
  serves every example of a test (see :class:`._support.TrioThread`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from galaxy_trio.aip import (
    ClientMessageType,
    ClientType,
    ServerMessage,
    ServerMessageType,
    builders,
    decode_client_message,
    decode_server_message,
    encode_text,
    new_id,
)
from galaxy_trio.config import DeviceConfig
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.manager.session import clip
from galaxy_trio.manager.telemetry import SYSTEM_INFO_KEYS
from galaxy_trio.server import AIPServer
from galaxy_trio.transport import CLOSE_GRACE

from ..manager.peer import (
    CONFIRMATION,
    DEVICE_INFO_RESPONSE,
    DUPLICATE,
    HEARTBEAT_ACK,
    SYSTEM_INFO,
    Conn,
    ScriptedPeer,
    patched,
)
from ..server._peers import TOKEN, Peer, open_peer, start_server
from ._rawws import RawWebSocket
from ._support import TrioThread, capture_logs, connections_of, live_connection, next_status
from .strategies import KINDS, MAX_FRAME, Payload, bad_frames, deeply_nested, json_values

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,  # on purpose: one server for every example of a test
    ],
)

#: Real seconds for a manager example: only a hang gets there (so the time itself is never what is tested).
HANG_LIMIT = 30.0
#: Virtual seconds (MockClock) for the close tests: a scenario that stops making progress jumps here and fails.
WATCHDOG = 3600.0
#: Real seconds for one server example; only a hang can reach it.
HANG_GUARD = 20.0

MANAGER_OPTIONS: dict[str, Any] = {
    "task_name": "fz",
    "heartbeat_interval": 30.0,
    "heartbeat_timeout": 10.0,
    "reconnect_delay": 0.01,
    "backoff_cap": 0.05,
    "connect_timeout": 5.0,
    "register_timeout": 5.0,
    "telemetry_timeout": 5.0,
}
BINARY_FRAME_ERROR = "Binary frames are not supported: AIP frames are JSON text"
OVERSIZED_CLOSE = f"connection closed (1009: message larger than {MAX_FRAME} bytes)"
FUZZ_DONE = "connection closed (4000: fuzz done)"


def _example(scenario: Any, *args: Any) -> None:
    """One Hypothesis example: its own trio run, its own server and manager."""

    async def bounded() -> None:
        with trio.fail_after(HANG_LIMIT):
            await scenario(*args)

    trio.run(bounded)


def _device(device_id: str, url: str) -> DeviceConfig:
    return DeviceConfig(device_id=device_id, server_url=url, max_retries=100)


def _read_until_link_ends(batch: Sequence[Payload]) -> list[Payload]:
    """The frames a reader gets to see: everything before the first binary or oversized one."""
    seen = []
    for payload in batch:
        if payload.binary or payload.oversized:
            break
        seen.append(payload)
    return seen


def _link_end(batch: Sequence[Payload]) -> str | None:
    """Why the manager drops the link after ``batch``, or None if the batch leaves it up."""
    for payload in batch:
        if payload.oversized:
            return OVERSIZED_CLOSE
        if payload.binary:
            return f"binary frame of {len(payload.data)} bytes received; AIP frames are JSON text"
    return None


async def _play(conn: Conn, batch: Sequence[Payload]) -> bool:
    """Send ``batch`` on a scripted-peer connection, up to its first binary or oversized frame (that one ends the
    link); False if the link is over before the end of the batch.

    Frames sent after that one reach a link that is closing; the tests of "frames around a close" below send
    them deliberately, on a MockClock: here, on the real clock, a manager that must give up on its closing
    handshake would cost CLOSE_GRACE of real time per example.
    """
    for payload in batch:
        try:
            await conn.ws.send_message(payload.data)
        except trio_websocket.ConnectionClosed:
            return False
        if payload.binary or payload.oversized:
            return False
    return True


# --- the manager's reader ---------------------------------------------------------------------------------------


@FUZZ
@given(batch=st.lists(bad_frames("S->C"), min_size=1, max_size=3))
def test_manager_ignores_bad_text_frames_and_reconnects_after_binary_or_oversized(batch: list[Payload]) -> None:
    _example(_idle_link_scenario, batch)


async def _idle_link_scenario(batch: list[Payload]) -> None:
    with capture_logs() as records:
        async with trio.open_nursery() as nursery:
            peer = ScriptedPeer()
            await nursery.start(peer.serve)
            async with ConstellationDeviceManager(**MANAGER_OPTIONS) as manager:
                manager.add_devices([_device("victim", peer.url), _device("bystander", peer.url)])
                settled = await manager.wait_until_settled()
                assert {p.status for p in settled.values()} == {DeviceStatus.IDLE}
                victim = live_connection(peer, "fz@victim")
                bystander = live_connection(peer, "fz@bystander")
                with manager.subscribe() as events:
                    if await _play(victim, batch) and _link_end(batch) is None:
                        # Every frame was read and none ended the link: only this close does.
                        await victim.ws.aclose(4000, "fuzz done")
                    dropped = await next_status(events, "victim", DeviceStatus.DISCONNECTED, quiet=("bystander",))
                    assert dropped.reason == (_link_end(batch) or FUZZ_DONE)
                    await next_status(events, "victim", DeviceStatus.IDLE, quiet=("bystander",))
                assert len(connections_of(peer, "fz@victim")) == 2
                assert connections_of(peer, "fz@bystander") == [bystander] and bystander in peer.live
                profile = manager.get_device_info("bystander")
                assert profile is not None and profile.status is DeviceStatus.IDLE
            nursery.cancel_scope.cancel()
    # "Logged and ignored": one warning per undecodable text frame the reader saw, each naming the problem.
    undecodable = [p for p in _read_until_link_ends(batch) if p.server_message() is None]
    warnings = [r.getMessage() for r in records if "ignoring undecodable frame" in r.getMessage()]
    assert len(warnings) == len(undecodable)
    assert all("invalid ServerMessage at $" in w for w in warnings)


class _HoldFirstRegister(ScriptedPeer):
    """Leaves the first REGISTER of ``client_id`` unanswered, so that the test answers it (bad frames first)."""

    def __init__(self, client_id: str) -> None:
        super().__init__()
        self.hold = client_id
        self.held: Conn | None = None

    async def _answer(self, conn: Conn, message: Any) -> bool:
        if message.type is ClientMessageType.REGISTER and message.client_id == self.hold and self.held is None:
            self.registers += 1
            self.held = conn
            self._notify()
            return True
        try:
            return await super()._answer(conn, message)
        except trio_websocket.ConnectionClosed:  # the test closed this link itself: nothing left to answer
            return False


def _registration_verdict(batch: Sequence[Payload]) -> tuple[str, str | None]:
    """What a correct manager makes of ``batch`` followed by the real confirmation (PROTOCOL §6: the next
    heartbeat/ok accepts, the next error rejects; anything else is not an answer)."""
    for payload in batch:
        if payload.oversized:
            return "dropped", OVERSIZED_CLOSE
        if payload.binary:
            return "dropped", f"binary frame of {len(payload.data)} bytes received; AIP frames are JSON text"
        message = payload.server_message()
        if message is None:
            continue
        if message.type is ServerMessageType.ERROR:
            return "rejected", clip(message.error or "unspecified error")  # server text is bounded
        if message.type is ServerMessageType.HEARTBEAT and message.status.value == "ok":
            break
    # Accepted (by a fuzzed heartbeat/ok or by the real confirmation); a later binary or oversized frame still
    # drops the link, and the device comes back on a second connection.
    end = _link_end(batch)
    return ("accepted", None) if end is None else ("dropped", end)


@FUZZ
@given(batch=st.lists(bad_frames("S->C"), min_size=1, max_size=3))
def test_manager_survives_bad_frames_instead_of_the_registration_verdict(batch: list[Payload]) -> None:
    _example(_registration_scenario, batch)


async def _registration_scenario(batch: list[Payload]) -> None:
    verdict, reason = _registration_verdict(batch)
    retryable = reason is not None and reason.startswith("Target device ") and reason.endswith(" is not connected")
    async with trio.open_nursery() as nursery:
        peer = _HoldFirstRegister("fz@victim")
        await nursery.start(peer.serve)
        async with ConstellationDeviceManager(**MANAGER_OPTIONS) as manager:
            with manager.subscribe() as events:
                manager.add_devices([_device("victim", peer.url), _device("bystander", peer.url)])
                await peer.wait_for(lambda: peer.held is not None)
                held = peer.held
                assert held is not None
                try:
                    if await _play(held, batch):
                        await held.send(CONFIRMATION)
                        # Everything before this close is read first: only it may end a link the batch left up.
                        await held.ws.aclose(4000, "fuzz done")
                except trio_websocket.ConnectionClosed:
                    pass
                if verdict == "rejected" and not retryable:  # a rejection retrying cannot fix: FAILED, no retry
                    profile = await manager.wait_for_device("victim")
                    assert (profile.status, profile.failure_reason) == (DeviceStatus.FAILED, reason)
                    assert profile.connection_attempts == 1 and len(connections_of(peer, "fz@victim")) == 1
                else:
                    dropped = await next_status(events, "victim", DeviceStatus.DISCONNECTED)
                    if verdict == "accepted":  # our close, seen by the reader or by a send (DEVICE_INFO) first
                        assert dropped.reason in (FUZZ_DONE, f"send failed: {FUZZ_DONE}")
                    else:
                        assert dropped.reason == reason
                    await next_status(events, "victim", DeviceStatus.IDLE)
                    assert len(connections_of(peer, "fz@victim")) == 2
            bystander = await manager.wait_for_device("bystander")
            assert bystander.status is DeviceStatus.IDLE and len(connections_of(peer, "fz@bystander")) == 1
        nursery.cancel_scope.cancel()


_nested_results = st.builds(
    lambda depth, objects: {**SYSTEM_INFO, "custom_metadata": json.loads(deeply_nested(depth, objects=objects))},
    st.integers(1, 400),
    st.booleans(),
)
_system_info_like = st.dictionaries(st.sampled_from([*SYSTEM_INFO, "tags", "error"]), json_values, max_size=8)


@FUZZ
@given(result=json_values | _system_info_like | _nested_results)
def test_manager_merges_any_device_info_result_without_crashing(result: Any) -> None:
    """DEVICE_INFO's ``result`` is free-form on the wire: whatever shape it has, the device goes IDLE, the profile
    stays readable (snapshots, JSON), and only a real system_info object is merged."""
    _example(_device_info_scenario, result)


async def _device_info_scenario(result: Any) -> None:
    async with trio.open_nursery() as nursery:
        peer = ScriptedPeer()
        peer.system_info = result
        await nursery.start(peer.serve)
        async with ConstellationDeviceManager(**MANAGER_OPTIONS) as manager:
            assert await manager.register_device("dev", peer.url, os="configured-os", capabilities=["mine"])
            profile = manager.get_device_info("dev")
            assert profile is not None and profile.status is DeviceStatus.IDLE
            assert manager.get_all_devices()["dev"] == profile
            usable = isinstance(result, dict) and bool(result) and "error" not in result
            if usable:
                assert profile.metadata["system_info"] == {key: result.get(key) for key in SYSTEM_INFO_KEYS}
            else:
                assert "system_info" not in profile.metadata and profile.os == "configured-os"
            assert profile.capabilities[0] == "mine"
        nursery.cancel_scope.cancel()


# --- the server -------------------------------------------------------------------------------------------------

_client_ids = itertools.count()


async def _server_and_bystander(*, task_status: trio.TaskStatus[tuple[AIPServer, Peer]]) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery)
        async with open_peer(server) as bystander:
            await bystander.register(builders.device_register("bystander", platform="linux", system_info=SYSTEM_INFO))
            task_status.started((server, bystander))
            await trio.sleep_forever()


@pytest.fixture
def shared_server() -> AsyncIterator[tuple[TrioThread, AIPServer, Peer]]:
    host = TrioThread(_server_and_bystander)
    with host as (server, bystander), capture_logs() as records:
        yield host, server, bystander
        # Over every example: never an internal error (a traceback in the server's log) nor any other ERROR.
        assert [r.getMessage() for r in records if r.levelname in ("ERROR", "CRITICAL")] == []


async def _after_example(server: AIPServer, bystander: Peer) -> None:
    """The fuzzing client has gone: nothing of it is left registered, and the bystander is still answered."""
    await trio.testing.wait_all_tasks_blocked()
    assert server.online_clients() == {"bystander": ClientType.DEVICE}
    assert server.running_sessions() == {}
    await bystander.assert_quiet("bystander", ClientType.DEVICE)


async def _receive(peer: Peer, *, session_traffic: bool) -> ServerMessage:
    """The next frame, passing over COMMANDs and TASK_ENDs of a task session a fuzzed TASK may have started."""
    while True:
        message = await peer.receive()
        if session_traffic and message.type in (ServerMessageType.COMMAND, ServerMessageType.TASK_END):
            continue
        return message


async def _send_oversized(peer: Peer, data: str | bytes, *, session_traffic: bool) -> trio_websocket.CloseReason:
    """Send a frame over the bound and return the server's close reason. The server may close before the whole
    frame is even written (trio-websocket closes at the first byte past the bound): the send then fails with
    that very close reason."""
    try:
        await peer.send_raw(data)
    except trio_websocket.ConnectionClosed as exc:
        assert exc.reason is not None
        return exc.reason
    return await _expect_close(peer, session_traffic=session_traffic)


async def _expect_close(peer: Peer, *, session_traffic: bool = False) -> trio_websocket.CloseReason:
    try:
        message = await _receive(peer, session_traffic=session_traffic)
    except trio_websocket.ConnectionClosed as exc:
        assert exc.reason is not None
        return exc.reason
    raise AssertionError(f"expected the server to close, got {message}")


@FUZZ
@given(batch=st.lists(bad_frames("C->S"), min_size=1, max_size=4))
def test_server_answers_every_bad_frame_of_a_registered_client(
    shared_server: tuple[TrioThread, AIPServer, Peer], batch: list[Payload]
) -> None:
    host, server, bystander = shared_server
    host.run(_registered_client_example, server, bystander, batch)


async def _registered_client_example(server: AIPServer, bystander: Peer, batch: list[Payload]) -> None:
    device_id = f"fuzz-{next(_client_ids)}"
    with trio.fail_after(HANG_GUARD):
        async with open_peer(server) as peer:
            await peer.register(builders.device_register(device_id, platform="linux", system_info=None))
            session_traffic = False
            for payload in batch:
                message = payload.client_message()
                session_traffic |= message is not None and message.type is ClientMessageType.TASK
                if await _answered_or_closed(peer, device_id, payload, session_traffic=session_traffic):
                    break
        await _after_example(server, bystander)


async def _answered_or_closed(peer: Peer, device_id: str, payload: Payload, *, session_traffic: bool) -> bool:
    """Send one bad frame and check the server's answer; True if the server (rightly) closed the link."""
    if payload.oversized:
        assert (await _send_oversized(peer, payload.data, session_traffic=session_traffic)).code == 1009
        return True
    await peer.send_raw(payload.data)
    if payload.binary:
        error = await _receive(peer, session_traffic=session_traffic)
        assert (error.type, error.error) == (ServerMessageType.ERROR, BINARY_FRAME_ERROR)
        reason = await _expect_close(peer, session_traffic=session_traffic)
        assert (reason.code, reason.reason) == (1003, "binary frame")
        return True
    # The server reads a connection with one task, in order: whatever it says about the bad frame comes before
    # its answer to this marker frame, which no fuzzed frame can imitate.
    marker = new_id()
    await peer.send_raw(json.dumps({"type": "heartbeat", "status": marker}))
    replies = []
    while True:
        reply = await _receive(peer, session_traffic=session_traffic)
        if reply.type is ServerMessageType.ERROR and marker in (reply.error or ""):
            break
        replies.append(reply)
    message = payload.client_message()
    if message is None:
        assert [r.type for r in replies] == [ServerMessageType.ERROR], replies
        assert replies[0].error is not None and replies[0].error.startswith("invalid ClientMessage at $")
        assert len(replies[0].error) < 300  # an error names the problem; it never echoes a huge input
        return False
    own = message.client_id in (None, device_id) and message.client_type is ClientType.DEVICE
    # UFO's clients expect no answer to these two (PROTOCOL §7); every other frame gets exactly one.
    silent = own and message.type in (ClientMessageType.COMMAND_RESULTS, ClientMessageType.DEVICE_INFO_RESPONSE)
    assert len(replies) == (0 if silent else 1), (message, replies)
    assert all(r.type in (ServerMessageType.ERROR, ServerMessageType.HEARTBEAT) for r in replies), replies
    return False


@FUZZ
@given(payload=bad_frames("C->S"))
def test_server_answers_every_bad_first_frame(
    shared_server: tuple[TrioThread, AIPServer, Peer], payload: Payload
) -> None:
    host, server, bystander = shared_server
    host.run(_first_frame_example, server, bystander, payload)


async def _first_frame_example(server: AIPServer, bystander: Peer, payload: Payload) -> None:
    with trio.fail_after(HANG_GUARD):
        async with open_peer(server) as peer:
            if payload.oversized:
                assert (await _send_oversized(peer, payload.data, session_traffic=False)).code == 1009
            else:
                await peer.send_raw(payload.data)
                first = await peer.receive()
                message = payload.client_message()
                if first.type is ServerMessageType.HEARTBEAT:
                    # A valid REGISTER slipped through the mutations: it is confirmed, and pinned as sent.
                    assert message is not None and message.type is ClientMessageType.REGISTER
                    assert message.client_id and server.online_clients()[message.client_id] is message.client_type
                else:
                    assert first.type is ServerMessageType.ERROR and first.error
                    reason = await peer.expect_closed()
                    if payload.binary:
                        assert (reason.code, first.error) == (1003, BINARY_FRAME_ERROR)
                    elif message is None or message.type is not ClientMessageType.REGISTER:
                        assert reason.code == 1008, (reason, first.error)
                    else:  # a REGISTER refused on its merits (target not connected, duplicate, bad metadata)
                        assert reason.code in (1000, 1008), (reason, first.error)
        await _after_example(server, bystander)


def test_strategies_reach_every_kind_of_bad_frame() -> None:
    """The fuzz is only as good as its strategies: every kind of bad frame is generated, and the mutations give
    both frames that still decode (they test the protocol rules) and frames that do not (the error paths)."""
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(payload=bad_frames("C->S"))
    def collect(payload: Payload) -> None:
        seen.add(payload.kind)
        if payload.kind == "mutated":
            seen.add("mutated, valid" if payload.client_message() is not None else "mutated, invalid")
        assert payload.oversized == (payload.kind == "oversized")
        assert payload.binary == (payload.kind == "binary" or payload.data[:1] == b"\x00")

    collect()
    assert seen == {*KINDS, "mutated, valid", "mutated, invalid"}


# --- frames around a close ----------------------------------------------------------------------------------------
#
# trio-websocket (0.12) answers a ping, or refuses an oversized message, even after a close frame went out; wsproto
# then raises LocalProtocolError inside trio-websocket's own reader task (python-trio/trio-websocket#184). These
# tests send exactly that, frame by frame: one peer must never be able to take a server or a manager down with it.


async def _raw_client(server: AIPServer) -> RawWebSocket:
    return await RawWebSocket.connect("127.0.0.1", server.port, f"/ws?token={TOKEN}")


def _late_frame(raw: RawWebSocket, late: str) -> bytes:
    if late == "ping":
        return raw.prepare(Ping(b"late"))
    return raw.prepare(TextMessage(data="x" * (MAX_FRAME + 1)))


@pytest.mark.parametrize("late", ["ping", "oversized message"])
async def test_server_survives_a_frame_that_arrives_while_it_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, late: str
) -> None:
    server = await start_server(nursery)
    async with open_peer(server) as bystander:
        await bystander.register(builders.device_register("bystander", platform="linux", system_info=None))
        raw = await _raw_client(server)
        late_bytes = _late_frame(raw, late)
        await raw.send(BytesMessage(data=b"\x00\x01binary"))  # a binary first frame: ERROR, then close 1003
        assert decode_server_message(await raw.next_text()).error == BINARY_FRAME_ERROR
        assert (await raw.until_close()).code == 1003
        await raw.write_late(late_bytes)  # instead of answering the close
        await raw.until_eof()  # the server stops waiting for our close reply and drops the socket
        await raw.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await bystander.assert_quiet("bystander", ClientType.DEVICE)
        assert server.online_clients() == {"bystander": ClientType.DEVICE}
    async with open_peer(server) as newcomer:
        await newcomer.register(builders.device_register("newcomer", platform="linux", system_info=None))


async def test_server_survives_a_close_and_a_ping_in_one_write(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery)
    async with open_peer(server) as bystander:
        await bystander.register(builders.device_register("bystander", platform="linux", system_info=None))
        raw = await _raw_client(server)
        register = builders.device_register("closer", platform="linux", system_info=None)
        await raw.send(TextMessage(data=encode_text(register)))
        assert decode_server_message(await raw.next_text()).type is ServerMessageType.HEARTBEAT
        ping = raw.prepare(Ping(b"after-close"))
        await raw.write(raw.prepare(CloseConnection(code=1000)) + ping)
        await raw.until_eof()
        await raw.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await bystander.assert_quiet("bystander", ClientType.DEVICE)
        assert server.online_clients() == {"bystander": ClientType.DEVICE}


class _RawAIPPeer:
    """A scripted AIP server on raw frames: it confirms REGISTER and answers DEVICE_INFO and heartbeats. On its
    first connection, once the device is IDLE, it plays ``abuse`` instead."""

    def __init__(self, abuse: Any, *, reject_with: str | None = None) -> None:
        self.abuse = abuse
        self.reject_with = reject_with  # an ERROR frame answering the first REGISTER instead of the confirmation
        self.port = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={TOKEN}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        first = self.connections == 1
        raw = await RawWebSocket.accept(stream)
        assert decode_client_message(await raw.next_text()).type is ClientMessageType.REGISTER
        if first and self.reject_with is not None:
            await raw.send(TextMessage(data=self.reject_with))
            await self.abuse(raw)
            return
        await raw.send(TextMessage(data=CONFIRMATION))
        info = decode_client_message(await raw.next_text())
        assert info.type is ClientMessageType.DEVICE_INFO_REQUEST
        await raw.send(TextMessage(data=patched(DEVICE_INFO_RESPONSE, response_id=info.request_id)))
        if first:
            await self.abuse(raw)
            return
        while True:
            event = await raw.next_event()
            if event is None:
                return
            if isinstance(event, CloseConnection):
                await raw.send(event.response())
                return
            if isinstance(event, TextMessage):
                await raw.send(TextMessage(data=HEARTBEAT_ACK))


async def _late_ping(raw: RawWebSocket) -> None:
    ping = raw.prepare(Ping(b"late"))
    await raw.until_close()
    await raw.write_late(ping)
    await raw.until_eof()


async def _binary_then(raw: RawWebSocket, late: str) -> None:
    late_bytes = _late_frame(raw, late)
    await raw.send(BytesMessage(data=b"\x00\x01binary"))
    await raw.until_close()  # the manager drops the link...
    await raw.write_late(late_bytes)  # ...and gets this while it waits for our close reply
    await raw.until_eof()


async def _close_then_silence(raw: RawWebSocket) -> None:
    """A close frame, then nothing: the TCP connection stays open and the peer never drops it."""
    await raw.send(CloseConnection(code=1000))
    await trio.sleep_forever()


async def _close_and_ping(raw: RawWebSocket) -> None:
    ping = raw.prepare(Ping(b"after-close"))
    await raw.write(raw.prepare(CloseConnection(code=1000)) + ping)
    await raw.until_eof()


@pytest.mark.parametrize(
    "abuse",
    [
        pytest.param(lambda raw: _binary_then(raw, "ping"), id="ping-after-our-close"),
        pytest.param(lambda raw: _binary_then(raw, "oversized message"), id="oversized-after-our-close"),
        pytest.param(_close_and_ping, id="close-and-ping-in-one-write"),
        pytest.param(_close_then_silence, id="close-then-keep-the-socket-open"),
    ],
)
async def test_manager_survives_frames_that_arrive_around_a_close(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, abuse: Any
) -> None:
    peer = _RawAIPPeer(abuse)
    await nursery.start(peer.serve)
    with trio.fail_after(WATCHDOG):
        await _survive_abuse(peer)
    assert peer.connections == 2


async def _survive_abuse(peer: _RawAIPPeer) -> None:
    async with ConstellationDeviceManager(**MANAGER_OPTIONS) as manager:
        with manager.subscribe() as events:
            manager.add_device(_device("dev", peer.url))
            await next_status(events, "dev", DeviceStatus.IDLE)
            idle_at = trio.current_time()
            dropped = await next_status(events, "dev", DeviceStatus.DISCONNECTED)
            assert dropped.reason
            # No hang on a half-closed link: the socket is dropped within CLOSE_GRACE of the close.
            assert trio.current_time() - idle_at <= CLOSE_GRACE
            await next_status(events, "dev", DeviceStatus.IDLE)


async def test_a_final_rejection_stays_final_when_a_frame_arrives_while_the_link_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A duplicate client_id is not retried (UFO retried it), even when the server pings while the manager closes
    the rejected link: the failure to close cleanly must not replace the verdict."""
    peer = _RawAIPPeer(_late_ping, reject_with=DUPLICATE)
    await nursery.start(peer.serve)
    with trio.fail_after(WATCHDOG):
        async with ConstellationDeviceManager(**MANAGER_OPTIONS) as manager:
            assert not await manager.register_device("dev", peer.url, max_retries=5)
            profile = manager.get_device_info("dev")
            assert profile is not None and profile.status is DeviceStatus.FAILED
            assert profile.failure_reason == decode_server_message(DUPLICATE).error
            await trio.sleep(600.0)
    assert peer.connections == 1
