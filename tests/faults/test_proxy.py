"""The fault proxy itself: transparent when healthy, and each fault does exactly what it says.

Real sockets on 127.0.0.1 (port 0): a trio-websocket echo server upstream, trio-websocket clients (and one raw
wsproto client, for fragmented messages) through the proxy. Time-dependent faults run on the MockClock.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable

import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Request, TextMessage

from .proxy import GARBAGE, OVERSIZE_BYTES, Corruption, Direction, FaultProxy, FrameScanner

Message = str | bytes


class EchoServer:
    """Echoes every message back; records what it received and how each connection ended."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.live = 0
        self.received: list[Message] = []
        self.close_codes: list[int] = []
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None)
            self.port = server.port
            task_status.started()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        if request.path == "/reject":
            await request.reject(403, body=b"go away")
            return
        ws = await request.accept()
        self.accepted += 1
        self.live += 1
        self._notify()
        try:
            while True:
                message = await ws.get_message()
                self.received.append(message)
                self._notify()
                await ws.send_message(message)
        except ConnectionClosed as exc:
            assert exc.reason is not None
            self.close_codes.append(exc.reason.code)
        finally:
            self.live -= 1
            self._notify()


@pytest.fixture
async def echo(nursery: trio.Nursery) -> EchoServer:
    server = EchoServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def proxy(nursery: trio.Nursery, echo: EchoServer) -> FaultProxy:
    fault_proxy = FaultProxy("127.0.0.1", echo.port)
    await nursery.start(fault_proxy.serve)
    return fault_proxy


def text_of(size: int) -> str:
    return ("héllo wörld ✓ {json} " * (size // 20 + 1))[:size]


def bytes_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def code_of(exc: ConnectionClosed) -> int:
    assert exc.reason is not None
    return exc.reason.code


# --- transparent pass-through -------------------------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 127, 65_535, 65_536, 300_000]  # 7-bit, 16-bit and 64-bit payload lengths


async def test_text_and_binary_messages_pass_through_unchanged(proxy: FaultProxy, echo: EchoServer) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        for size in SIZES:
            for message in (text_of(size), bytes_of(size)):
                await ws.send_message(message)
                assert await ws.get_message() == message
        (pair,) = proxy.connections
        assert pair.upgraded
        assert pair.frames_to_server == pair.frames_to_client == 2 * len(SIZES)
    assert ws.closed is not None and ws.closed.code == 1000  # the closing handshake went through too
    await proxy.wait_for(lambda: not proxy.connections)
    assert pair.closed and proxy.accepted == 1 and echo.close_codes == [1000]


async def _next_event(stream: trio.SocketStream, conn: WSConnection, pending: deque[Event]) -> Event:
    while not pending:
        data = await stream.receive_some(65_536)
        conn.receive_data(data or None)
        pending.extend(conn.events())
    return pending.popleft()


async def test_fragmented_message_passes_through(proxy: FaultProxy, echo: EchoServer) -> None:
    conn = WSConnection(ConnectionType.CLIENT)
    pending: deque[Event] = deque()
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as stream:
        await stream.send_all(conn.send(Request(host="127.0.0.1", target="/echo")))
        assert isinstance(await _next_event(stream, conn, pending), AcceptConnection)
        parts = ["first fragment ", "x" * 300, " ✓ last"]
        for i, part in enumerate(parts):
            await stream.send_all(conn.send(TextMessage(data=part, message_finished=i == len(parts) - 1)))
        echoed = await _next_event(stream, conn, pending)
        assert isinstance(echoed, TextMessage) and echoed.message_finished
        assert echoed.data == "".join(parts)
        assert echo.received == ["".join(parts)]
        assert proxy.connections[0].frames_to_server == len(parts)
        await stream.send_all(conn.send(CloseConnection(code=1000)))
        assert isinstance(await _next_event(stream, conn, pending), CloseConnection)
    await proxy.wait_for(lambda: not proxy.connections)


async def test_rejected_upgrade_passes_through(proxy: FaultProxy) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_websocket_url(proxy.url_for("/reject")):
            pytest.fail("the upgrade was accepted")
    assert info.value.status_code == 403 and info.value.body == b"go away"


# --- cut and refuse -----------------------------------------------------------------------------------------------


async def test_cut_resets_both_sides_and_refuse_new_fails_reconnects(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    url = proxy.url_for("/echo")
    async with open_websocket_url(url) as ws:
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        proxy.cut(refuse_new=True)
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert code_of(info.value) == 1006  # abnormal closure: no close frame, the socket just died
    await echo.wait_for(lambda: echo.live == 0)
    assert echo.close_codes == [1006]  # the server side was reset too
    await proxy.wait_for(lambda: not proxy.connections)

    # trio-websocket does not notice a reset before its upgrade completes: it fails at its connect timeout.
    with pytest.raises(HandshakeError):
        async with open_websocket_url(url, connect_timeout=5):
            pytest.fail("connected through a proxy refusing connections")
    assert proxy.refused == 1 and echo.accepted == 1

    proxy.restore()
    async with open_websocket_url(url) as ws:
        await ws.send_message("after")
        assert await ws.get_message() == "after"
    assert echo.accepted == 2


async def test_cut_is_a_reset_but_a_peer_close_is_passed_on_as_a_close(proxy: FaultProxy) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as cut_stream:
        await proxy.wait_for(lambda: bool(proxy.connections) and proxy.connections[0].upstream is not None)
        proxy.cut()
        with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not an orderly EOF
            await cut_stream.receive_some(100)
    async with await trio.open_tcp_stream("127.0.0.1", proxy.port) as closed_stream:
        # Not a WebSocket upgrade: the echo server answers with an HTTP error and closes. That FIN reaches the
        # client as an EOF (no reset), after the response.
        await closed_stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while data := await closed_stream.receive_some(4096):
            response += data
        assert response.startswith(b"HTTP/1.1 4")
    await proxy.wait_for(lambda: not proxy.connections)


async def test_one_pair_can_be_cut_and_corrupted_alone(proxy: FaultProxy) -> None:
    url = proxy.url_for("/echo")
    async with open_websocket_url(url) as first, open_websocket_url(url) as second:
        pair_one, pair_two = proxy.connections
        pair_two.corrupt_next_frame(Direction.TO_CLIENT, Corruption.BINARY)
        for ws in (first, second):
            await ws.send_message("same text")
        assert await first.get_message() == "same text"
        assert await second.get_message() == b"same text"
        pair_one.cut()
        with pytest.raises(ConnectionClosed):
            await first.get_message()
        await second.send_message("still here")
        assert await second.get_message() == "still here"
        assert proxy.connections == [pair_two]


async def test_closed_port_refuses_at_once_and_reopens_on_the_same_port(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    url = proxy.url_for("/echo")
    async with open_websocket_url(url) as ws:
        proxy.listening = False
        await proxy.wait_for(lambda: not proxy.port_open)
        start = trio.current_time()
        with pytest.raises(HandshakeError) as info:
            async with open_websocket_url(url):
                pytest.fail("connected to a closed port")
        assert isinstance(info.value.__cause__, OSError)  # ECONNREFUSED ...
        assert trio.current_time() == start  # ... at once, not at a timeout
        await ws.send_message("live links are unaffected")
        assert await ws.get_message() == "live links are unaffected"
        proxy.restore()
        await proxy.wait_for(lambda: proxy.port_open)
        async with open_websocket_url(url) as again:
            await again.send_message("reopened")
            assert await again.get_message() == "reopened"
    assert proxy.accepted == 2


async def test_upstream_down_resets_the_client(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    dead_port = listener.socket.getsockname()[1]
    await listener.aclose()
    proxy.upstream_port = dead_port
    with pytest.raises(HandshakeError):
        async with open_websocket_url(proxy.url_for("/echo"), connect_timeout=5):
            pytest.fail("connected to a dead upstream")
    await proxy.wait_for(lambda: not proxy.connections)
    proxy.upstream_port = echo.port  # the server "came back", elsewhere
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        await ws.send_message("back")
        assert await ws.get_message() == "back"


# --- black hole, delay, stalled handshake (virtual time) ----------------------------------------------------------


async def test_blackhole_passes_nothing_keeps_sockets_open_and_loses_nothing(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        await ws.send_message("warm-up")
        assert await ws.get_message() == "warm-up"
        proxy.blackhole = True
        await ws.send_message("into the void")
        with trio.move_on_after(100) as waited:
            await ws.get_message()
        assert waited.cancelled_caught
        assert ws.closed is None and echo.received == ["warm-up"] and echo.live == 1
        (pair,) = proxy.connections
        assert pair.frames_to_server == 1
        proxy.blackhole = False
        assert await ws.get_message() == "into the void"  # held back, not dropped


async def test_blackhole_on_one_pair_leaves_the_others_alone(
    proxy: FaultProxy, autojump_clock: trio.testing.MockClock
) -> None:
    url = proxy.url_for("/echo")
    async with open_websocket_url(url) as quiet, open_websocket_url(url) as loud:
        proxy.connections[0].blackhole = True
        await quiet.send_message("unheard")
        await loud.send_message("heard")
        assert await loud.get_message() == "heard"
        with trio.move_on_after(100) as waited:
            await quiet.get_message()
        assert waited.cancelled_caught
        proxy.restore()
        assert await quiet.get_message() == "unheard"


async def test_delay_holds_each_chunk_in_virtual_time(
    proxy: FaultProxy, autojump_clock: trio.testing.MockClock
) -> None:
    proxy.delay = 3.0
    start = trio.current_time()
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        assert trio.current_time() - start == 6.0  # upgrade request, then response: one chunk each way
        sent = trio.current_time()
        await ws.send_message("slow")
        assert await ws.get_message() == "slow"
        assert trio.current_time() - sent == 6.0
        proxy.delay = 0.0
        sent = trio.current_time()
        await ws.send_message("fast")
        assert await ws.get_message() == "fast"
        assert trio.current_time() == sent


async def test_stalled_handshake_never_completes_and_abandoned_pairs_end(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    proxy.stall_handshake = True
    with trio.move_on_after(100) as waited:
        async with open_websocket_url(proxy.url_for("/echo"), connect_timeout=math.inf):
            pytest.fail("the upgrade completed through a stalled proxy")
    assert waited.cancelled_caught
    # The client gave up and closed its socket: the stalled pair notices and ends without ever going upstream.
    await proxy.wait_for(lambda: not proxy.connections)
    assert proxy.accepted == 1 and echo.accepted == 0


async def test_released_handshake_completes(
    proxy: FaultProxy, echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    proxy.stall_handshake = True
    got: list[Message] = []

    async def client() -> None:
        async with open_websocket_url(proxy.url_for("/echo"), connect_timeout=math.inf) as ws:
            await ws.send_message("through at last")
            got.append(await ws.get_message())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        await proxy.wait_for(lambda: len(proxy.connections) == 1)
        (pair,) = proxy.connections
        with trio.move_on_after(100) as waited:
            await proxy.wait_for(lambda: pair.upgraded)
        assert waited.cancelled_caught and pair.stalled and pair.upstream is None
        proxy.release_handshakes()
        assert not proxy.stall_handshake
    assert got == ["through at last"] and echo.accepted == 1


# --- frame corruption ---------------------------------------------------------------------------------------------

HEARTBEAT = json.dumps({"type": "heartbeat", "client_id": "dev-1", "status": "ok", "padding": "x" * 200})


def assert_garbage_for(received: Message, original: str) -> None:
    assert isinstance(received, str) and len(received) == len(original) and received != original
    assert received.startswith(GARBAGE.decode())
    with pytest.raises(json.JSONDecodeError):
        json.loads(received)


async def test_garbage_to_client_replaces_one_frame(proxy: FaultProxy, echo: EchoServer) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        proxy.corrupt_next_frame(Direction.TO_CLIENT, Corruption.GARBAGE)
        proxy.corrupt_next_frame(Direction.TO_CLIENT, Corruption.BINARY)  # queued: the frame after
        for _ in range(3):
            await ws.send_message(HEARTBEAT)
        assert_garbage_for(await ws.get_message(), HEARTBEAT)
        assert await ws.get_message() == HEARTBEAT.encode()
        assert await ws.get_message() == HEARTBEAT  # one-shot: the third frame is intact
        assert echo.received == [HEARTBEAT] * 3  # the other direction was never touched


async def test_garbage_to_server_is_remasked(proxy: FaultProxy, echo: EchoServer) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        proxy.corrupt_next_frame(Direction.TO_SERVER, Corruption.GARBAGE)
        await ws.ping(b"control frames are never corrupted")  # waits for its pong, so the ping went through intact
        await ws.send_message(HEARTBEAT)
        assert_garbage_for(await ws.get_message(), HEARTBEAT)
        assert_garbage_for(echo.received[0], HEARTBEAT)


async def test_binary_to_server(proxy: FaultProxy, echo: EchoServer) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        proxy.corrupt_next_frame(Direction.TO_SERVER, Corruption.BINARY)
        await ws.send_message(HEARTBEAT)
        assert await ws.get_message() == HEARTBEAT.encode()
        assert echo.received == [HEARTBEAT.encode()]


@pytest.mark.parametrize("direction", list(Direction))
async def test_truncate_ends_the_connection_mid_frame(
    proxy: FaultProxy, echo: EchoServer, direction: Direction
) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        proxy.corrupt_next_frame(direction, Corruption.TRUNCATE)
        await ws.send_message(HEARTBEAT)
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert code_of(info.value) == 1006
    await echo.wait_for(lambda: echo.live == 0)
    assert echo.close_codes == [1006]
    assert echo.received == ([HEARTBEAT] if direction is Direction.TO_CLIENT else [])
    await proxy.wait_for(lambda: not proxy.connections)


@pytest.mark.parametrize("direction", list(Direction))
async def test_oversize_trips_the_receivers_message_limit(
    proxy: FaultProxy, echo: EchoServer, direction: Direction
) -> None:
    async with open_websocket_url(proxy.url_for("/echo")) as ws:
        proxy.corrupt_next_frame(direction, Corruption.OVERSIZE)
        await ws.send_message(HEARTBEAT)
        with pytest.raises(ConnectionClosed) as info:
            await ws.get_message()
        assert code_of(info.value) == 1009  # Message Too Big, from whichever side received it
    await echo.wait_for(lambda: echo.live == 0)
    assert echo.close_codes == [1009]  # the client, too, closes with 1009 when it is the receiver


# --- lifecycle ----------------------------------------------------------------------------------------------------


async def test_cancelling_serve_closes_every_pair_and_serve_can_restart(
    echo: EchoServer, autojump_clock: trio.testing.MockClock
) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    outcomes: list[str] = []

    async def hold_open(url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_websocket_url(url, connect_timeout=5) as ws:
                outcomes.append("open")
                task_status.started()
                await ws.get_message()
        except ConnectionClosed as exc:
            outcomes.append(f"closed {code_of(exc)}")
        except HandshakeError:
            outcomes.append("handshake failed")

    async with trio.open_nursery() as clients:
        async with trio.open_nursery() as serving:
            await serving.start(proxy.serve)
            url = proxy.url_for("/echo")
            await clients.start(hold_open, url)
            await clients.start(hold_open, url)
            proxy.connections[1].blackhole = True
            proxy.stall_handshake = True
            clients.start_soon(hold_open, url)
            await proxy.wait_for(lambda: len(proxy.connections) == 3)
            pairs = proxy.connections
            assert [p.stalled for p in pairs] == [False, False, True]
            serving.cancel_scope.cancel()
        # ``serve`` has returned, so its nursery (every pair and forwarder task) is gone.
        assert proxy.connections == []
        assert all(p.closed for p in pairs)
        assert all(s.socket.fileno() == -1 for p in pairs for s in (p.client, p.upstream) if s is not None)
    assert sorted(outcomes) == ["closed 1006", "closed 1006", "handshake failed", "open", "open"]
    await echo.wait_for(lambda: echo.live == 0)

    old_port = proxy.port
    proxy.restore()  # stall_handshake is still on
    async with trio.open_nursery() as serving:
        assert await serving.start(proxy.serve) == old_port  # so clients' URLs stay valid across a proxy restart
        async with open_websocket_url(url) as ws:
            await ws.send_message("again")
            assert await ws.get_message() == "again"
        serving.cancel_scope.cancel()


# --- the frame scanner on arbitrary chunking ----------------------------------------------------------------------

HEAD = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n"
KEY = b"\x37\xfa\x21\x3d"


def build_frame(first: int, payload: bytes, key: bytes = KEY) -> bytes:
    """An independent encoder (RFC 6455 §5.2) to check the scanner against."""
    n = len(payload)
    mask_bit = 0x80 if key else 0
    if n < 126:
        head = bytes([first, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if key else payload
    return head + key + masked


payload_lengths = st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 127, 65_535, 65_536, 70_000]))
# (opcode of the message, payload length of each fragment); pings are single short frames
messages = st.lists(
    st.tuples(st.sampled_from([0x1, 0x2, 0x9]), st.lists(payload_lengths, min_size=1, max_size=3)),
    min_size=1,
    max_size=4,
)


def frames_of(spec: list[tuple[int, list[int]]]) -> list[tuple[int, bytes]]:
    """``(first byte, payload)`` per frame, fragmented messages as text/binary then continuation frames."""
    out: list[tuple[int, bytes]] = []
    for opcode, lengths in spec:
        if opcode == 0x9:
            out.append((0x80 | 0x9, b"p" * min(lengths[0], 125)))
            continue
        for i, length in enumerate(lengths):
            fin = 0x80 if i == len(lengths) - 1 else 0
            out.append((fin | (opcode if i == 0 else 0x0), bytes(j % 251 for j in range(length))))
    return out


def feed_in_chunks(scanner: FrameScanner, stream: bytes, sizes: list[int]) -> tuple[bytes, bool]:
    out = bytearray()
    position = 0
    for size in sizes * (len(stream) // max(1, sum(sizes)) + 1) + [len(stream)]:
        chunk = stream[position : position + size]
        position += size
        if chunk:
            forwarded, reset = scanner.feed(chunk)
            out += forwarded
            if reset:
                return bytes(out), True
        if position >= len(stream):
            break
    return bytes(out), False


chunk_sizes = st.lists(st.integers(1, 70_000), min_size=1, max_size=8)


@settings(deadline=None, max_examples=60)
@given(spec=messages, sizes=chunk_sizes)
def test_scanner_forwards_any_chunking_byte_for_byte(spec: list[tuple[int, list[int]]], sizes: list[int]) -> None:
    frames = frames_of(spec)
    stream = HEAD + b"".join(build_frame(first, payload) for first, payload in frames)
    scanner = FrameScanner(Direction.TO_SERVER, lambda: None)
    assert feed_in_chunks(scanner, stream, sizes) == (stream, False)
    assert scanner.upgraded and scanner.frames == len(frames)


def one_shot(mode: Corruption) -> Callable[[], Corruption | None]:
    modes = [mode]
    return lambda: modes.pop() if modes else None


@settings(deadline=None, max_examples=60)
@given(spec=messages, sizes=chunk_sizes, mode=st.sampled_from([Corruption.GARBAGE, Corruption.BINARY]))
def test_scanner_corrupts_exactly_the_first_data_frame(
    spec: list[tuple[int, list[int]]], sizes: list[int], mode: Corruption
) -> None:
    frames = frames_of(spec)
    stream = HEAD + b"".join(build_frame(first, payload) for first, payload in frames)
    expected = list(frames)
    index = next((i for i, (first, _) in enumerate(frames) if first & 0x0F in (0x1, 0x2)), None)
    if index is not None:
        first, payload = frames[index]
        if mode is Corruption.GARBAGE:
            expected[index] = (first, (GARBAGE * len(payload))[: len(payload)])
        else:
            expected[index] = ((first & 0xF0) | 0x2, payload)
    scanner = FrameScanner(Direction.TO_SERVER, one_shot(mode))
    out = HEAD + b"".join(build_frame(first, payload) for first, payload in expected)
    assert feed_in_chunks(scanner, stream, sizes) == (out, False)
    assert scanner.frames == len(frames)


@settings(deadline=None, max_examples=60)
@given(spec=messages, sizes=chunk_sizes)
def test_scanner_truncates_inside_the_first_data_frame(spec: list[tuple[int, list[int]]], sizes: list[int]) -> None:
    frames = frames_of(spec)
    encoded = [build_frame(first, payload) for first, payload in frames]
    stream = HEAD + b"".join(encoded)
    index = next((i for i, (first, _) in enumerate(frames) if first & 0x0F in (0x1, 0x2)), None)
    out, reset = feed_in_chunks(FrameScanner(Direction.TO_SERVER, one_shot(Corruption.TRUNCATE)), stream, sizes)
    if index is None:
        assert (out, reset) == (stream, False)
        return
    start = len(HEAD) + sum(len(f) for f in encoded[:index])
    assert reset and stream.startswith(out) and start < len(out) < start + len(encoded[index])


def test_scanner_leaves_a_rejected_upgrade_untouched() -> None:
    response = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\n\x81\x05hello"
    scanner = FrameScanner(Direction.TO_CLIENT, one_shot(Corruption.GARBAGE))
    assert scanner.feed(response) == (response, False)
    assert scanner.frames == 0 and not scanner.upgraded


def test_oversize_is_padded_past_the_limit() -> None:
    scanner = FrameScanner(Direction.TO_CLIENT, one_shot(Corruption.OVERSIZE))
    head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    out, reset = scanner.feed(head + build_frame(0x81, b'{"a": 1}', key=b""))
    payload = out[len(head) + 10 :]
    assert not reset and out[len(head) : len(head) + 2] == b"\x81\x7f"
    assert int.from_bytes(out[len(head) + 2 : len(head) + 10], "big") == len(payload) == OVERSIZE_BYTES
    assert json.loads(payload) == {"a": 1}
