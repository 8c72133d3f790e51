from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from galaxy_trio.manager import ConstellationDeviceManager

from .peer import ScriptedPeer


@pytest.fixture
async def peer(nursery: trio.Nursery) -> ScriptedPeer:
    scripted = ScriptedPeer()
    await nursery.start(scripted.serve)
    return scripted


@pytest.fixture
async def manager(peer: ScriptedPeer) -> AsyncIterator[ConstellationDeviceManager]:
    # Depends on ``peer`` so that it closes first: its links then end with a proper closing handshake.
    async with ConstellationDeviceManager(
        task_name="tt",
        heartbeat_interval=30.0,
        heartbeat_timeout=10.0,
        reconnect_delay=1.0,
        backoff_cap=8.0,
        connect_timeout=5.0,
        register_timeout=5.0,
        telemetry_timeout=2.0,
    ) as mgr:
        yield mgr
