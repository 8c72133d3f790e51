"""Heartbeats keep ``heartbeat_interval`` for every interval/timeout pair (the bug: they went every timeout)."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from galaxy_trio.aip import ClientMessageType
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus

from .peer import ScriptedPeer


def _manager(interval: float, timeout: float) -> ConstellationDeviceManager:
    return ConstellationDeviceManager(task_name="tt", heartbeat_interval=interval, heartbeat_timeout=timeout)


@pytest.mark.parametrize(("interval", "reply_window"), [(1.0, 10.0), (10.0, 10.0), (10.0, 1.0)])
async def test_heartbeats_go_out_every_interval_on_virtual_time(
    peer: ScriptedPeer, autojump_clock: trio.testing.MockClock, interval: float, reply_window: float
) -> None:
    async with _manager(interval, reply_window) as manager:
        assert await manager.register_device("dev", peer.url)
        await peer.wait_for(lambda: len(peer.frames_of(ClientMessageType.HEARTBEAT)) >= 6)
        profile = manager.get_device_info("dev")
        assert profile is not None and profile.status is DeviceStatus.IDLE
        times = [t for t, _ in peer.heartbeat_times()]
    gaps = [b - a for a, b in itertools.pairwise(times[:6])]
    assert gaps == [pytest.approx(interval)] * 5


async def test_interval_one_second_gives_at_least_four_heartbeats_in_five_real_seconds(peer: ScriptedPeer) -> None:
    """The issue's measurement on real time and real sockets: interval 1 s, timeout left at 10 s."""
    async with _manager(1.0, 10.0) as manager:
        assert await manager.register_device("dev", peer.url)
        before = len(peer.frames_of(ClientMessageType.HEARTBEAT))
        await trio.sleep(5.0)
        sent = len(peer.frames_of(ClientMessageType.HEARTBEAT)) - before
    assert sent >= 4
