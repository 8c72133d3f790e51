"""Loopback helpers for tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port that nothing listened on a moment ago (for configs that need a port before a server
    exists, and for "connection refused"); servers under test still bind port 0 themselves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
