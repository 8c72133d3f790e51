"""The client side of links (``transport/client.py``) against scripted servers.

Each test runs a raw TCP listener on 127.0.0.1, port 0, whose connections the test drives itself through a
server-side wsproto connection (:class:`Peer`), so it decides every byte the client gets: fragments, pings,
close frames, protocol errors, HTTP answers, silence. Every test with I/O runs on trio's autojump clock:
durations are asserted in virtual time, and a step that should not wait fails at :data:`GUARD` instead of
hanging. Megabytes sent to a peer that does not read are the one exception: they are read back without any
deadline (:func:`drain`), since the kernel moves them at its own pace.

After each scenario the client's socket is gone: the peer reads until EOF (and checks every frame the client
sent on the way, :meth:`Peer.wire`), and this process holds no socket connected to the test server any more.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar, cast

import pytest
import trio
import trio.testing
import trustme
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)
from wsproto.frame_protocol import XorMaskerSimple

from galaxy_trio.aip import ClientType, builders, encode_text
from galaxy_trio.errors import BinaryFrame, ConnectFailed, HandshakeRejected, LinkClosed
from galaxy_trio.transport import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, LinkState, open_link
from galaxy_trio.transport.client import _parse

from ._wsserver import GUARD, TOKEN, Peer, Server, client_sockets, connect, serving

#: A message far larger than what the socket buffers of a peer that does not read can hold (Linux: the client's
#: send buffer grows to at most 4 MiB; :func:`serving` fixes the server's receive buffer at 128 KiB).
HUGE = 16 * 1024 * 1024

T = TypeVar("T")


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serving() as running:
        yield running


class Call(Generic[T]):
    """``fn()`` in a task of its own in ``nursery``, started now; :meth:`result` waits for its outcome."""

    def __init__(self, nursery: trio.Nursery, fn: Callable[[], Awaitable[T]]) -> None:
        self.done = trio.Event()
        self._value: T | None = None
        self._error: Exception | None = None
        nursery.start_soon(self._run, fn)

    async def _run(self, fn: Callable[[], Awaitable[T]]) -> None:
        try:
            self._value = await fn()
        except Exception as exc:
            self._error = exc
        finally:
            self.done.set()

    async def result(self) -> T:
        with trio.fail_after(GUARD):
            await self.done.wait()
        if self._error is not None:
            raise self._error
        return cast(T, self._value)


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task of this trio run."""
    tasks, pending = [], [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        tasks.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return tasks


def elapsed_since(start: float) -> float:
    return trio.current_time() - start


# --- The upgrade and messages ---------------------------------------------------------------------------------


async def test_upgrade_text_both_ways_and_a_closing_handshake(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """The upgrade asks for the URL's resource with its query, Host with the port; text goes both ways (an AIP
    message through ``send`` too); leaving ``open_link`` sends close 1000, waits for the peer's answer (late by
    one virtual second), and only then hangs up."""
    message = builders.heartbeat("client-1", ClientType.CONSTELLATION)

    async def serve() -> None:
        peer = await server.accept()
        request = await peer.accept()
        assert request.host == f"127.0.0.1:{server.port}"
        assert request.target == f"/ws?token={TOKEN}&device=d1"
        assert await peer.next_message() == "hello from the client ✓"
        assert await peer.next_message() == encode_text(message)
        await peer.send(TextMessage("hello from the server ✓"))
        close = await peer.next_event()
        assert isinstance(close, CloseConnection) and close.code == 1000
        await trio.sleep(1.0)
        await peer.send(close.response())
        assert await peer.until_eof() == [
            ("text", "hello from the client ✓"),
            ("text", encode_text(message)),
            ("close", 1000, ""),
        ]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_link(server.url(f"/ws?token={TOKEN}&device=d1")) as link:
            await link.send_text("hello from the client ✓")
            await link.send(message)
            assert await link.receive() == "hello from the server ✓"
            assert not link.closed and link.state is LinkState.OPEN
            start = trio.current_time()
        assert elapsed_since(start) == pytest.approx(1.0, abs=1e-9)
        assert link.closed and link.state is LinkState.DROPPED


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "resource"),
    [
        ("ws://example.test/ws?token=t&x=1", "example.test", 80, "example.test", "/ws?token=t&x=1"),
        ("ws://example.test:80/ws", "example.test", 80, "example.test", "/ws"),
        ("wss://example.test/ws", "example.test", 443, "example.test", "/ws"),
        ("wss://example.test:443", "example.test", 443, "example.test", "/"),
        ("wss://example.test:8443/a/b?q#fragment", "example.test", 8443, "example.test:8443", "/a/b?q"),
        ("ws://example.test:443/", "example.test", 443, "example.test:443", "/"),
        ("ws://[::1]:8080/ws?token=t", "::1", 8080, "[::1]:8080", "/ws?token=t"),
        ("ws://user:pw@example.test:81/", "example.test", 81, "example.test:81", "/"),
    ],
)
def test_host_header_and_resource_from_the_url(url: str, host: str, port: int, host_header: str, resource: str) -> None:
    """Host carries the port only when it is not the scheme's default; the resource is the path (``/`` when
    empty) and the query; IPv6 hosts are bracketed; no fragment, no user info is sent."""
    target = _parse(url)
    assert (target.host, target.port, target.host_header, target.resource) == (host, port, host_header, resource)
    assert target.secure is url.startswith("wss:")


async def test_a_frame_in_the_same_write_as_the_101_is_not_lost(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """Bytes after the 101 in one TCP segment belong to the WebSocket: the first message is there."""

    async def serve() -> None:
        peer = await server.accept()
        await peer.accept(TextMessage("right behind the 101"))
        assert await peer.until_eof() == [("close", 1000, "")]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_link(server.url()) as link:
            assert await link.receive() == "right behind the 101"


async def test_messages_in_one_write_are_received_one_by_one(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """Several frames in one TCP segment: each receive returns the next one, a binary one in the middle is
    reported (BinaryFrame) without losing what follows, and the link stays open."""
    link, peer = await connect(server)
    await peer.send(TextMessage("one"), TextMessage("two"), BytesMessage(b"12345"), TextMessage("three"))
    assert await link.receive() == "one"
    assert await link.receive() == "two"
    with pytest.raises(BinaryFrame) as binary:
        await link.receive()
    assert binary.value.size == 5
    assert await link.receive() == "three"
    assert not link.closed
    await link.aclose()
    assert await peer.until_eof() == [("close", 1000, "")]


async def test_a_fragmented_message_arrives_whole_with_a_ping_in_between(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A text message in four frames (TEXT, CONTINUATION…) is one string, delivered only with its last
    fragment; a ping between fragments is answered at once without disturbing the message."""
    link, peer = await connect(server)
    fragments = ["Hél", "lo, ", "wö", "rld"]
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        for i, fragment in enumerate(fragments[:-1]):
            await peer.send(TextMessage(fragment, message_finished=False))
            if i == 1:
                await peer.send(Ping(b"mid-message"))
                assert await peer.next_event() == Pong(b"mid-message")
            await trio.testing.wait_all_tasks_blocked()
            assert not receiving.done.is_set()
        await peer.send(TextMessage(fragments[-1], message_finished=True))
        assert await receiving.result() == "Héllo, wörld"
    await link.aclose()
    assert await peer.until_eof() == [("pong", b"mid-message"), ("close", 1000, "")]


async def test_a_message_dribbled_byte_by_byte_arrives_whole(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """One frame written a byte at a time (multi-byte UTF-8 characters split too), the client reading each
    byte on its own: the message comes out once, whole."""
    link, peer = await connect(server)
    text = "ünïcødé, split everywhere ✓" * 3
    data = peer.encode(TextMessage(text))
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        for i in range(len(data) - 1):
            await peer.write(data[i : i + 1])
            await trio.testing.wait_all_tasks_blocked()
            assert not receiving.done.is_set()
        await peer.write(data[-1:])
        assert await receiving.result() == text
    await link.aclose()
    assert await peer.until_eof() == [("close", 1000, "")]


async def test_a_message_larger_than_one_read_arrives_whole(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A 200 KiB message takes many socket reads (16 KiB each); it arrives as one string."""
    link, peer = await connect(server)
    text = "0123456789abcdef" * (200 * 64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.send, TextMessage(text))  # more than the socket buffers hold: it waits for us
        assert await link.receive() == text
    await link.aclose()
    assert await peer.until_eof() == [("close", 1000, "")]


async def test_a_ping_is_answered_while_the_caller_receives(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A ping from the server gets a pong with the same payload, sent by the task waiting in receive(),
    which goes on waiting for the next message."""
    link, peer = await connect(server)
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(Ping(b"are you there?"))
        assert await peer.next_event() == Pong(b"are you there?")
        await trio.testing.wait_all_tasks_blocked()
        assert not receiving.done.is_set()
        await peer.send(TextMessage("after the ping"))
        assert await receiving.result() == "after the ping"
    await link.aclose()
    assert await peer.until_eof() == [("pong", b"are you there?"), ("close", 1000, "")]


async def test_concurrent_sends_never_interleave(server: Server, autojump_clock: trio.testing.MockClock) -> None:
    """Two tasks sending huge messages at once (the first blocked mid-frame on a peer that does not read yet):
    the peer gets two whole frames, one after the other."""
    link, peer = await connect(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.send_text, "a" * HUGE)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(link.send_text, "b" * HUGE)
        await trio.testing.wait_all_tasks_blocked()
        await drain(peer, 2 * (14 + HUGE))  # a frame: 2-byte head, 8-byte length, 4-byte mask, payload
    assert peer.wire() == [("text", "a" * HUGE), ("text", "b" * HUGE)]
    with trio.CancelScope() as scope:
        scope.cancel()  # no need to wait for an answer
        await link.aclose()
    assert (await peer.until_eof())[2:] == [("close", 1000, "")]


async def test_an_open_link_runs_no_task_of_its_own(server: Server, autojump_clock: trio.testing.MockClock) -> None:
    """Opening a link starts no task (no reader, no nursery), and a second concurrent receive is refused."""
    before = len(all_tasks())
    link, peer = await connect(server)
    assert len(all_tasks()) == before
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await link.receive()
        await peer.send(TextMessage("for the first receiver"))
        assert await receiving.result() == "for the first receiver"
    await link.aclose()
    assert len(all_tasks()) == before
    assert await peer.until_eof() == [("close", 1000, "")]


# --- The link ending ------------------------------------------------------------------------------------------


async def test_the_servers_close_is_reported_and_answered(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """The server closes with (4001, "bye"): receive raises LinkClosed with that code and reason, the client
    answers with the same close frame and hangs up at once; later sends and receives raise LinkClosed,
    ``closed`` is True, aclose is a no-op."""
    link, peer = await connect(server)
    await peer.send(CloseConnection(4001, "bye"))
    with pytest.raises(LinkClosed) as closed:
        await link.receive()
    assert (closed.value.code, closed.value.reason) == (4001, "bye")
    assert link.closed and link.state is LinkState.DROPPED  # answered and hung up at once
    assert await peer.until_eof() == [("close", 4001, "bye")]
    with pytest.raises(LinkClosed) as late_send:
        await link.send_text("too late")
    assert late_send.value.code == 4001
    with pytest.raises(LinkClosed):
        await link.receive()
    start = trio.current_time()
    await link.aclose()
    assert elapsed_since(start) == 0
    assert peer.wire() == [("close", 4001, "bye")]


@pytest.mark.parametrize("after", ["text", "ping"])
async def test_nothing_after_the_servers_close_frame_is_delivered(
    server: Server, autojump_clock: trio.testing.MockClock, after: str
) -> None:
    """Frames a server sends after its close frame (in the same segment) are dropped: receive reports the close,
    now and later, and the client answers nothing but the close."""
    link, peer = await connect(server)
    # Encoded while the server's side is still open: wsproto would refuse anything after the close.
    trailer = peer.encode(TextMessage("after the close") if after == "text" else Ping(b"after the close"))
    await peer.write(peer.encode(TextMessage("before"), CloseConnection(4002, "done")) + trailer)
    assert await link.receive() == "before"
    for _ in range(2):
        with pytest.raises(LinkClosed) as closed:
            await link.receive()
        assert closed.value.code == 4002
    assert await peer.until_eof() == [("close", 4002, "done")]


@pytest.mark.parametrize("how", ["FIN", "RST"])
async def test_a_server_that_hangs_up_without_a_close_frame(
    server: Server, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """The TCP connection ends under an idle receive (EOF or reset): LinkClosed (1006, abnormal closure),
    and the client closes its socket at once, without writing anything."""
    link, peer = await connect(server)
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        await trio.testing.wait_all_tasks_blocked()
        if how == "FIN":
            await peer.stream.aclose()
        else:
            await peer.reset()
        with pytest.raises(LinkClosed) as closed:
            await receiving.result()
    assert closed.value.code == 1006
    assert link.closed
    assert client_sockets(server.port) == []


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(b"\x81\x02\xff\xfe", 1007, id="invalid UTF-8"),
        pytest.param(b"\x83\x00", 1002, id="reserved opcode"),
        pytest.param(b"\x81\x82abcd" + bytes(x ^ y for x, y in zip(b"hi", b"ab", strict=True)), 1002, id="masked"),
        pytest.param(b"\x80\x02hi", 1002, id="continuation without a start"),
    ],
)
async def test_a_protocol_error_closes_with_its_code(
    server: Server, autojump_clock: trio.testing.MockClock, frame: bytes, code: int
) -> None:
    """A frame wsproto cannot accept: receive raises LinkClosed with the matching close code, which the client
    also sends before it hangs up."""
    link, peer = await connect(server)
    await peer.write(frame)
    with pytest.raises(LinkClosed) as closed:
        await link.receive()
    assert closed.value.code == code
    wire = await peer.until_eof()
    assert [frame[:2] for frame in wire] == [("close", code)]


@pytest.mark.parametrize("fragments", [[b"0123456789"], [b"0123", b"456789"]], ids=["one frame", "fragmented"])
async def test_a_binary_message_raises_binary_frame_with_its_size(
    server: Server, autojump_clock: trio.testing.MockClock, fragments: list[bytes]
) -> None:
    """A binary message (whole or fragmented) is reported with its full size, once; the link stays open."""
    link, peer = await connect(server)
    for i, fragment in enumerate(fragments):
        await peer.send(BytesMessage(fragment, message_finished=i == len(fragments) - 1))
    await peer.send(TextMessage("text again"))
    with pytest.raises(BinaryFrame) as binary:
        await link.receive()
    assert binary.value.size == 10
    assert await link.receive() == "text again"
    assert not link.closed
    await link.aclose()
    assert await peer.until_eof() == [("close", 1000, "")]


@pytest.mark.parametrize(
    "oversized",
    [
        pytest.param([TextMessage("x" * 101)], id="one text frame"),
        pytest.param([TextMessage("x" * 60, message_finished=False)] * 2, id="fragments, never finished"),
        pytest.param([BytesMessage(b"x" * 101)], id="binary"),
    ],
)
async def test_an_oversized_message_closes_1009(
    server: Server, autojump_clock: trio.testing.MockClock, oversized: list[Event]
) -> None:
    """With max_message_size=100, a message of exactly 100 passes; one over it (in one frame, or in fragments
    whose end never comes) makes the client send close 1009, raise LinkClosed(1009) and hang up at once, and
    a message right behind it is never delivered."""
    link, peer = await connect(server, max_message_size=100)
    await peer.send(TextMessage("y" * 100))
    assert await link.receive() == "y" * 100
    await peer.send(*oversized, *([TextMessage("behind")] if len(oversized) == 1 else []))
    start = trio.current_time()
    with pytest.raises(LinkClosed) as closed:
        await link.receive()
    assert closed.value.code == 1009
    assert elapsed_since(start) == 0
    assert await peer.until_eof() == [("close", 1009, "message larger than 100 bytes")]
    with pytest.raises(LinkClosed) as again:
        await link.receive()
    assert again.value.code == 1009


# --- Our side closing -----------------------------------------------------------------------------------------


async def test_aclose_against_a_silent_peer_gives_up_after_close_grace(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A peer that never answers the close: aclose returns after exactly CLOSE_GRACE and hangs up; a second
    aclose returns at once and writes nothing."""
    link, peer = await connect(server)
    start = trio.current_time()
    await link.aclose()
    assert elapsed_since(start) == pytest.approx(CLOSE_GRACE, abs=1e-9)
    assert link.closed
    assert await peer.until_eof() == [("close", 1000, "")]
    start = trio.current_time()
    await link.aclose()
    assert elapsed_since(start) == 0
    assert peer.wire() == [("close", 1000, "")]


async def test_aclose_when_the_caller_is_cancelled_still_sends_the_close_and_is_bounded(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """From an already cancelled scope, aclose still sends its close frame, does not wait for an answer past
    CANCELLED_CLOSE_GRACE, and hangs up."""
    link, peer = await connect(server)
    with trio.CancelScope() as scope:
        scope.cancel()
        start = trio.current_time()
        await link.aclose(4000, "going away")
        took = elapsed_since(start)
    assert took <= CANCELLED_CLOSE_GRACE
    assert link.closed
    assert await peer.until_eof() == [("close", 4000, "going away")]


@pytest.mark.parametrize("cancelled", [False, True], ids=["caller running", "caller cancelled"])
async def test_aclose_behind_a_stuck_send_gives_up_after_its_grace(
    server: Server, autojump_clock: trio.testing.MockClock, cancelled: bool
) -> None:
    """A huge send is stuck on a peer that does not read (holding the send lock): aclose waits for it exactly
    CLOSE_GRACE (CANCELLED_CLOSE_GRACE from a cancelled scope), then drops the socket; the stuck send raises
    LinkClosed; no close frame is written after the half-sent frame."""
    link, peer = await connect(server)
    async with trio.open_nursery() as nursery:
        sending = Call(nursery, lambda: link.send_text("a" * HUGE))
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            if cancelled:
                scope.cancel()
            start = trio.current_time()
            await link.aclose()
            took = elapsed_since(start)
        with pytest.raises(LinkClosed):
            await sending.result()
    assert took == pytest.approx(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, abs=1e-9)
    assert_cut_frame_only(await drain(peer), HUGE)


async def test_a_long_close_reason_is_clipped_to_fit_a_close_frame(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A reason longer than a close frame holds (123 bytes of UTF-8) is cut on a character boundary, marked
    with "...", and the close goes out with the given code."""
    link, peer = await connect(server)
    with trio.CancelScope() as scope:
        scope.cancel()  # no need to wait for an answer
        await link.aclose(1008, "é" * 100)
    wire = await peer.until_eof()
    assert wire == [("close", 1008, "é" * 60 + "...")]
    assert len(wire[0][2].encode()) == 123


async def test_aclose_while_another_task_receives(server: Server, autojump_clock: trio.testing.MockClock) -> None:
    """With a task waiting in receive(), aclose sends the close, does not wait (that task would see the answer)
    and hangs up; the receiving task ends with LinkClosed carrying our code."""
    link, peer = await connect(server)
    async with trio.open_nursery() as nursery:
        receiving = Call(nursery, link.receive)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await link.aclose()
        assert elapsed_since(start) == 0
        with pytest.raises(LinkClosed) as closed:
            await receiving.result()
    assert closed.value.code == 1000
    assert await peer.until_eof() == [("close", 1000, "")]


async def test_a_send_cancelled_before_writing_sends_nothing_and_keeps_the_link(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A send from an already cancelled scope writes nothing: the link stays open and the next send is the
    first frame the peer sees."""
    link, peer = await connect(server)
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.send_text("never sent")
    assert scope.cancelled_caught
    assert not link.closed
    await link.send_text("sent")
    assert await peer.next_message() == "sent"
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.aclose()
    assert await peer.until_eof() == [("text", "sent"), ("close", 1000, "")]


async def test_a_send_cut_by_cancellation_ends_the_link_with_no_further_byte(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A huge send to a peer that does not read, cancelled by its deadline part-way through the frame: the link
    is over (later sends and receives raise LinkClosed), aclose returns at once, and the peer gets the cut
    frame and then EOF: not a byte more, not even a close frame."""
    link, peer = await connect(server)
    with trio.move_on_after(1.0) as deadline:
        await link.send_text("a" * HUGE)
    assert deadline.cancelled_caught
    assert link.closed and link.state is LinkState.CLOSING  # over, but the socket is only dropped by aclose
    with pytest.raises(LinkClosed) as late:
        await link.send_text("after the cut")
    assert (late.value.code, late.value.reason) == (None, "a send was interrupted")
    with pytest.raises(LinkClosed):
        await link.receive()
    start = trio.current_time()
    await link.aclose()
    assert elapsed_since(start) == 0 and link.state is LinkState.DROPPED
    assert_cut_frame_only(await drain(peer), HUGE)


async def drain(peer: Peer, size: int | None = None) -> bytes:
    """What the client sent after the upgrade, read without any deadline (megabytes may still be on their way
    through the loopback, at the kernel's pace: no virtual time may pass meanwhile): ``size`` bytes, or without
    ``size`` everything until EOF, the client then keeping no socket."""
    while size is None or len(peer.inbound) < size:
        data = await peer.stream.receive_some(1 << 20)
        if not data:
            assert size is None, "EOF before the expected bytes"
            assert client_sockets(peer.port) == []
            break
        peer.inbound += data
    return bytes(peer.inbound)


def assert_cut_frame_only(data: bytes, size: int) -> None:
    """``data`` is the start of one masked text frame of ``size`` "a"s, cut short, and nothing else: every byte
    after the 14-byte header unmasks to "a" (a close frame or any other byte behind it would not)."""
    assert data[:2] == b"\x81\xff" and struct.unpack("!Q", data[2:10])[0] == size
    payload = data[14:]
    assert 0 < len(payload) < size
    assert XorMaskerSimple(data[10:14]).process(payload) == b"a" * len(payload)


# --- Failing to connect ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["FIN", "RST"])
async def test_a_server_that_hangs_up_before_the_101_fails_at_once(
    server: Server, autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """The server reads the upgrade request and hangs up (FIN or reset): ConnectFailed about the handshake,
    with no virtual time passing (trio-websocket waited for the caller's deadline), and no socket left."""

    async def serve() -> None:
        peer = await server.accept()
        await peer.read_request()
        if how == "FIN":
            await peer.stream.aclose()
        else:
            await peer.reset()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        start = trio.current_time()
        with trio.fail_after(GUARD), pytest.raises(ConnectFailed, match="during the WebSocket handshake"):
            async with open_link(server.url()):
                pytest.fail("no link may open")
        assert elapsed_since(start) == 0
    assert client_sockets(server.port) == []


@pytest.mark.parametrize("status", [403, 404, 500])
async def test_an_http_error_status_is_handshake_rejected(
    server: Server, autojump_clock: trio.testing.MockClock, status: int
) -> None:
    """An HTTP error answer to the upgrade: HandshakeRejected with the status, at once; the client hangs up."""

    async def serve() -> None:
        peer = await server.accept()
        await peer.read_request()
        await peer.send(RejectConnection(status_code=status))
        assert await peer.until_eof() == []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        start = trio.current_time()
        with pytest.raises(HandshakeRejected) as rejected:
            async with open_link(server.url()):
                pytest.fail("no link may open")
        assert rejected.value.status_code == status
        assert elapsed_since(start) == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not HTTP"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: d3Jvbmcga2V5IGZvciB0aGlzIG5vbmNl\r\n\r\n",
            id="wrong Sec-WebSocket-Accept",
        ),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n", id="no Upgrade header"),
    ],
)
async def test_an_invalid_answer_to_the_upgrade_fails(
    server: Server, autojump_clock: trio.testing.MockClock, answer: bytes
) -> None:
    """Garbage, or a 101 that is not a valid WebSocket accept: ConnectFailed at once, the client hangs up."""

    async def serve() -> None:
        peer = await server.accept()
        await peer.read_request()
        await peer.write(answer)
        assert await peer.until_eof() == []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        start = trio.current_time()
        with pytest.raises(ConnectFailed, match="WebSocket handshake failed"):
            async with open_link(server.url()):
                pytest.fail("no link may open")
        assert elapsed_since(start) == 0


async def test_a_server_that_never_answers_the_upgrade_is_ended_by_the_callers_deadline(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """Silence after the request: only the caller's cancel scope ends the attempt, exactly at its deadline,
    and the client's socket is closed then."""
    requested = trio.Event()

    async def serve() -> None:
        peer = await server.accept()
        await peer.read_request()
        requested.set()
        assert await peer.until_eof() == []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(5.0):
            async with open_link(server.url()):
                pytest.fail("no link may open")
        assert elapsed_since(start) == pytest.approx(5.0, abs=1e-9)
        assert requested.is_set()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"http://127.0.0.1:8080/ws?token={TOKEN}", "the scheme must be ws or wss, not 'http'"),
        (f"127.0.0.1:8080/ws?token={TOKEN}", "the scheme must be ws or wss, not ''"),
        (f"ws:///ws?token={TOKEN}", "no host"),
        (f"wss://:8443/ws?token={TOKEN}", "no host"),
        (f"ws://127.0.0.1:99999/ws?token={TOKEN}", "Port out of range"),
        (f"ws://127.0.0.1:port/ws?token={TOKEN}", "Port could not be cast to integer"),
        (f"ws://[::1/ws?token={TOKEN}", "Invalid IPv6 URL"),
    ],
)
async def test_a_bad_url_fails_naming_the_problem_but_not_the_token(
    autojump_clock: trio.testing.MockClock, url: str, problem: str
) -> None:
    """An unusable URL: ConnectFailed saying what is wrong, without the URL's token (nor a chained exception
    that would show it)."""
    with pytest.raises(ConnectFailed) as failed:
        async with open_link(url):
            pytest.fail("no link may open")
    assert str(failed.value).startswith("invalid WebSocket URL: ")
    assert problem in str(failed.value)
    assert TOKEN not in str(failed.value) and TOKEN not in repr(failed.value)
    assert failed.value.__cause__ is None
    assert failed.value.__context__ is None or failed.value.__suppress_context__


async def test_connection_refused_fails(autojump_clock: trio.testing.MockClock) -> None:
    """Nothing listens on the port: ConnectFailed saying the connection was refused and where, without the token."""
    with socket.socket() as probe:  # a port that was free a moment ago, and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed, match=rf"^connection refused by 127\.0\.0\.1:{port}$") as failed:
        async with open_link(f"ws://127.0.0.1:{port}/ws?token={TOKEN}"):
            pytest.fail("no link may open")
    assert TOKEN not in str(failed.value)


# --- TLS ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, host: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_wss_with_a_trusted_ca(ca: trustme.CA, autojump_clock: trio.testing.MockClock) -> None:
    """``wss://`` with a context trusting the test CA: the upgrade runs over TLS, text goes both ways, the
    closing handshake completes and the client hangs up."""
    async with serving(tls=server_context(ca, "127.0.0.1")) as tls_server:
        link, peer = await connect(tls_server, ssl_context=trusting(ca))
        assert isinstance(peer.stream, trio.SSLStream)
        await link.send_text("over TLS")
        assert await peer.next_message() == "over TLS"
        await peer.send(TextMessage("back over TLS"))
        assert await link.receive() == "back over TLS"
        async with trio.open_nursery() as nursery:
            closing = Call(nursery, link.aclose)
            close = await peer.next_event()
            assert isinstance(close, CloseConnection)
            await peer.send(close.response())
            await closing.result()
        assert await peer.until_eof() == [("text", "over TLS"), ("close", 1000, "")]


@pytest.mark.parametrize(
    ("certificate_host", "trust", "detail"),
    [
        ("127.0.0.1", False, "certificate verify failed"),
        ("example.test", True, "IP address mismatch"),
    ],
    ids=["unknown CA", "certificate for another host"],
)
async def test_wss_with_a_certificate_we_must_not_accept_fails_at_once_naming_tls(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock, certificate_host: str, trust: bool, detail: str
) -> None:
    """An untrusted certificate, or one for another host: ConnectFailed naming the TLS handshake and the
    certificate problem, with no virtual time passing (it used to read as a timeout), and no socket left."""
    async with serving(tls=server_context(ca, certificate_host)) as tls_server:

        async def serve() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await tls_server.accept()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            start = trio.current_time()
            with pytest.raises(ConnectFailed) as failed:
                async with open_link(tls_server.url(), ssl_context=trusting(ca) if trust else None):
                    pytest.fail("no link may open")
            assert elapsed_since(start) == 0
        message = str(failed.value)
        assert message.startswith("TLS handshake failed") and detail in message and TOKEN not in message
        assert client_sockets(tls_server.port) == []


async def test_unread_bytes_in_the_socket_are_reported(server: Server, autojump_clock: trio.testing.MockClock) -> None:
    """has_unread_data: True while a frame waits in the socket that nobody has read yet, False once it is read
    and after the link is closed (what the manager's heartbeat check asks before calling a peer silent)."""
    link, peer = await connect(server)
    assert not link.has_unread_data()
    await peer.send(TextMessage("late"))
    await trio.lowlevel.wait_readable(link._stream.socket)  # type: ignore[attr-defined]  # the bytes are in
    assert link.has_unread_data()
    assert await link.receive() == "late"
    assert not link.has_unread_data()
    await link.aclose()
    assert not link.has_unread_data()
    assert await peer.until_eof() == [("close", 1000, "")]
