"""Heartbeat metrics of a real manager against the scripted peer, on virtual time: what ``/metrics`` says about
heartbeats sent, missed and their round trips matches what the peer saw and did."""

from __future__ import annotations

import itertools
from functools import partial

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from galaxy_trio.aip import ClientMessage, ClientMessageType
from galaxy_trio.control import serve_control
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.manager.state import HEARTBEAT_RTT_BUCKETS, HeartbeatStats

from .. import frames
from ..manager.peer import Conn, ScriptedPeer

TOKEN = "heartbeat-metrics-token-0123456789"
#: How long the peer waits before each ack, in turn (virtual seconds): one per bucket region.
DELAYS = (0.002, 0.3, 3.0)


class SlowAcks(ScriptedPeer):
    """Acks each heartbeat after the next delay of ``DELAYS``; ``acked`` holds each delay it answered after."""

    def __init__(self) -> None:
        super().__init__()
        self.delays = itertools.cycle(DELAYS)
        self.acked: list[float] = []

    async def _answer(self, conn: Conn, message: ClientMessage) -> bool:
        if message.type is ClientMessageType.HEARTBEAT and self.answer_heartbeats and not self.silent:
            delay = next(self.delays)
            await trio.sleep(delay)
            if self.answer_heartbeats:  # the ack goes out (the base class reads the same flag, with no await between)
                self.acked.append(delay)
        return await super()._answer(conn, message)


class RefusesSome(SlowAcks):
    """Answers every third heartbeat with UFO's ERROR for it instead of an ack (``refused`` counts them)."""

    REFUSAL = frames.raw("heartbeat", 4)  # "client_type does not match the registered connection"

    def __init__(self) -> None:
        super().__init__()
        self.beats = 0
        self.refused = 0

    async def _answer(self, conn: Conn, message: ClientMessage) -> bool:
        if message.type is ClientMessageType.HEARTBEAT:
            self.beats += 1
            if self.beats % 3 == 0:
                self.refused += 1
                await conn.send(self.REFUSAL)
                return True
        return await super()._answer(conn, message)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(url: str, clock: trio.testing.MockClock) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` with virtual time stopped: no beat or ack moves while the figures are read and compared."""
    clock.autojump_threshold = float("inf")
    try:
        # A fresh connection per scrape: virtual time jumps past any keep-alive timeout between two of them.
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            response = await client.get("/metrics")
    finally:
        clock.autojump_threshold = 0
    assert response.status_code == 200
    return _samples(response.text)


def _expected_buckets(delays: list[float]) -> dict[str, int]:
    bounds = [*HEARTBEAT_RTT_BUCKETS, float("inf")]
    return {
        ("+Inf" if bound == float("inf") else repr(bound)): sum(1 for d in delays if d <= bound) for bound in bounds
    }


async def test_heartbeats_sent_missed_and_round_trips_match_what_the_peer_saw(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = SlowAcks()
    await nursery.start(peer.serve)
    async with ConstellationDeviceManager(
        task_name="hb", heartbeat_interval=10.0, heartbeat_timeout=5.0, reconnect_delay=1.0
    ) as manager:
        endpoint = await nursery.start(partial(serve_control, manager, port=0, token=TOKEN))
        assert await manager.register_device("dev", peer.url)
        await peer.wait_for(lambda: len(peer.acked) >= 7)
        acked = list(peer.acked)
        samples = await _scrape(endpoint.url, autojump_clock)
        beats = peer.heartbeat_times()
        assert samples[("galaxy_trio_heartbeats_sent_total", ())] == len(beats)
        assert samples[("galaxy_trio_heartbeats_missed_total", ())] == 0
        # Every ack the manager read is one round trip, timed against its own beat: the peer's delay, exactly
        # (virtual time does not move while a frame crosses the loopback).
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_count", ())] == len(acked)
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_sum", ())] == pytest.approx(sum(acked))
        for le, count in _expected_buckets(acked).items():
            assert samples[("galaxy_trio_heartbeat_rtt_seconds_bucket", (("le", le),))] == count, le

        # The peer stops answering: one heartbeat missed, the link dropped, the device back on a new link.
        peer.answer_heartbeats = False
        with manager.subscribe() as events:
            async for event in events:
                if event.new_status is DeviceStatus.DISCONNECTED:
                    break
        peer.answer_heartbeats = True
        await manager.wait_for_device("dev")
        await peer.wait_for(lambda: len(peer.acked) >= len(acked) + 2)
        samples = await _scrape(endpoint.url, autojump_clock)
        assert samples[("galaxy_trio_heartbeats_missed_total", ())] == 1
        assert samples[("galaxy_trio_heartbeats_sent_total", ())] == len(peer.heartbeat_times())
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_count", ())] == len(peer.acked)
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_sum", ())] == pytest.approx(sum(peer.acked))
        assert manager.heartbeat_stats.sent == len(peer.heartbeat_times())


def test_round_trips_fall_in_the_bucket_of_their_upper_bound() -> None:
    stats = HeartbeatStats()
    for seconds in (0.0, 0.001, 0.0011, 10.0, 11.0):
        stats.round_trip(seconds)
    assert stats.rtt_buckets[0] == 2  # 0 and exactly the first bound: le is "less than or equal"
    assert stats.rtt_buckets[1] == 1
    assert stats.rtt_buckets[len(HEARTBEAT_RTT_BUCKETS) - 1] == 1  # exactly 10 s
    assert stats.rtt_buckets[-1] == 1  # above every bound: +Inf only
    assert stats.rtt_count == 5 and stats.rtt_sum == pytest.approx(21.0021)


async def test_a_beat_the_server_refuses_does_not_shift_later_round_trips(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = RefusesSome()
    await nursery.start(peer.serve)
    async with ConstellationDeviceManager(task_name="hb", heartbeat_interval=10.0, heartbeat_timeout=5.0) as manager:
        endpoint = await nursery.start(partial(serve_control, manager, port=0, token=TOKEN))
        assert await manager.register_device("dev", peer.url)
        await peer.wait_for(lambda: len(peer.acked) >= 8)
        acked = list(peer.acked)
        samples = await _scrape(endpoint.url, autojump_clock)
        assert peer.refused >= 3
        assert samples[("galaxy_trio_heartbeats_missed_total", ())] == 0  # an ERROR is a frame: the link lives
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_count", ())] == len(acked)
        # Each ack timed against its own beat, not against a refused one before it (that would add 10 s each).
        assert samples[("galaxy_trio_heartbeat_rtt_seconds_sum", ())] == pytest.approx(sum(acked))
        for le, count in _expected_buckets(acked).items():
            assert samples[("galaxy_trio_heartbeat_rtt_seconds_bucket", (("le", le),))] == count, le
