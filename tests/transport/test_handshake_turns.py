"""The bound on upgrades the server works on at once (``serve_links(max_concurrent_handshakes=...)``, issue #15
item 3): upgrades past the bound wait their turn, a queued or silent peer is still dropped at its handshake
deadline, peers that send nothing or dawdle hold no turn, and accepted links are served while upgrades queue."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
import trustme

from galaxy_trio.errors import LinkClosed
from galaxy_trio.transport import LinkRequest, open_link, serve_links
from galaxy_trio.transport.client import _request_parts

from ..net import read_until_closed

KEY = base64.b64encode(b"sixteen byte key")


@asynccontextmanager
async def serving(
    handler: object, *, turns: int, deadline: float = 30.0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(
                serve_links,
                handler,  # type: ignore[arg-type]
                "127.0.0.1",
                0,
                ssl_context=ssl_context,
                handshake_deadline=deadline,
                max_concurrent_handshakes=turns,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


def _request(port: int, target: str = "/ws") -> bytes:
    before, after = _request_parts(f"127.0.0.1:{port}", target)
    return before + KEY + after


async def _requesting(port: int, target: str = "/ws") -> trio.SocketStream:
    """A TCP client that has sent a whole, valid upgrade request."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(_request(port, target))
    return stream


async def _hung_up_without_an_answer(stream: trio.abc.ReceiveStream) -> bool:
    """The server closed the socket having sent nothing (a reset too: it never read what this client sent)."""
    try:
        return await read_until_closed(stream) == b""
    except trio.BrokenResourceError:
        return True


class Held:
    """A handler that holds each upgrade (and so its turn) until the test answers it."""

    def __init__(self) -> None:
        self.waiting: list[tuple[LinkRequest, trio.Event]] = []
        self.most_at_once = 0

    async def __call__(self, request: LinkRequest) -> None:
        answer = trio.Event()
        self.waiting.append((request, answer))
        self.most_at_once = max(self.most_at_once, sum(1 for _, event in self.waiting if not event.is_set()))
        await answer.wait()
        await request.reject(403, b"no\n")

    def answer_first(self) -> None:
        next(event for _, event in self.waiting if not event.is_set()).set()


async def test_upgrades_past_the_bound_wait_until_one_is_answered(autojump_clock: trio.testing.MockClock) -> None:
    held = Held()
    async with serving(held, turns=2) as port:
        clients = [await _requesting(port, f"/ws?n={n}") for n in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        assert [request.target for request, _ in held.waiting] == ["/ws?n=0", "/ws?n=1"]
        held.answer_first()
        await trio.testing.wait_all_tasks_blocked()
        # The answered one gave its turn to the next in line, first come first served.
        assert [request.target for request, _ in held.waiting] == ["/ws?n=0", "/ws?n=1", "/ws?n=2"]
        for _ in range(4):
            held.answer_first()
            await trio.testing.wait_all_tasks_blocked()
        answers = [await read_until_closed(client) for client in clients]
    assert all(answer.startswith(b"HTTP/1.1 403 ") for answer in answers)
    assert len(held.waiting) == 5 and held.most_at_once == 2


async def test_a_client_queued_for_a_turn_is_still_dropped_at_its_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held = Held()
    async with serving(held, turns=1, deadline=5.0) as port:
        holder = await _requesting(port, "/holder")
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        queued = await _requesting(port, "/queued")
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _hung_up_without_an_answer(queued) and await _hung_up_without_an_answer(silent)
        assert trio.current_time() - started == pytest.approx(5.0, abs=0.1)
        assert [request.target for request, _ in held.waiting] == ["/holder"]
        # The dropped ones left no turn behind: once the holder is answered, the next upgrade gets one.
        held.answer_first()
        assert (await read_until_closed(holder)).startswith(b"HTTP/1.1 403 ")
        later = await _requesting(port, "/later")
        await trio.testing.wait_all_tasks_blocked()
        assert [request.target for request, _ in held.waiting] == ["/holder", "/later"]
        held.answer_first()
        assert (await read_until_closed(later)).startswith(b"HTTP/1.1 403 ")


async def _accept_and_echo(request: LinkRequest) -> None:
    link = await request.accept()
    try:
        while True:
            await link.send_text(await link.receive())
    except LinkClosed:
        pass


async def test_peers_that_send_nothing_or_dawdle_hold_no_turn(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(_accept_and_echo, turns=1, deadline=30.0) as port:
        silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        dawdler = await trio.open_tcp_stream("127.0.0.1", port)
        request = _request(port)
        await dawdler.send_all(request[: len(request) // 2])  # and the rest never
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        async with open_link(f"ws://127.0.0.1:{port}/ws") as link:
            await link.send_text("through")
            assert await link.receive() == "through"
        # No virtual second passed: nothing waited for the dawdlers' deadline.
        assert trio.current_time() - started < 1.0
        for stream in (*silent, dawdler):
            await stream.aclose()


async def test_an_accepted_link_is_answered_while_a_storm_of_upgrades_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held = Held()

    async def handler(request: LinkRequest) -> None:
        await (_accept_and_echo if request.target == "/bystander" else held)(request)

    async with serving(handler, turns=2) as port:
        async with open_link(f"ws://127.0.0.1:{port}/bystander") as bystander:
            storm = [await _requesting(port) for _ in range(30)]
            await trio.testing.wait_all_tasks_blocked()
            for n in range(10):
                await bystander.send_text(f"beat {n}")
                assert await bystander.receive() == f"beat {n}"
            # All of it while the storm's upgrades were in progress: two held, 28 waiting their turn.
            assert len(held.waiting) == 2
        for stream in storm:
            await stream.aclose()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_peers_that_dawdle_hold_no_turn_and_the_link_reads_its_socket_directly(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    unread_seen: list[bool] = []
    client_sent = trio.Event()

    async def handler(request: LinkRequest) -> None:
        link = await request.accept()
        try:
            text = await link.receive()
            await link.send_text("ready")
            await client_sent.wait()
            # The peer's next frame is in the socket, not yet read: seen there only if the TLS layer reads the
            # socket itself again, the upgrade's turn-taking wrapper gone.
            unread_seen.append(link.has_unread_data())
            await link.send_text(text + " " + await link.receive())
        except LinkClosed:
            pass

    async with serving(handler, turns=1, deadline=30.0, ssl_context=server_context) as port:
        silent = await trio.open_tcp_stream("127.0.0.1", port)  # not even a ClientHello
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        after_tls = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
        await after_tls.do_handshake()  # then no upgrade request
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        async with open_link(f"wss://127.0.0.1:{port}/ws", ssl_context=client_context) as link:
            await link.send_text("over")
            assert await link.receive() == "ready"
            await link.send_text("TLS")
            client_sent.set()
            assert await link.receive() == "over TLS"
        assert trio.current_time() - started < 1.0
        assert unread_seen == [True]
        await silent.aclose()
        await after_tls.aclose()
