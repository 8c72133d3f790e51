"""The client's upgrade without h11: the request built once per URL, the answer judged without sockets."""

from __future__ import annotations

import base64

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import generate_accept_token

from galaxy_trio.errors import ConnectFailed, HandshakeRejected
from galaxy_trio.transport.client import _parse, _request_parts, check_upgrade_response

KEY = base64.b64encode(b"sixteen byte key")
ACCEPT = generate_accept_token(KEY)


def test_the_request_is_byte_for_byte_what_wsprotos_h11_handshake_sends() -> None:
    """Same bytes as before the rewrite, the key aside (it is random per connection in both)."""
    before, after = _request_parts("127.0.0.1:5005", "/ws?token=t&x=1")
    ours = before + KEY + after
    theirs = H11Handshake(ConnectionType.CLIENT).send(Request(host="127.0.0.1:5005", target="/ws?token=t&x=1"))
    key_at = theirs.index(b"Sec-WebSocket-Key: ") + len("Sec-WebSocket-Key: ")
    their_key = theirs[key_at : theirs.index(b"\r\n", key_at)]
    assert ours == theirs.replace(their_key, KEY)


def test_a_real_servers_accept_passes() -> None:
    """wsproto's own server answer to our request is accepted."""
    before, after = _request_parts("h:1", "/ws")
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(before + KEY + after)
    request = next(server.events())
    assert isinstance(request, Request)
    answer = server.send(AcceptConnection())
    head = answer.split(b"\r\n\r\n", 1)[0]
    check_upgrade_response(head, KEY)


def test_headers_are_case_insensitive_and_connection_may_list_tokens() -> None:
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nCONNECTION: keep-alive, Upgrade\r\n"
        b"Sec-Websocket-Accept: " + ACCEPT
    )
    check_upgrade_response(head, KEY)


@pytest.mark.parametrize("status", [400, 403, 404, 500, 200])
def test_any_status_but_101_is_rejected_with_it(status: int) -> None:
    server = WSConnection(ConnectionType.SERVER)
    before, after = _request_parts("h:1", "/ws")
    server.receive_data(before + KEY + after)
    next(server.events())
    head = server.send(RejectConnection(status_code=status)).split(b"\r\n\r\n", 1)[0]
    with pytest.raises(HandshakeRejected) as rejected:
        check_upgrade_response(head, KEY)
    assert rejected.value.status_code == status


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.6", "not an HTTP/1.1 status line"),
        (b"HTTP/1.0 101 OK", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 101\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT, "Upgrade header"),
        (b"HTTP/1.1 101\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + ACCEPT, "Connection header"),
        (b"HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: Upgrade", "wrong Sec-WebSocket-Accept"),
        (b"HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x", "Accept"),
        (b"HTTP/1.1 101\r\nUpgrade websocket", "malformed header line"),
        (
            b"HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT + b"\r\n"
            b"Sec-WebSocket-Extensions: permessage-deflate",
            "not offered",
        ),
    ],
)
def test_an_invalid_accept_fails_naming_why(head: bytes, why: str) -> None:
    with pytest.raises(ConnectFailed, match="WebSocket handshake failed") as failed:
        check_upgrade_response(head, KEY)
    assert why in str(failed.value)


@pytest.mark.parametrize("url", ["ws://h/ws?token=a b", "ws://h/ws?token=a\x7f", "ws://h/wé"])
def test_a_url_that_could_split_the_request_is_refused(url: str) -> None:
    """The request is built by hand: nothing in the URL may break out of its request line or Host header."""
    with pytest.raises(ConnectFailed, match="invalid WebSocket URL: a space, control or non-ASCII"):
        _parse(url)
