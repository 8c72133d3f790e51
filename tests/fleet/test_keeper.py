"""Lease timing on trio's MockClock: acquisition, renewal cadence, lost and expired leases, fair share, takeover.

The keeper runs against the in-memory registry (TTLs on trio's clock) and a recording driver, so every time below is
exact. TTL 9 s: renewals every 3 s, safety margin 0.9 s, local validity 8.1 s, join grace 3 s.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from galaxy_trio.backoff import Backoff
from galaxy_trio.fleet import FleetEventKind, LeaseKeeper, LeaseTiming, MemoryRegistry

from .fakes import Driving, FlakyRegistry, RecordingDriver

TIMING = LeaseTiming.from_ttl(9.0)
DEVICES = [f"dev-{i}" for i in range(6)]


def keeper_for(
    registry: FlakyRegistry | MemoryRegistry,
    member: str,
    devices: list[str] = DEVICES,
    driving: Driving | None = None,
    seed: int = 1,
) -> tuple[LeaseKeeper, RecordingDriver]:
    driver = RecordingDriver(member, driving)
    keeper = LeaseKeeper(
        registry, member, "tt", devices, driver, TIMING, retry_backoff=Backoff(0.75, 9.0, rng=random.Random(seed))
    )
    return keeper, driver


async def test_a_lone_member_takes_every_device_after_the_join_grace(autojump_clock: trio.testing.MockClock) -> None:
    registry = MemoryRegistry()
    keeper, driver = keeper_for(registry, "a")
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(keeper.run)
        assert driver.running == set() and keeper.live_members == ["a"]  # announced, nothing taken yet
        await trio.sleep_until(t0 + 3.5)
        assert driver.running == set(DEVICES)
        assert driver.times("start") == [t0 + 3.0] * 6
        assert all(keeper.book.valid_until(d) == pytest.approx(t0 + 3.0 + 8.1) for d in DEVICES)
        assert await registry.owners(DEVICES) == ["a"] * 6
        assert keeper.degraded is False
        nursery.cancel_scope.cancel()


async def test_leases_are_renewed_every_third_of_the_ttl(autojump_clock: trio.testing.MockClock) -> None:
    registry = FlakyRegistry(MemoryRegistry())
    keeper, _ = keeper_for(registry, "a")
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(keeper.run)
        await trio.sleep_until(t0 + 13.5)
        renewals = registry.calls_of("renew")
        assert [t - t0 for t, _ in renewals] == pytest.approx([6.0, 9.0, 12.0])
        assert all(sorted(args[1]) == DEVICES for _, args in renewals)
        assert [t - t0 for t, _ in registry.calls_of("beat")] == pytest.approx([0.0, 3.0, 6.0, 9.0, 12.0])
        # Each renewal moved the local validity to (send time + 8.1 s).
        assert keeper.book.valid_until("dev-0") == pytest.approx(t0 + 12.0 + 8.1)
        nursery.cancel_scope.cancel()


async def test_a_lost_lease_is_dropped_at_once_and_never_renewed(autojump_clock: trio.testing.MockClock) -> None:
    memory = MemoryRegistry()
    registry = FlakyRegistry(memory)
    keeper, driver = keeper_for(registry, "a")
    with keeper.hub.subscribe() as events:
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(keeper.run)
            await trio.sleep_until(t0 + 4.0)
            # Someone else ends up with dev-0 (an operator, or a Redis that lost its data and a faster member).
            assert await memory.release("a", ["dev-0"]) == ["dev-0"]
            assert await memory.acquire("intruder", ["dev-0"], 1, 1000.0) == ["dev-0"]
            await trio.sleep_until(t0 + 20.5)
            nursery.cancel_scope.cancel()
        lost = [e for e in events.pending() if e.kind is FleetEventKind.LEASE_LOST]
    assert [(e.device_id, e.monotonic - t0) for e in lost] == [("dev-0", pytest.approx(6.0))]
    assert driver.times("stop", "dev-0") == [pytest.approx(t0 + 6.0)]  # dropped at the renewal that found it lost
    assert "dev-0" not in driver.running and not keeper.owns("dev-0")
    renewals = registry.calls_of("renew")
    assert [t - t0 for t, _ in renewals] == pytest.approx([6.0, 9.0, 12.0, 15.0, 18.0])
    assert all("dev-0" not in args[1] for t, args in renewals if t > t0 + 6.0)
    assert driver.times("start", "dev-0") == [pytest.approx(t0 + 3.0)]  # and never taken back from its holder
    assert await memory.owners(["dev-0"]) == ["intruder"]


async def test_unreachable_registry_devices_are_kept_exactly_until_local_expiry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    memory = MemoryRegistry()
    registry = FlakyRegistry(memory)
    keeper, driver = keeper_for(registry, "a", seed=7)
    replay = Backoff(0.75, 9.0, rng=random.Random(7))
    with keeper.hub.subscribe() as events:
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(keeper.run)
            await trio.sleep_until(t0 + 7.0)  # acquired at 3, renewed at 6: valid locally until 6 + 8.1
            registry.mode = "down"
            await trio.sleep_until(t0 + 14.0)
            assert driver.running == set(DEVICES) and keeper.degraded  # degraded, but the leases are still valid
            await trio.sleep_until(t0 + 14.2)
            assert driver.running == set()
            await trio.sleep_until(t0 + 30.0)
            registry.mode = None
            await trio.sleep_until(t0 + 45.0)
            nursery.cancel_scope.cancel()
        seen = [(e.kind, e.device_id, e.monotonic - t0) for e in events.pending()]
    assert (FleetEventKind.DEGRADED, None, pytest.approx(9.0)) in seen
    assert sorted(driver.times("stop")) == [pytest.approx(t0 + 6.0 + 8.1)] * 6
    assert all("local clock" in (reason or "") for _, action, _, reason in driver.log if action == "stop")
    expired = [d for kind, d, _ in seen if kind is FleetEventKind.LEASE_EXPIRED]
    assert sorted(expired) == DEVICES
    # While cut off, the keeper retried on its backoff schedule: exactly the delays of the same seeded Backoff.
    # (A tick's first call is its attempt: the renewal while leases are held, the beat once none is.)
    attempts = sorted({t - t0 for t, name, _ in registry.calls if name in ("renew", "beat") and 9.0 <= t - t0 < 30.0})
    expected, at, failures = [], 9.0, 0
    while at < 30.0:
        expected.append(at)
        failures += 1
        at += replay.delay(failures)
    assert attempts == pytest.approx(expected)
    # Back online: recovered at the next attempt, re-acquired every device (their registry leases had expired).
    recovered = [t for kind, _, t in seen if kind is FleetEventKind.RECOVERED]
    assert len(recovered) == 1 and 30.0 <= recovered[0] <= 30.0 + 9.0
    assert driver.running == set(DEVICES) and not keeper.degraded
    assert all(len(driver.times("start", d)) == 2 for d in DEVICES)
    assert await memory.owners(DEVICES) == ["a"] * 6
    # What happened during the outage reached the fleet's stream once the registry answered again, in order.
    kinds = [e["kind"] for e in await memory.read_events(100)]
    assert (
        kinds == ["lease_acquired"] * 6 + ["degraded"] + ["lease_expired"] * 6 + ["recovered"] + ["lease_acquired"] * 6
    )


async def test_a_stuck_registry_call_does_not_delay_the_drop(autojump_clock: trio.testing.MockClock) -> None:
    registry = FlakyRegistry(MemoryRegistry())
    keeper, driver = keeper_for(registry, "a")
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(keeper.run)
        await trio.sleep_until(t0 + 7.0)
        registry.mode = "hang"  # a partition that swallows packets: calls never answer
        await trio.sleep_until(t0 + 12.5)
        assert keeper.degraded  # the tick of t0+9 gave up after io_bound (3 s)
        await trio.sleep_until(t0 + 20.0)
        nursery.cancel_scope.cancel()
    assert sorted(driver.times("stop")) == [pytest.approx(t0 + 14.1)] * 6
    in_flight = [t - t0 for t, _, _ in registry.calls if t0 + 14.1 - 3.0 < t < t0 + 14.1]
    assert in_flight, "a registry call was pending when the leases ran out"


async def test_members_share_fairly_take_over_a_dead_one_and_make_room_for_a_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    devices = [f"d{i:02d}" for i in range(10)]
    registry = MemoryRegistry()
    driving = Driving()
    keepers = {m: keeper_for(registry, m, devices, driving) for m in ("a", "b", "c")}
    scopes = {m: trio.CancelScope() for m in ("a", "b", "c", "d")}

    async def run(member: str, keeper: LeaseKeeper, *, task_status: trio.TaskStatus[None]) -> None:
        with scopes[member]:
            await keeper.run(task_status=task_status)

    def shares() -> dict[str, int]:
        return {m: len(k.book) for m, (k, _) in keepers.items() if not scopes[m].cancel_called}

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        for member, (keeper, _) in keepers.items():
            await nursery.start(run, member, keeper)
        await trio.sleep_until(t0 + 3.5)
        # Started together: ceil(10 / 3) = 4 at most each, every device owned once, nobody handed anything back.
        assert sorted(driving.by) == devices
        assert max(shares().values()) == 4 and sum(shares().values()) == 10
        assert await registry.owners(devices) == [driving.by[d] for d in devices]
        await trio.sleep_until(t0 + 20.0)
        assert not any(action == "stop" for _, (_, driver) in keepers.items() for _, action, _, _ in driver.log)

        # c dies: no release, no more beats or renewals; its connections die with it.
        killed_at = trio.current_time()
        keeper_c, driver_c = keepers["c"]
        orphans = sorted(keeper_c.book.held())
        scopes["c"].cancel()
        driver_c.die()
        await trio.sleep_until(killed_at + TIMING.ttl + TIMING.renew_interval + 0.5)
        assert sorted(driving.by) == devices and set(driving.by.values()) == {"a", "b"}
        assert max(shares().values()) == 5  # ceil(10 / 2)
        takeover = [t for m in ("a", "b") for d in orphans for t in keepers[m][1].times("start", d)]
        assert len(takeover) == len(orphans)
        # Not before c's leases could have expired (last renewal at most one interval before the kill) ...
        assert min(takeover) >= killed_at - TIMING.renew_interval + TIMING.ttl
        # ... and within one TTL plus one scan of the kill.
        assert max(takeover) <= killed_at + TIMING.ttl + TIMING.renew_interval

        # d joins: a and b hand back their excess, d takes it.
        keeper_d, _ = keepers["d"] = keeper_for(registry, "d", devices, driving)
        joined_at = trio.current_time()
        await nursery.start(run, "d", keeper_d)
        await trio.sleep_until(joined_at + 4 * TIMING.renew_interval)
        assert sorted(driving.by) == devices
        assert max(shares().values()) == 4 and shares()["d"] >= 2
        handed_back = [r for m in ("a", "b") for _, a, _, r in keepers[m][1].log if a == "stop"]
        assert handed_back and all("handed back" in (r or "") for r in handed_back)
        nursery.cancel_scope.cancel()
    assert driving.overlaps == []  # no device was ever driven by two members at once


async def test_close_releases_everything_at_once(autojump_clock: trio.testing.MockClock) -> None:
    registry = MemoryRegistry()
    keeper, driver = keeper_for(registry, "a")
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(keeper.run)
        await trio.sleep_until(t0 + 3.5)
        nursery.cancel_scope.cancel()
    await keeper.close(grace=1.0)
    assert driver.running == set() and len(keeper.book) == 0
    assert await registry.owners(DEVICES) == [None] * 6  # released, not left to expire
    snapshot = await registry.read_fleet()
    assert snapshot.members == []
    events = await registry.read_events(100)
    assert sorted(e["device_id"] for e in events if e["kind"] == "lease_released") == DEVICES


class SlowRegistry(FlakyRegistry):
    """Every call is answered, each after its own delay (a registry, or a member's own loop, slow but up)."""

    def __init__(self, inner: MemoryRegistry, delays: dict[str, float]) -> None:
        super().__init__(inner)
        self.delays = delays

    def __getattr__(self, name: str) -> Any:
        call = super().__getattr__(name)

        async def slow(*args: Any, **kwargs: Any) -> Any:
            result = await call(*args, **kwargs)  # done in the registry at once; the answer comes late
            await trio.sleep(self.delays.get(name, 0.0))
            return result

        return slow


async def test_a_slow_registry_that_always_answers_in_time_never_makes_leases_lapse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every call answers within io_bound (3 s), so no tick fails. The tick that acquires (sent 1 s into it) takes
    # 2.9 s, recording its events 2.9 s more, and a beat 1 s: counted from the tick's end, with the beat first, the
    # first renewal was sent 1.9 + 2.9 + 3 + 1 = 8.8 s after the acquisition — past its local validity (8.1 s),
    # so the member dropped every device with the registry up (seen at 5,000 and 10,000 devices by
    # benchmarks/bench_fleet.py on a loaded machine: a member's loop busy connecting its share).
    registry = SlowRegistry(MemoryRegistry(), {"beat": 1.0, "acquire": 1.9, "append_events": 2.9})
    keeper, driver = keeper_for(registry, "a")
    expired = []
    with keeper.hub.subscribe() as events:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for event in events:
                    if event.kind in (FleetEventKind.LEASE_EXPIRED, FleetEventKind.DEGRADED):
                        expired.append(event)

            nursery.start_soon(watch)
            t0 = trio.current_time()
            await nursery.start(keeper.run)
            await trio.sleep_until(t0 + 40.0)
            nursery.cancel_scope.cancel()
    assert expired == [] and keeper.failures == 0
    assert driver.running == set(DEVICES) and driver.times("stop") == []
    (acquired_at, _), (first_renewal, _) = registry.calls_of("acquire")[0], registry.calls_of("renew")[0]
    assert first_renewal - acquired_at < TIMING.local_validity
