"""Fault scenarios: the manager, our AIP server and our device agents on real loopback sockets, with faults injected
by a :class:`~tests.faults.proxy.FaultProxy` on the manager's links (the wiring is in ``rig.py``).

Besides its own verdict, each scenario checks that no caller waited past its deadline (every wait of the test is
bounded with ``trio.fail_after``, in virtual time), that every task ended with a result, and — once the manager has
gone — that nothing was left behind: no task but the rig's own, no link on the proxy, no socket of the manager's
open in this process, no constellation registered on the server, every device DISCONNECTED.

Virtual time (``autojump_clock``) everywhere but the 200-device fleet, so timeouts and detection delays are
asserted exactly. Phases are hit deterministically: a stalled handshake holds the manager in phase 2, and for
phases 3 and 4 the proxy holds every chunk for :data:`HOLD` seconds, so when the manager announces the phase (a
PHASE event) the server cannot have seen its request yet, let alone answered it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import psutil
import pytest
import trio
import trio.testing

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus, EventKind, LinkClosed, TaskResult
from galaxy_trio.aip import ClientType
from galaxy_trio.manager import DeviceEvent, EventSubscription
from galaxy_trio.manager.session import ClientSession
from galaxy_trio.transport import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, open_link

from ..manager.peer import ScriptedPeer
from .rig import (
    BACKOFF_CAP,
    CONNECT_TIMEOUT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    HOLD_REQUEST,
    REGISTER_TIMEOUT,
    Rig,
    assert_no_leftovers,
    constellation_id,
    next_event,
    next_phase,
    next_status,
    open_manager,
    sockets_to,
)

#: How long the proxy holds each chunk while a test steers the manager into phase 3 or 4 (virtual seconds).
HOLD: Final = 0.25

#: Bound on any one wait of a scenario (virtual seconds): a hang fails the test with TooSlowError, at once.
BOUND: Final = 120.0

#: How long leaving ``async with manager`` may take: each live link gets a closing handshake of at most
#: CLOSE_GRACE (all concurrently), and whatever is still open then is dropped within CANCELLED_CLOSE_GRACE.
SHUTDOWN_BOUND: Final = CLOSE_GRACE + CANCELLED_CLOSE_GRACE

ECHO_REQUEST: Final = '{"tool_name": "echo", "parameters": {"text": "through the fault"}}'

#: The five phases of a device as the scenarios name them ("active" is IDLE; "busy" is IDLE with a task running).
PHASES: Final = ["connect", "register", "telemetry", "active", "busy"]


@dataclass
class Callers:
    """Callers of ``assign_task_to_device`` in a nursery of the test's: each records its result and when it came."""

    nursery: trio.Nursery
    results: dict[str, TaskResult] = field(default_factory=dict)
    finished_at: dict[str, float] = field(default_factory=dict)

    def run(self, manager: ConstellationDeviceManager, task_id: str, request: str, device_id: str = "dev") -> None:
        self.nursery.start_soon(self._run, manager, task_id, request, device_id, name=f"caller:{task_id}")

    async def _run(self, manager: ConstellationDeviceManager, task_id: str, request: str, device_id: str) -> None:
        self.results[task_id] = await manager.assign_task_to_device(task_id, device_id, request)
        self.finished_at[task_id] = trio.current_time()


@asynccontextmanager
async def open_callers() -> AsyncIterator[Callers]:
    """Leaving the block waits for every caller, bounded: a caller left hanging fails the test."""
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            yield Callers(nursery)


async def bring_up(rig: Rig, manager: ConstellationDeviceManager, device_id: str = "dev") -> None:
    manager.add_device(rig.device(device_id))
    with trio.fail_after(BOUND):
        profile = await manager.wait_for_device(device_id)
    assert profile.status is DeviceStatus.IDLE, profile.failure_reason


async def enter_phase(
    phase: str, rig: Rig, manager: ConstellationDeviceManager, events: EventSubscription, callers: Callers
) -> None:
    """Add device ``dev`` and return while the manager is in ``phase`` with it — where it stays until the test acts
    (see the module docstring). ``events`` must be subscribed before."""
    proxy = rig.fault_proxy
    if phase == "connect":
        proxy.stall_handshake = True
    elif phase in ("register", "telemetry"):
        proxy.delay = HOLD
    manager.add_device(rig.device("dev"))
    with trio.fail_after(BOUND):
        if phase == "connect":
            await next_phase(events, "connect")
            await proxy.wait_for(lambda: len(proxy.connections) == 1 and proxy.connections[0].stalled)
        elif phase in ("register", "telemetry"):
            await next_phase(events, phase)
            proxy.delay = 0.0  # the chunk already in hand is still held for HOLD
        else:
            await next_status(events, DeviceStatus.IDLE)
            if phase == "busy":
                callers.run(manager, "t1", HOLD_REQUEST)
                await next_status(events, DeviceStatus.BUSY)
                await rig.agents["dev"].gate.started.wait()
    expected = {
        "connect": DeviceStatus.CONNECTING,
        "register": DeviceStatus.REGISTERING,
        "telemetry": DeviceStatus.REGISTERING,  # REGISTERING covers phases 3 and 4
        "active": DeviceStatus.IDLE,
        "busy": DeviceStatus.BUSY,
    }[phase]
    assert status_of(manager) is expected


def status_of(manager: ConstellationDeviceManager, device_id: str = "dev") -> DeviceStatus:
    profile = manager.get_device_info(device_id)
    assert profile is not None
    return profile.status


# --- server restart during each phase -----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
async def test_server_restart_during_each_phase(rig: Rig, autojump_clock: trio.testing.MockClock, phase: str) -> None:
    agent = await rig.start_agent("dev")
    proxy = rig.fault_proxy
    async with open_manager() as manager, open_callers() as callers:
        with manager.subscribe(buffer=1000) as events:
            await enter_phase(phase, rig, manager, events, callers)
            stopped_at = trio.current_time()
            await rig.stop_server()
            if phase == "connect":
                # The held handshake goes upstream only now, while the server is down: the pair is reset.
                proxy.release_handshakes()
                with trio.fail_after(BOUND):
                    await proxy.wait_for(lambda: not proxy.connections)
            await rig.start_server()  # on the same port: the agent's URL still holds, and it reconnects
            with trio.fail_after(BOUND):
                lost = await next_status(events, DeviceStatus.DISCONNECTED)
                profile = await manager.wait_for_device("dev")
            assert lost.reason is not None
            if phase == "connect":
                # The reset of a connection whose upgrade is still pending is noticed at once, with its cause,
                # not at the connect deadline, and the attempt is retried.
                assert lost.old_status is DeviceStatus.CONNECTING
                assert lost.reason.startswith("connection failed during the WebSocket handshake"), lost.reason
                assert trio.current_time() - stopped_at < CONNECT_TIMEOUT
            else:
                # The server closed the link as it stopped: noticed at once, in the phase it was in.
                assert lost.reason.startswith("connection closed (1000")
                # (busy: its TASK_END, below, came first and made it IDLE; then the close)
                assert lost.old_status is (
                    DeviceStatus.REGISTERING if phase in ("register", "telemetry") else DeviceStatus.IDLE
                )
            assert profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0
            assert profile.failure_reason is None
            assert agent.agent is not None and agent.agent.registered
            assert rig.server.constellations() == [constellation_id("dev")]
            with trio.fail_after(BOUND):  # the links of the failed attempts are all closed
                await proxy.wait_for(lambda: len(proxy.connections) == 1)
            if phase == "busy":
                result = callers.results["t1"]
                assert result.status == "failed" and result.error_type == "device_disconnection"
                assert result.error == "Task was cancelled because the server is shutting down"
                # The server said so as it stopped: the caller knew at once, not at a heartbeat or a timeout.
                assert callers.finished_at["t1"] - stopped_at <= CANCELLED_CLOSE_GRACE
                assert agent.gate.calls == 1  # and the task was not run again behind its back
            else:
                assert callers.results == {}
            closing_at = trio.current_time()
    assert trio.current_time() - closing_at <= SHUTDOWN_BOUND
    await assert_no_leftovers(rig, manager)


# --- the device agent dies mid-task -------------------------------------------------------------------------------


async def test_agent_killed_mid_task_fails_the_task_at_once_and_the_device_comes_back(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    agent = await rig.start_agent("dev")
    async with open_manager() as manager:
        await bring_up(rig, manager)
        with manager.subscribe(buffer=1000) as events:
            async with open_callers() as callers:
                callers.run(manager, "t1", HOLD_REQUEST)
                with trio.fail_after(BOUND):
                    await agent.gate.started.wait()
                assert status_of(manager) is DeviceStatus.BUSY
                killed_at = trio.current_time()
                agent.kill()
            result = callers.results["t1"]
            assert result.status == "failed" and result.error_type == "device_disconnection"
            assert result.error == "Task was cancelled because target device disconnected"
            assert callers.finished_at["t1"] - killed_at <= CANCELLED_CLOSE_GRACE  # at once
            with trio.fail_after(BOUND):
                gone = await next_status(events, DeviceStatus.DISCONNECTED)
                # While the agent is away every attempt is refused (retryably) and the device stays out of IDLE.
                for _ in range(2):
                    refused = await next_status(events, DeviceStatus.DISCONNECTED)
                    assert refused.reason == "Target device 'dev' is not connected"
            assert gone.old_status is DeviceStatus.IDLE  # its TASK_END came first, then the server closed the link
            assert gone.reason == "connection closed (1000: target device disconnected)"
            assert status_of(manager) is not DeviceStatus.IDLE
            assert "dev" not in rig.server.online()
            await rig.start_agent("dev")  # a new incarnation of the device
            with trio.fail_after(BOUND):
                await next_status(events, DeviceStatus.IDLE)
            profile = manager.get_device_info("dev")
            assert profile is not None and profile.connection_attempts == 0
            async with open_callers() as callers:
                callers.run(manager, "t2", ECHO_REQUEST)
            assert callers.results["t2"].ok  # the device works again
    await assert_no_leftovers(rig, manager)


# --- a black-holed link: open, silent, never closed -----------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, HEARTBEAT_INTERVAL / 2])
async def test_black_holed_link_is_detected_within_interval_plus_timeout_and_replaced(
    rig: Rig, autojump_clock: trio.testing.MockClock, offset: float
) -> None:
    await rig.start_agent("dev")
    proxy = rig.fault_proxy
    async with open_manager() as manager:
        await bring_up(rig, manager)
        idle_at = trio.current_time()
        with manager.subscribe(buffer=1000) as events:
            async with open_callers() as callers:
                # ``offset`` places the fault in the heartbeat cycle: at 0 it begins right after the last frame
                # (the worst case), half-way through an interval it is found sooner.
                await trio.sleep(offset)
                holed_at = trio.current_time()
                proxy.blackhole = True
                callers.run(manager, "t1", ECHO_REQUEST)  # sent into the hole
                with trio.fail_after(BOUND):
                    missed = await next_event(events, lambda e: e.kind is EventKind.HEARTBEAT_MISSED)
                detected_in = trio.current_time() - holed_at
                # The first heartbeat after the fault goes out at idle + interval; its reply window then expires.
                assert detected_in == idle_at + HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT - holed_at
                assert HEARTBEAT_TIMEOUT <= detected_in <= HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT
                assert missed.device_id == "dev"
            # The task sent into the hole failed when the link was declared dead, not at its own timeout.
            result = callers.results["t1"]
            assert result.status == "failed" and result.error_type == "device_disconnection"
            assert callers.finished_at["t1"] - holed_at == detected_in
            with trio.fail_after(BOUND):
                lost = await next_status(events, DeviceStatus.DISCONNECTED)
            assert lost.reason == f"no frame within {HEARTBEAT_TIMEOUT:g}s of a heartbeat; link presumed dead"
            # Nothing answered the closing handshake either: given up after CLOSE_GRACE, not waited on forever.
            assert trio.current_time() - holed_at == detected_in + CLOSE_GRACE
            proxy.restore()
            with trio.fail_after(BOUND):
                await next_status(events, DeviceStatus.IDLE)
        profile = manager.get_device_info("dev")
        assert profile is not None and profile.connection_attempts == 0
        assert rig.server.constellations() == [constellation_id("dev")]
        with trio.fail_after(BOUND):
            await proxy.wait_for(lambda: len(proxy.connections) == 1)
    await assert_no_leftovers(rig, manager)


# --- a stalled handshake --------------------------------------------------------------------------------------------


async def test_stalled_handshake_gives_up_at_connect_timeout_and_retries(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    await rig.start_agent("dev")
    proxy = rig.fault_proxy
    proxy.stall_handshake = True
    async with open_manager() as manager:
        with manager.subscribe(buffer=1000) as events:
            manager.add_device(rig.device("dev"))
            with trio.fail_after(BOUND):
                await next_phase(events, "connect")
                started_at = trio.current_time()
                lost = await next_status(events, DeviceStatus.DISCONNECTED)
            assert trio.current_time() - started_at == CONNECT_TIMEOUT  # exactly its deadline
            assert lost.reason == f"connect timed out after {CONNECT_TIMEOUT:g}s"
            with trio.fail_after(BOUND):
                await next_phase(events, "connect")  # the retry, after a backoff
                retry_at = trio.current_time()
                # The abandoned pair is gone (the manager closed its socket); the retry is stalled in turn.
                await proxy.wait_for(lambda: len(proxy.connections) == 1 and proxy.connections[0].stalled)
            assert retry_at - started_at <= CONNECT_TIMEOUT + BACKOFF_CAP
            assert proxy.accepted == 2 and rig.server.constellations() == []
            proxy.release_handshakes()
            with trio.fail_after(BOUND):
                profile = await manager.wait_for_device("dev")
            assert trio.current_time() == retry_at  # released: IDLE at once
        assert profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0
        assert rig.server.constellations() == [constellation_id("dev")]
    await assert_no_leftovers(rig, manager)


# --- the host stalls just after the link opened ------------------------------------------------------------------


class _StallAfterStart:
    """Passed as the reader's task_status: right after the reader has started, the host stalls for ``stall``
    seconds (the clock jumps) before the manager's task runs again — a starved host, in virtual time."""

    def __init__(self, status: trio.TaskStatus[None], clock: trio.testing.MockClock, stall: float) -> None:
        self._status = status
        self._clock = clock
        self._stall = stall

    def started(self, value: None = None) -> None:
        self._status.started(value)
        self._clock.jump(self._stall)


async def test_a_host_stall_just_after_the_link_opened_times_out_no_phase(
    rig: Rig, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.start_agent("dev")
    original = ClientSession.read_loop
    stalls: list[float] = []

    async def read_loop(self: ClientSession, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not stalls:  # the first attempt only
            stalls.append(trio.current_time())
            task_status = _StallAfterStart(task_status, autojump_clock, CONNECT_TIMEOUT)
        await original(self, task_status=task_status)

    monkeypatch.setattr(ClientSession, "read_loop", read_loop)
    async with open_manager() as manager:
        with manager.subscribe(buffer=1000) as events:
            manager.add_device(rig.device("dev"))
            with trio.fail_after(BOUND):
                profile = await manager.wait_for_device("dev")
            seen = events.pending()
            registered = rig.server.constellations()
    # The link opened inside connect_timeout; the connect phase's scope bounded the opening only, so a stall of
    # the host afterwards (the clock jumped a whole connect_timeout) fails no phase: neither a "connect timed out"
    # for a link that did open, nor a "register timed out" for a register verdict that was never waited for.
    assert stalls, "the stall was not injected"
    assert profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0
    assert [e.new_status for e in seen if e.kind is EventKind.STATUS] == [
        DeviceStatus.CONNECTING,
        DeviceStatus.CONNECTED,
        DeviceStatus.REGISTERING,
        DeviceStatus.IDLE,
    ]
    assert registered == [constellation_id("dev")]
    await assert_no_leftovers(rig, manager)


# --- a server that never confirms REGISTER ---------------------------------------------------------------------------


async def test_unconfirmed_register_gives_up_at_register_timeout_and_retries(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = ScriptedPeer()
    await nursery.start(peer.serve)
    peer.answer_register = False
    async with open_manager() as manager:
        with manager.subscribe(buffer=1000) as events:
            manager.add_device(DeviceConfig(device_id="dev", server_url=peer.url, max_retries=50))
            with trio.fail_after(BOUND):
                await next_phase(events, "register")
                registering_at = trio.current_time()
                lost = await next_status(events, DeviceStatus.DISCONNECTED)
            assert trio.current_time() - registering_at == REGISTER_TIMEOUT  # exactly its deadline
            assert lost.reason == f"register timed out after {REGISTER_TIMEOUT:g}s"
            assert lost.old_status is DeviceStatus.REGISTERING
            assert peer.registers == 1
            with trio.fail_after(BOUND):
                await peer.wait_for(lambda: not peer.live)  # the attempt given up on was closed
            peer.answer_register = True
            with trio.fail_after(BOUND):
                profile = await manager.wait_for_device("dev")
        assert profile.status is DeviceStatus.IDLE and profile.connection_attempts == 0
        assert peer.registers == 2 and len(peer.connections) == 2 and len(peer.live) == 1
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at <= SHUTDOWN_BOUND
    assert status_of(manager) is DeviceStatus.DISCONNECTED
    with trio.fail_after(BOUND):
        await peer.wait_for(lambda: not peer.live)
    assert sockets_to(peer.port) == []
    assert [task.name for task in nursery.child_tasks if "serve" not in task.name] == []


# --- manager shutdown during every phase ----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [*PHASES, "backoff"])
async def test_manager_shutdown_during_each_phase(rig: Rig, autojump_clock: trio.testing.MockClock, phase: str) -> None:
    agent = await rig.start_agent("dev")
    proxy = rig.fault_proxy
    # The callers live outside the manager, so they are not cancelled with it: each must get a result.
    async with open_callers() as callers:
        async with open_manager() as manager:
            with manager.subscribe(buffer=1000) as events:
                if phase == "backoff":
                    proxy.listening = False  # connection refused: the first attempt fails at once
                    with trio.fail_after(BOUND):
                        await proxy.wait_for(lambda: not proxy.port_open)
                    manager.add_device(rig.device("dev"))
                    with trio.fail_after(BOUND):
                        lost = await next_status(events, DeviceStatus.DISCONNECTED)
                    assert lost.reason is not None and lost.reason.startswith("connection refused by 127.0.0.1:")
                    callers.run(manager, "t1", ECHO_REQUEST)  # waits for the device to be IDLE
                else:
                    await enter_phase(phase, rig, manager, events, callers)
                if phase == "busy":
                    callers.run(manager, "t2", ECHO_REQUEST)  # queued behind t1
                if phase in ("busy", "backoff"):
                    waiting = "t2" if phase == "busy" else "t1"
                    with trio.fail_after(BOUND):
                        await next_event(events, lambda e: e.kind is EventKind.TASK_QUEUED and e.task_id == waiting)
            closing_at = trio.current_time()
        assert trio.current_time() - closing_at <= SHUTDOWN_BOUND
    if phase == "busy":
        running = callers.results["t1"]
        assert running.status == "failed" and running.error_type == "device_disconnection"
        assert running.error == "link to device lost mid-task: manager closed"
        queued = callers.results["t2"]
        assert queued.status == "failed" and queued.error_type == "device_failed"
        assert queued.error is not None and queued.error.startswith("device 'dev' stopped")  # never sent
    elif phase == "backoff":
        never_started = callers.results["t1"]
        assert never_started.status == "failed" and never_started.error_type == "device_failed"
        assert never_started.error is not None and never_started.error.startswith("device 'dev' stopped")
    else:
        assert callers.results == {}
    assert all(t - closing_at <= SHUTDOWN_BOUND for t in callers.finished_at.values())
    await assert_no_leftovers(rig, manager)
    # The device side is untouched: the agent is still registered, alone.
    assert agent.agent is not None and agent.agent.registered
    assert rig.server.online() == {"dev": ClientType.DEVICE}


# --- links the server ends leave no socket behind --------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["close frame", "reset"])
async def test_a_link_the_server_ends_is_closed_on_our_side_too(
    rig: Rig, autojump_clock: trio.testing.MockClock, ending: str
) -> None:
    """trio-websocket's client never closes its socket when the peer ends the link; galaxy_trio's transport must,
    or the socket lingers in CLOSE_WAIT until the garbage collector finds it (the manager keeps its sessions in
    reference cycles, so that can be long)."""
    proxy = rig.fault_proxy
    await trio.testing.wait_all_tasks_blocked()
    fds_before = psutil.Process().num_fds()
    with trio.fail_after(BOUND):
        async with open_link(rig.manager_url) as link:
            if ending == "close frame":
                await link.send_text("not a REGISTER frame")  # the server answers with an ERROR and closes
                assert "First frame must be a REGISTER message" in await link.receive()
            else:
                await proxy.wait_for(lambda: len(proxy.connections) == 1 and proxy.connections[0].upgraded)
                proxy.cut()
            with pytest.raises(LinkClosed):
                await link.receive()
        await proxy.wait_for(lambda: not proxy.connections)
    await trio.testing.wait_all_tasks_blocked()
    assert link.closed  # and still referenced here, as a session keeps it
    assert sockets_to(proxy.port) == []
    assert psutil.Process().num_fds() == fds_before  # no file descriptor left behind, connected or not


# --- a fleet through two server restarts ------------------------------------------------------------------------------

FLEET: Final = 200


async def test_fleet_of_200_survives_two_server_restarts_in_a_row(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Real clock: with 800 real sockets, virtual time would only serialise the reconnections. The agents come back
    quicker than the manager retries, and a short connect timeout bounds an attempt that hits the downtime."""
    caplog.set_level(logging.ERROR, logger="galaxy_trio")  # thousands of expected reconnect warnings
    ids = [f"dev{i:03d}" for i in range(FLEET)]
    seen: list[DeviceEvent] = []

    async def until_back(events: EventSubscription, count: int) -> None:
        """Consume events until ``count`` devices are IDLE through an attempt begun after the restart (so on the
        new server: the old one was cancelled before any of these events), not on a link that is about to die."""
        fresh: set[str] = set()
        back: set[str] = set()
        async for event in events:
            seen.append(event)
            if event.kind is EventKind.PHASE and event.reason == "connect":
                fresh.add(event.device_id)
            elif event.new_status is DeviceStatus.IDLE and event.device_id in fresh:
                back.add(event.device_id)
                if len(back) == count:
                    return

    # A hang guard, not a timing: on a quiet machine this takes 10-20 s. The connect timeout is short enough to
    # bound an attempt that hits the downtime, and long enough that 200 concurrent handshakes on a loaded 2-core
    # machine do not time each other out in a loop (1 s did, under a parallel test load).
    with trio.fail_after(180):
        await rig.start_agents(ids, options={"reconnect_delay": 0.01, "backoff_cap": 0.05})
        async with open_manager(reconnect_delay=0.05, backoff_cap=0.2, connect_timeout=3.0) as manager:
            with manager.subscribe(buffer=100_000) as events:
                manager.add_devices(rig.device(i, max_retries=100) for i in ids)
                assert {p.status for p in (await manager.wait_until_settled()).values()} == {DeviceStatus.IDLE}
                # Restart 1 with every device IDLE; restart 2 as soon as half the fleet is back, so that it hits
                # devices in every phase: IDLE, connecting, registering, backing off. (Each restart cancels the
                # server before the test awaits anything, so the events drained before it all came earlier.)
                for back_before_next in (FLEET // 2, FLEET):
                    seen.extend(events.pending())
                    await rig.restart_server()
                    await until_back(events, back_before_next)
                profiles = await manager.wait_until_settled()
                seen.extend(events.pending())
                assert events.dropped == 0
            assert {p.status for p in profiles.values()} == {DeviceStatus.IDLE}
            assert all(p.connection_attempts == 0 and p.failure_reason is None for p in profiles.values())
            assert len(rig.server.constellations()) == FLEET  # every one registered on the restarted server
            assert rig.server.starts == 3
            lost = {e.device_id for e in seen if e.new_status is DeviceStatus.DISCONNECTED}
            assert lost == set(ids)  # every device did go through the restarts
            assert [e for e in seen if e.new_status is DeviceStatus.FAILED] == []
            assert [e for e in seen if e.reason is not None and "already registered" in e.reason] == []
        await assert_no_leftovers(rig, manager)
    assert rig.server.online() == dict.fromkeys(ids, ClientType.DEVICE)
