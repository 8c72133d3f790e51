"""The server's side of links on wsproto directly: the upgrade judged without h11 (sans-IO and over sockets), the
refusals wsproto's handshake gave, the socket closed after a refusal or a slow handshake, ping waiting for its pong,
and the client connecting to an IP literal with a single connect."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Request, TextMessage
from wsproto.handshake import H11Handshake

from galaxy_trio.errors import LinkClosed
from galaxy_trio.transport import LinkRequest, ServerLink, open_link, serve_links
from galaxy_trio.transport import client as client_module
from galaxy_trio.transport._wslink import text_frame
from galaxy_trio.transport.client import _request_parts, check_upgrade_response
from galaxy_trio.transport.server import (
    MAX_REQUEST_HEAD,
    UpgradeRefused,
    UpgradeRequest,
    check_upgrade_request,
    switching_protocols,
)

from ..net import read_until_closed

KEY = base64.b64encode(b"sixteen byte key")
GUARD = 60.0


def _head(request_line: bytes = b"GET /ws?token=t HTTP/1.1", **overrides: bytes | None) -> bytes:
    headers = {
        "Host": b"127.0.0.1:5005",
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": b"13",
    }
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value  # type: ignore[assignment]
    lines = [request_line] + [f"{n}: ".encode() + v for n, v in headers.items() if v is not None]
    return b"\r\n".join(lines)


# --- sans-IO --------------------------------------------------------------------------------------------------


def test_our_clients_request_is_accepted_with_its_target_and_key() -> None:
    before, after = _request_parts("127.0.0.1:5005", "/ws?token=t&x=1")
    head = (before + KEY + after).split(b"\r\n\r\n", 1)[0]
    assert check_upgrade_request(head) == UpgradeRequest("/ws?token=t&x=1", KEY)


def test_wsprotos_h11_request_is_accepted() -> None:
    data = H11Handshake(ConnectionType.CLIENT).send(Request(host="h:1", target="/ws", subprotocols=["x"]))
    verdict = check_upgrade_request(data.split(b"\r\n\r\n", 1)[0])
    assert isinstance(verdict, UpgradeRequest) and verdict.target == "/ws"


def test_headers_are_case_insensitive_and_connection_may_list_tokens() -> None:
    head = (
        b"GET /ws HTTP/1.1\r\nhost: h\r\nUPGRADE: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
        b"sec-websocket-key: " + KEY + b"\r\nSEC-WEBSOCKET-VERSION: 13"
    )
    assert check_upgrade_request(head) == UpgradeRequest("/ws", KEY)


def test_the_101_accepts_the_key_as_the_client_checks_it() -> None:
    check_upgrade_response(switching_protocols(KEY).split(b"\r\n\r\n", 1)[0], KEY)


@pytest.mark.parametrize(
    ("head", "status", "why"),
    [
        (_head(b"POST /ws HTTP/1.1"), 405, "GET"),
        (_head(b"GET /ws HTTP/1.0"), 400, "HTTP/1.1"),
        (_head(b"GET /ws"), 400, "request line"),
        (_head(b"GET /a b HTTP/1.1"), 400, "request line"),
        (_head(Host=None), 400, "Host"),
        (_head(Connection=b"keep-alive"), 400, "Connection"),
        (_head(Upgrade=b"h2c"), 400, "Upgrade"),
        (_head(Sec_WebSocket_Version=None), 400, "Version"),
        (_head(Sec_WebSocket_Version=b"8"), 426, "version"),
        (_head(Sec_WebSocket_Key=None), 400, "Key"),
        (_head(Sec_WebSocket_Key=b"c2hvcnQ="), 400, "Key"),
        (_head(Sec_WebSocket_Key=b"!" * 24), 400, "Key"),
        (_head(Content_Length=b"5"), 400, "body"),
        (_head() + b"\r\nno colon here", 400, "header line"),
        (_head() + b"\r\n folded: value", 400, "header line"),
    ],
)
def test_an_invalid_upgrade_is_refused_as_wsprotos_handshake_did(head: bytes, status: int, why: str) -> None:
    verdict = check_upgrade_request(head)
    assert isinstance(verdict, UpgradeRefused), verdict
    assert verdict.status == status and why in verdict.why
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in verdict.headers


# --- over sockets ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def running(handler: object, *, handshake_deadline: float = 5.0) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_links, handler, "127.0.0.1", 0, handshake_deadline=handshake_deadline)  # type: ignore[arg-type]
        )
        yield port
        nursery.cancel_scope.cancel()


async def _never_called(request: LinkRequest) -> None:
    raise AssertionError(f"the handler saw a request that should have been refused: {request.target}")


async def test_an_invalid_upgrade_is_answered_and_the_socket_closed(autojump_clock: trio.testing.MockClock) -> None:
    async with running(_never_called) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_head(Sec_WebSocket_Version=b"8") + b"\r\n\r\n")
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\nunsupported WebSocket version\n")


async def test_a_request_head_over_the_bound_gets_431(autojump_clock: trio.testing.MockClock) -> None:
    async with running(_never_called) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nX-Padding: " + b"a" * (MAX_REQUEST_HEAD + 100))
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_peer_that_never_finishes_its_request_is_dropped_at_the_handshake_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(_never_called, handshake_deadline=3.0) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: h\r\n")  # and nothing more
        started = trio.current_time()
        assert await read_until_closed(stream) == b""
        assert trio.current_time() - started == pytest.approx(3.0, abs=0.1)


async def test_a_rejected_upgrade_gets_its_status_and_body_then_the_socket_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, str]] = []

    async def reject(request: LinkRequest) -> None:
        seen.append((request.target, request.remote))
        await request.reject(403, b"Forbidden\n")
        with pytest.raises(RuntimeError, match="already answered"):
            await request.accept()

    async with running(reject) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        before, after = _request_parts(f"127.0.0.1:{port}", "/ws?token=x")
        await stream.send_all(before + KEY + after)
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and answer.endswith(b"\r\n\r\nForbidden\n")
    local_port = stream.socket.getsockname()[1]
    assert seen == [("/ws?token=x", f"127.0.0.1:{local_port}")]


async def test_a_handler_failing_as_the_server_is_cancelled_is_logged_and_the_server_stops_cleanly(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler whose own nursery fails while shutdown cancels it raises one group holding the failure and a
    Cancelled; that group must stop at the connection (until 2026-12-07 it escaped serve_links, and the
    floods script's fake servers died at their stop without printing their figures)."""
    serving = trio.Event()

    async def fails_on_cancel(request: LinkRequest) -> None:
        await request.accept()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            serving.set()
            try:
                await trio.sleep_forever()
            finally:
                raise LinkClosed("the peer went away as the server stopped")

    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_links, fails_on_cancel, "127.0.0.1", 0, handshake_deadline=5.0))
            async with open_link(f"ws://127.0.0.1:{port}/ws"):
                await serving.wait()
                nursery.cancel_scope.cancel()
    assert nursery.cancel_scope.cancelled_caught
    dropped = [r.getMessage() for r in caplog.records if "failed in the transport" in r.getMessage()]
    assert len(dropped) == 1 and "the peer went away as the server stopped" in dropped[0], dropped


async def test_ping_returns_once_the_peer_pongs_and_raises_when_the_link_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links: list[ServerLink] = []
    pinged = trio.Event()
    client_stopped_reading = trio.Event()
    done = trio.Event()

    async def serve(request: LinkRequest) -> None:
        link = await request.accept()
        links.append(link)
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                with pytest.raises(LinkClosed):
                    while True:
                        await link.receive()

            nursery.start_soon(read)
            with trio.fail_after(GUARD):
                await link.ping()  # the client's receiving task answers it; our reader sees the pong
            pinged.set()
            await client_stopped_reading.wait()
            with pytest.raises(LinkClosed), trio.fail_after(GUARD):
                await link.ping()  # never answered: the client stopped reading and then closes
        done.set()

    async with running(serve) as port:
        async with open_link(f"ws://127.0.0.1:{port}/ws") as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.receive)
                await pinged.wait()
                nursery.cancel_scope.cancel()
            client_stopped_reading.set()
            await trio.sleep(1)  # the second ping is in flight, unanswered
        with trio.fail_after(GUARD):
            await done.wait()


async def test_an_ip_literal_is_connected_without_the_resolver(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    async def no_resolver(*args: object, **kwargs: object) -> None:
        raise AssertionError("open_tcp_stream (resolver, happy eyeballs) used for an IP literal")

    async def accept(request: LinkRequest) -> None:
        link = await request.accept()
        await link.send_text("hello")
        await link.aclose()

    monkeypatch.setattr(trio, "open_tcp_stream", no_resolver)
    async with running(accept) as port:
        async with open_link(f"ws://127.0.0.1:{port}/ws") as link:
            assert await link.receive() == "hello"
    assert client_module._ip_family("127.0.0.1") is not None
    assert client_module._ip_family("::1") is not None
    assert client_module._ip_family("localhost") is None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70001])
@pytest.mark.parametrize("masked", [True, False])
def test_text_frames_framed_here_are_what_wsproto_decodes(size: int, masked: bool) -> None:
    """Our own framing of whole text messages (both length forms' edges, masked as a client or not as a server)."""
    text = ("é€" * size)[:size]
    receiver = Connection(ConnectionType.SERVER if masked else ConnectionType.CLIENT)
    receiver.receive_data(text_frame(text.encode(), masked=masked))
    parts = list(receiver.events())
    assert all(isinstance(part, TextMessage) for part in parts)
    assert "".join(part.data for part in parts if isinstance(part, TextMessage)) == text
    assert parts[-1].message_finished  # type: ignore[union-attr]


def test_a_masked_frame_uses_a_fresh_key_each_time() -> None:
    first, second = (text_frame(b"same payload", masked=True) for _ in range(2))
    assert first[:2] == second[:2] == bytes((0x81, 0x80 | 12)) and first[2:6] != second[2:6]
