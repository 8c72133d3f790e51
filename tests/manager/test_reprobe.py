"""FAILED that heals: ``failed_retry_interval`` re-probes a FAILED device, one attempt per probe, on MockClock.

The library's default keeps the flow document's rule (FAILED stays until ``connect_device``, see
``test_phases.py::test_a_failed_device_stays_failed_until_connect_device``); ``run`` sets the interval, so a device
that comes back after its retry budget is spent (a reboot) is IDLE again without restarting ``run``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from galaxy_trio.config import DeviceConfig
from galaxy_trio.manager import ConstellationDeviceManager, DeviceEvent, DeviceStatus, EventKind
from galaxy_trio.manager.tasks import DeviceNotConnected

from .peer import TARGET_NOT_CONNECTED, ScriptedPeer

INTERVAL = 60.0


@pytest.fixture
async def healing(peer: ScriptedPeer) -> AsyncIterator[ConstellationDeviceManager]:
    async with ConstellationDeviceManager(
        task_name="tt", reconnect_delay=1.0, backoff_cap=2.0, failed_retry_interval=INTERVAL
    ) as mgr:
        yield mgr


def _statuses(events: list[DeviceEvent]) -> list[tuple[float, DeviceStatus]]:
    return [(e.at, e.new_status) for e in events if e.kind is EventKind.STATUS and e.new_status is not None]


async def _until(manager: ConstellationDeviceManager, status: DeviceStatus) -> None:
    """Wait (at most 10 intervals of virtual time, so a regression fails rather than hangs) for ``status``."""
    with trio.fail_after(10 * INTERVAL), manager.subscribe() as events:
        if manager.get_device_state("dev").status is status:
            return
        async for event in events:
            if event.kind is EventKind.STATUS and event.new_status is status:
                return


async def test_a_device_down_longer_than_its_retry_budget_is_idle_again_once_it_returns(
    peer: ScriptedPeer, healing: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    down_for = 3 + 2  # registrations refused: the retry budget (3), then the first two re-probes
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED if n <= down_for else None
    assert not await healing.register_device("dev", peer.url, max_retries=3)
    failed_at = trio.current_time()
    profile = healing.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.FAILED
    assert profile.failure_reason is not None and profile.failure_reason.startswith("gave up after 3 consecutive")
    await _until(healing, DeviceStatus.IDLE)
    # One attempt per re-probe, every INTERVAL: the two refused probes and the third that succeeds.
    assert peer.registers == down_for + 1
    assert trio.current_time() == pytest.approx(failed_at + 3 * INTERVAL, abs=0.5)
    profile = healing.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.IDLE and profile.failure_reason is None
    assert profile.connection_attempts == 0


async def test_each_failed_reprobe_is_one_attempt_and_says_so(
    peer: ScriptedPeer, healing: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    with healing.subscribe(buffer=1000) as events:
        assert not await healing.register_device("dev", peer.url, max_retries=2)
        failed_at = trio.current_time()
        await trio.sleep(2.5 * INTERVAL)
        seen = _statuses(events.pending())
    assert peer.registers == 2 + 2  # the budget, then one attempt at each of two probes
    registered_at = [
        at
        for c in peer.connections
        for at, m in zip(c.received_at, c.received, strict=True)
        if m.type.value == "register"
    ]
    assert sorted(registered_at)[2:] == pytest.approx([failed_at + INTERVAL, failed_at + 2 * INTERVAL], abs=0.5)
    # A probe goes CONNECTING → ... → FAILED, never through DISCONNECTED (no backoff streak inside a probe).
    first_failed = [status for _, status in seen].index(DeviceStatus.FAILED)
    after = [status for _, status in seen][first_failed + 1 :]
    assert after.count(DeviceStatus.CONNECTING) == 2 and after[-1] is DeviceStatus.FAILED
    assert DeviceStatus.DISCONNECTED not in after
    profile = healing.get_device_info("dev")
    assert profile is not None and profile.failure_reason is not None
    assert profile.failure_reason.startswith(f"still failing when re-probed (every {INTERVAL:g}s): Target device")


async def test_a_device_back_from_a_reprobe_gets_its_full_retry_budget_again(
    peer: ScriptedPeer, healing: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED if n <= 2 else None
    assert not await healing.register_device("dev", peer.url, max_retries=2)
    await _until(healing, DeviceStatus.IDLE)  # the first probe succeeds
    registers = peer.registers
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    with healing.subscribe(buffer=1000) as events:
        for conn in list(peer.live):
            await conn.ws.aclose(1001)
        await _until(healing, DeviceStatus.FAILED)
        seen = [status for _, status in _statuses(events.pending())]
    # Lost after IDLE: a normal streak (backoff through DISCONNECTED, max_retries attempts), not a single probe.
    assert DeviceStatus.DISCONNECTED in seen
    assert peer.registers - registers == 2


async def test_connect_device_cuts_a_reprobe_wait_short(
    peer: ScriptedPeer, healing: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED if n <= 2 else None
    assert not await healing.register_device("dev", peer.url, max_retries=2)
    asked_at = trio.current_time()
    assert await healing.connect_device("dev")
    assert trio.current_time() - asked_at < 1.0  # not the INTERVAL
    assert healing.get_device_state("dev").status is DeviceStatus.IDLE


async def test_a_reprobing_failed_device_refuses_tasks_and_can_be_disconnected(
    peer: ScriptedPeer, healing: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    assert not await healing.register_device("dev", peer.url, max_retries=1)
    with pytest.raises(DeviceNotConnected, match="is failed"):
        await healing.assign_task_to_device("t1", "dev", "echo hi")
    assert await healing.disconnect_device("dev")
    registers = peer.registers
    await trio.sleep(5 * INTERVAL)
    assert peer.registers == registers  # no more probes
    assert healing.get_device_state("dev").status is DeviceStatus.DISCONNECTED


async def test_a_failed_reprobe_is_logged_quietly(
    peer: ScriptedPeer,
    healing: ConstellationDeviceManager,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED
    with caplog.at_level(logging.INFO, logger="galaxy_trio.manager"):
        assert not await healing.register_device("dev", peer.url, max_retries=1)
        await trio.sleep(3.5 * INTERVAL)
    failed = [r for r in caplog.records if "-> failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING, logging.INFO, logging.INFO, logging.INFO]


async def test_without_the_setting_failed_stays_failed(
    peer: ScriptedPeer, manager: ConstellationDeviceManager, autojump_clock: trio.testing.MockClock
) -> None:
    peer.register_verdict = lambda n: TARGET_NOT_CONNECTED if n <= 1 else None
    manager.add_device(DeviceConfig(device_id="dev", server_url=peer.url, max_retries=1))
    profile = await manager.wait_for_device("dev")
    assert profile.status is DeviceStatus.FAILED
    await trio.sleep(10 * INTERVAL)
    assert peer.registers == 1 and manager.get_device_state("dev").status is DeviceStatus.FAILED
