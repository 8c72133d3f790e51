"""Loopback helpers for tests."""

from __future__ import annotations

import socket

import trio

#: How long (virtual seconds on MockClock) a read waits for the server to hang up before the test fails as hung.
HANG_GUARD = 60.0


def free_port() -> int:
    """A 127.0.0.1 port that nothing listened on a moment ago (for configs that need a port before a server
    exists, and for "connection refused"); servers under test still bind port 0 themselves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the server sends until it closes the socket; fails if it has not within HANG_GUARD."""
    received = b""
    with trio.fail_after(HANG_GUARD):
        while data := await stream.receive_some(65536):
            received += data
    return received
