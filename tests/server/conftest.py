"""Fixtures for the AIP server tests: a server on 127.0.0.1, port 0, with the test token."""

from __future__ import annotations

import pytest
import trio

from galaxy_trio.server import AIPServer

from ._peers import start_server


@pytest.fixture
async def server(nursery: trio.Nursery) -> AIPServer:
    return await start_server(nursery)
