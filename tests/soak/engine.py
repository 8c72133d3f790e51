"""The chaos soak (issue 15, item 2): devices, a steady task load from several callers, and a seeded random
schedule of faults, with the invariants checked as it runs and at the end.

    manager ──ws──▶ FaultProxy ──▶ AIP server ◀── DeviceAgent × N
    (this process)  (.proxy_process) └──── .device_side ────┘

Three processes on the real clock (:class:`SoakRig`): the manager and the checks in this one, the fault proxy in
one, the AIP server and the agents in one (so that, as in a real fleet, the managers do not share a core with the
devices' side). Each device's agent has a ``work`` tool that records every execution by the task's token (a line
the device side writes as the execution begins), so the checks are exact:

- every ``assign_task_to_device`` call returns exactly one ``TaskResult`` (no exception, no call left hanging);
- no task runs twice (the tool saw each token at most once; a ``completed`` one exactly once, with its token);
- no two tasks overlap on a device (the tool counts executions in progress per device: never above 1);
- after each fault, every device is IDLE (or BUSY with a task) again within ``recovery_bound`` seconds;
- the RSS and open descriptors of the manager's process and of the server's after warm-up and at the end (the
  drift is reported; the test bounds it; the warm-up may include faults, see :func:`run_schedule`);
- nothing left at exit (the callers' and the rig's tasks all ended).

Faults, every kind once in a shuffled first round and then drawn from ``random.Random(seed)``, every
``fault_every`` seconds (±50 %): an agent killed and restarted;
the AIP server restarted; every manager link cut (RST); the manager's links black-holed for a few seconds; new
handshakes stalled while the links are cut. :func:`run_soak` returns a :class:`SoakReport`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
import trio

from galaxy_trio import DeviceConfig, DeviceStatus
from galaxy_trio.manager import ConstellationDeviceManager, TaskResult

from ..faults.rig import TOKEN
from .device_side import START_WITHIN as DEVICE_SIDE_START_WITHIN
from .device_side import DeviceSide
from .memory import MemoryTrace
from .proxy_process import ProxyProcess, open_proxy_process

FAULTS = ("agent_restart", "server_restart", "cut", "blackhole", "stalled_handshakes")
#: For how many unrecovered faults a soak keeps the description of what was not back.
MAX_NOT_BACK = 5

#: The manager's settings in the soak (real seconds): quick detection and retries, so recoveries are short.
MANAGER_SETTINGS: dict[str, float] = {
    "heartbeat_interval": 1.0,
    "heartbeat_timeout": 2.0,
    "reconnect_delay": 0.2,
    "backoff_cap": 1.0,
    "connect_timeout": 3.0,
    "register_timeout": 3.0,
    "telemetry_timeout": 2.0,
    "task_timeout": 30.0,
}

#: Within how long every device must be back after a fault: detection (heartbeat interval + timeout, or a
#: connect/register timeout) + backoff cap + a few seconds (12 s).
RECOVERY_BOUND: float = (
    MANAGER_SETTINGS["heartbeat_interval"]
    + MANAGER_SETTINGS["heartbeat_timeout"]
    + MANAGER_SETTINGS["connect_timeout"]
    + MANAGER_SETTINGS["backoff_cap"]
    + 5.0
)


#: The longest a call may take: the task timeout (queue time included) + the recovery bound (a routed call's reply
#: may wait out a fault). Longer, it hung.
CALL_BOUND: float = MANAGER_SETTINGS["task_timeout"] + RECOVERY_BOUND


@dataclass
class SoakReport:
    """What a soak did and saw; :meth:`violations` lists every broken invariant (empty when all held)."""

    seconds: float = 0.0
    devices: int = 0
    calls: int = 0
    results: int = 0
    #: Calls still running when the load stopped (cancelled with their caller: at most one per caller).
    cut_short: int = 0
    #: Calls whose caller's process was killed while they ran (fleet mode's member C): no outcome came back.
    lost_with_member: int = 0
    #: The longest time a call took to end (seconds): a call that hangs shows here (it ends cut short at the end).
    longest_call: float = 0.0
    callers: int = 0
    results_by_kind: Counter[str] = field(default_factory=Counter)
    #: Documented refusals (fleet mode: RegistryUnavailable, DeviceNotConnected), by type: an outcome, not an error.
    refusals: Counter[str] = field(default_factory=Counter)
    #: Any other exception out of a call: each one is a violation.
    raised: list[str] = field(default_factory=list)
    #: Per caller, one byte per task (its n-th call at index n): how often the device ran it. Constant-size
    #: bookkeeping, so that the soak's own records do not show up as RSS drift.
    executions: dict[int, bytearray] = field(default_factory=dict)
    #: Per caller, one byte per task: 1 when its TaskResult said completed.
    completed: dict[int, bytearray] = field(default_factory=dict)
    peak_overlap: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    unrecovered: list[str] = field(default_factory=list)
    #: For the first few faults not recovered within the bound: what was not back then (see ``run_schedule``'s
    #: ``describe``), so that a long run's failure says why without a second run.
    not_back: list[tuple[str, list[str]]] = field(default_factory=list)
    recovery_bound: float = 0.0
    #: RSS after the load-only warm-up, before any fault (reported; the drift is measured from ``rss_warm``).
    rss_load: int = 0
    #: RSS and descriptors at the baseline (after the fault warm-up, see :func:`run_schedule`), and at the end.
    rss_warm: int = 0
    #: When the baseline was taken, in seconds since the first fault's turn began.
    warm_at: float = 0.0
    rss_end: int = 0
    fds_warm: int = 0
    fds_end: int = 0
    #: The same four for the device side's process (the AIP server and the agents), taken at the same moments.
    server_rss_warm: int = 0
    server_rss_end: int = 0
    server_fds_warm: int = 0
    server_fds_end: int = 0
    leftover_tasks: list[str] = field(default_factory=list)
    #: (seconds since the faults began, RSS MiB, fds), about every 30 s: a leak climbs, a warm-up flattens.
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    server_samples: list[tuple[float, float, int]] = field(default_factory=list)
    #: With ``trace_memory``: where memory went between the baseline and the end (:class:`.memory.MemoryTrace`).
    memory: dict[str, Any] = field(default_factory=dict)

    def note_call_time(self, seconds: float) -> None:
        self.longest_call = max(self.longest_call, seconds)

    @property
    def worst_recovery(self) -> float:
        return max((seconds for _, seconds in self.recoveries), default=0.0)

    def worst_recovery_by_fault(self) -> dict[str, float]:
        worst: dict[str, float] = {}
        for fault, seconds in self.recoveries:
            worst[fault] = round(max(worst.get(fault, 0.0), seconds), 2)
        return dict(sorted(worst.items()))

    @property
    def rss_drift(self) -> float:
        return (self.rss_end - self.rss_warm) / self.rss_warm if self.rss_warm else math.nan

    @property
    def rss_drift_from_load(self) -> float:
        """The growth since the load-only warm-up: the faults' high-water marks included."""
        return (self.rss_end - self.rss_load) / self.rss_load if self.rss_load else math.nan

    @property
    def fd_drift(self) -> int:
        return self.fds_end - self.fds_warm

    @property
    def server_rss_drift(self) -> float:
        if not self.server_rss_warm:
            return math.nan
        return (self.server_rss_end - self.server_rss_warm) / self.server_rss_warm

    @property
    def server_fd_drift(self) -> int:
        return self.server_fds_end - self.server_fds_warm

    def violations(self) -> list[str]:
        found = []
        ended = self.results + sum(self.refusals.values()) + len(self.raised) + self.cut_short
        ended += self.lost_with_member
        if ended != self.calls or self.cut_short > self.callers:
            found.append(
                f"{self.calls} calls but {self.results} results, {sum(self.refusals.values())} refusals, "
                f"{len(self.raised)} raised ({self.cut_short} cut short at the end, {self.lost_with_member} lost "
                "with a killed member)"
            )
        found += [f"a call raised: {text}" for text in self.raised]
        twice = [f"c{c}-{n}" for c, runs in self.executions.items() for n, k in enumerate(runs) if k > 1]
        if twice:
            found.append(f"tasks executed more than once: {twice[:10]}")
        missing = [
            f"c{c}-{n}"
            for c, done in self.completed.items()
            for n, ok in enumerate(done)
            if ok and _count(self.executions, c, n) != 1
        ]
        if missing:
            found.append(f"completed tasks the device never ran exactly once: {missing[:10]}")
        if self.longest_call > CALL_BOUND:
            found.append(f"a call took {self.longest_call:.1f} s, more than the task timeout + {RECOVERY_BOUND:g} s")
        if self.peak_overlap > 1:
            found.append(f"{self.peak_overlap} tasks ran at once on one device")
        found += [f"not recovered within {self.recovery_bound:g} s after {fault}" for fault in self.unrecovered]
        if self.leftover_tasks:
            found.append(f"tasks left at exit: {self.leftover_tasks}")
        return found

    def figures(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "devices": self.devices,
            "calls": self.calls,
            "results": self.results,
            "cut_short_at_end": self.cut_short,
            "lost_with_member": self.lost_with_member,
            "longest_call_s": round(self.longest_call, 2),
            "results_by_kind": dict(self.results_by_kind),
            "refusals": dict(self.refusals),
            "executions": sum(sum(runs) for runs in self.executions.values()),
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "worst_recovery_s": round(self.worst_recovery, 2),
            "worst_recovery_by_fault_s": self.worst_recovery_by_fault(),
            "recovery_bound_s": self.recovery_bound,
            "rss_load_mib": round(self.rss_load / (1 << 20), 1),
            "warm_at_s": round(self.warm_at),
            "rss_warm_mib": round(self.rss_warm / (1 << 20), 1),
            "rss_end_mib": round(self.rss_end / (1 << 20), 1),
            "rss_drift_pct": round(100 * self.rss_drift, 1),
            "rss_drift_from_load_pct": round(100 * self.rss_drift_from_load, 1),
            "fds_warm": self.fds_warm,
            "fds_end": self.fds_end,
            "samples": self.samples,
            "server_rss_warm_mib": round(self.server_rss_warm / (1 << 20), 1),
            "server_rss_end_mib": round(self.server_rss_end / (1 << 20), 1),
            "server_rss_drift_pct": round(100 * self.server_rss_drift, 1),
            "server_fds_warm": self.server_fds_warm,
            "server_fds_end": self.server_fds_end,
            "server_samples": self.server_samples,
            **({"memory": self.memory} if self.memory else {}),
            **({"not_back": self.not_back} if self.not_back else {}),
            "violations": self.violations(),
        }


def _count(table: dict[int, bytearray], caller: int, n: int) -> int:
    runs = table.get(caller)
    return runs[n] if runs is not None and n < len(runs) else 0


def _bump(table: dict[int, bytearray], caller: int, n: int, value: int | None = None) -> None:
    """Add one to (or set) the byte of task ``n`` of ``caller``, growing the table as needed."""
    runs = table.setdefault(caller, bytearray())
    if n >= len(runs):
        runs.extend(bytes(n + 1 - len(runs) + 1024))
    runs[n] = value if value is not None else min(runs[n] + 1, 255)


def _parse(token: str) -> tuple[int, int]:
    """``c<caller>-<n>`` → (caller, n)."""
    caller, n = token[1:].split("-")
    return int(caller), int(n)


def record_run(report: SoakReport, token: str) -> None:
    """A device began to execute the task ``token`` (a ``run`` line of the device side)."""
    _bump(report.executions, *_parse(token))


def record_completed(report: SoakReport, token: str) -> None:
    """The call of task ``token`` returned a TaskResult that said completed."""
    _bump(report.completed, *_parse(token), 1)


def record_overlap(report: SoakReport, running: int) -> None:
    """The most tasks running at once on one device reached ``running`` (an ``overlap`` line)."""
    report.peak_overlap = max(report.peak_overlap, running)


class SoakRig:
    """The soak's device side (the AIP server and the agents: :class:`.device_side.DeviceSide`) and the fault proxy
    in front of it (:mod:`.proxy_process`), each in a process of its own. The managers reach the server through
    the proxy; the agents connect to it directly. :func:`open_soak_rig` starts both."""

    def __init__(self, device_side: DeviceSide, proxy: ProxyProcess) -> None:
        self.device_side = device_side
        self.proxy = proxy

    @property
    def manager_url(self) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}/ws?token={TOKEN}"

    def device(self, device_id: str, **fields: object) -> DeviceConfig:
        return DeviceConfig(device_id=device_id, server_url=self.manager_url, **fields)  # type: ignore[arg-type]

    async def stop_server(self) -> None:
        """Stop the server, with the proxy's port closed first, so that the managers, like the agents, find the
        port closed (connection refused) rather than a proxy that accepts and then resets."""
        await self.proxy.close_port()
        await self.device_side.stop_server()

    async def start_server(self) -> None:
        await self.device_side.start_server()
        await self.proxy.open_port()


@asynccontextmanager
async def open_soak_rig(nursery: trio.Nursery, ids: list[str], report: SoakReport) -> AsyncIterator[SoakRig]:
    """Start the device side (its records go to ``report``) in ``nursery`` and the proxy process in front of it.
    The proxy is killed when the block ends; :meth:`.device_side.DeviceSide.stop` the device side before reading
    the report (it ends with ``nursery`` otherwise, killed)."""
    device_side = DeviceSide(ids, on_run=partial(record_run, report), on_overlap=partial(record_overlap, report))
    with trio.fail_after(DEVICE_SIDE_START_WITHIN):
        await nursery.start(device_side.run, name="device-side")
    async with open_proxy_process("faults", device_side.port) as proxy:
        yield SoakRig(device_side, proxy)


def process_usage() -> tuple[int, int]:
    process = psutil.Process()
    return int(process.memory_info().rss), process.num_fds()


#: How often the wait for "everything back" looks (seconds): fine against a bound of seconds, and cheap (at 500
#: devices, reading every profile every 50 ms took a tenth of the soak process's time).
POLL_EVERY = 0.1


async def _all_back(manager: ConstellationDeviceManager, ids: list[str]) -> None:
    """Until every device is IDLE or BUSY (a BUSY one has a live, registered link)."""
    while True:
        states = manager.get_all_device_states()
        if all(d in states and states[d].status in (DeviceStatus.IDLE, DeviceStatus.BUSY) for d in ids):
            return
        await trio.sleep(POLL_EVERY)


#: How a caller starts one task: ``assign(task_id, device_id, request)``, a manager's or a fleet member's method.
Assign = Callable[[str, str, str], Awaitable[TaskResult]]


def next_task(number: int, n: int, ids: Sequence[str], rng: random.Random) -> tuple[str, str, str]:
    """Caller ``number``'s ``n``-th task: its token ``c<number>-<n>`` (its id, and what the device records), a
    random device, and a ``work`` request of 0-200 ms. Shared by the soak's callers and member C's."""
    token = f"c{number}-{n}"
    device_id = rng.choice(ids)
    request = json.dumps({"tool_name": "work", "parameters": {"token": token, "ms": rng.randint(0, 200)}})
    return token, device_id, request


def result_kind(result: TaskResult) -> str:
    """How a TaskResult is counted: its status if it succeeded, else ``failed/<error type>``."""
    return result.status if result.ok else f"failed/{result.error_type}"


async def run_caller(
    number: int,
    assign: Assign,
    ids: list[str],
    rng: random.Random,
    report: SoakReport,
    refusals: tuple[type[Exception], ...] = (),
) -> None:
    """Tasks one after another on random devices until cancelled. Each call must end in one TaskResult, or in one
    of the documented ``refusals`` (counted by type); any other exception is a violation."""
    n = 0
    while True:
        n += 1
        token, device_id, request = next_task(number, n, ids, rng)
        report.calls += 1
        began = trio.current_time()
        try:
            result = await assign(token, device_id, request)
        except refusals as exc:
            report.refusals[type(exc).__name__] += 1
            report.note_call_time(trio.current_time() - began)
            await trio.sleep(0.1)
            continue
        except Exception as exc:
            report.raised.append(f"{type(exc).__name__}: {exc}"[:300])
            report.note_call_time(trio.current_time() - began)
            await trio.sleep(0.1)
            continue
        except BaseException:
            # Cancelled with the load — bare, or in a group of Cancelled when it crossed a nursery inside the call.
            report.cut_short += 1
            raise
        report.note_call_time(trio.current_time() - began)
        report.results += 1
        assert isinstance(result, TaskResult)
        report.results_by_kind[result_kind(result)] += 1
        if result.ok:
            record_completed(report, token)
        await trio.sleep(rng.uniform(0.0, 0.05))


async def inject_rig_fault(fault: str, *, rig: SoakRig, ids: list[str], rng: random.Random) -> None:
    """Inject one of :data:`FAULTS` and undo it (an agent or the server restarted, the proxy restored)."""
    proxy = rig.proxy
    if fault == "agent_restart":
        device_id = rng.choice(ids)
        await rig.device_side.kill_agent(device_id)
        await trio.sleep(rng.uniform(0.2, 1.5))
        await rig.device_side.start_agent(device_id)
    elif fault == "server_restart":
        await rig.stop_server()
        await trio.sleep(rng.uniform(0.2, 1.0))
        await rig.start_server()
    elif fault == "cut":
        await proxy.cut()
    elif fault == "blackhole":
        await proxy.blackhole()
        await trio.sleep(rng.uniform(1.0, 4.0))
        await proxy.restore()
    elif fault == "stalled_handshakes":
        await proxy.stall_handshakes()  # (and the live links cut, so that every manager link reconnects into it)
        await trio.sleep(rng.uniform(0.5, 2.0))
        await proxy.release_handshakes()


async def run_schedule(
    report: SoakReport,
    rng: random.Random,
    *,
    seconds: float,
    warmup: float,
    fault_every: float,
    faults: Sequence[str],
    inject: Callable[[str], Awaitable[None]],
    all_back: Callable[[], Awaitable[None]],
    fault_warmup: float = 0.0,
    on_sample: Callable[[float], None] | None = None,
    on_start: Callable[[], None] | None = None,
    follow_ups: Mapping[str, str] | None = None,
    trace_memory: int | None = None,
    describe: Callable[[], Awaitable[list[str]]] | None = None,
    server_usage: Callable[[], tuple[int, int] | None] | None = None,
) -> None:
    """The fault loop, with the load already running.

    ``warmup`` seconds of load alone (RSS then: ``report.rss_load``), then a fault every ``fault_every`` seconds
    (±50 %): a first round of every kind in ``faults`` once, shuffled, then kinds drawn at random. Each fault is
    followed by the wait until ``all_back()`` returns — within ``report.recovery_bound``, or it is a violation (and
    the soak carries on once it is back, for 60 s at most). A fault in ``follow_ups`` is followed, once everything
    is back, by the fault it names (its own recovery measured from its own end): a member killed, then started
    again. A sample of RSS and descriptors every 30 s from the first fault on (``on_start`` and ``on_sample`` let
    other processes be sampled along).

    The RSS/fd baseline is taken after ``fault_warmup`` seconds of faults, and not before the first round is done
    (with 0: before the first fault); then the faults go on for ``seconds``, and the end figures are taken with
    everything still running as at the baseline. Why faults belong to the warm-up: the first reconnect storm of
    each kind raises the allocators' high-water marks (glibc's free lists, pymalloc's arenas, the Redis client's
    thread arenas), which then stay though nothing is kept; a leak keeps climbing after them, and that is what
    the drift from this baseline shows. With ``trace_memory`` (see :class:`.memory.MemoryTrace`), its baseline is
    taken with the RSS baseline, it is sampled along, and its figures (after the RSS end: they trim the heap) go
    to ``report.memory``. ``describe``, when a fault has not recovered within the bound, says what is not back
    (kept in ``report.not_back`` for the first :data:`MAX_NOT_BACK` such faults). ``server_usage`` gives the
    device side's RSS and descriptors, taken and sampled along with this process's."""
    memory = MemoryTrace(trace_memory) if trace_memory is not None else None
    await trio.sleep(warmup)
    report.rss_load, _ = process_usage()
    started = trio.current_time()
    if on_start is not None:
        on_start()
    first_round = rng.sample(list(faults), len(faults))
    deadline = math.inf
    next_sample = started + 30.0
    while True:
        now = trio.current_time()
        if deadline == math.inf and now - started >= fault_warmup and (not first_round or fault_warmup <= 0):
            report.warm_at = now - started
            if memory is not None:
                memory.baseline(round(report.warm_at))
            report.rss_warm, report.fds_warm = process_usage()
            if server_usage is not None and (usage := server_usage()) is not None:
                report.server_rss_warm, report.server_fds_warm = usage
            deadline = now + seconds
        if now >= deadline:
            break
        if now >= next_sample:
            elapsed = round(now - started)
            rss, fds = process_usage()
            report.samples.append((elapsed, round(rss / (1 << 20), 1), fds))
            if server_usage is not None and (usage := server_usage()) is not None:
                report.server_samples.append((elapsed, round(usage[0] / (1 << 20), 1), usage[1]))
            if memory is not None and deadline != math.inf:
                memory.sample(elapsed)
            if on_sample is not None:
                on_sample(elapsed)
            next_sample += 30.0
        await trio.sleep(rng.uniform(0.5, 1.5) * fault_every)
        if trio.current_time() >= deadline:
            break
        fault: str | None = first_round.pop() if first_round else rng.choice(faults)
        while fault is not None:
            report.faults[fault] += 1
            await inject(fault)
            ended = trio.current_time()
            with trio.move_on_after(report.recovery_bound) as waiting:
                await all_back()
            if waiting.cancelled_caught:
                report.unrecovered.append(fault)
                if describe is not None and len(report.not_back) < MAX_NOT_BACK:
                    report.not_back.append((fault, await describe()))
                with trio.move_on_after(60):
                    await all_back()  # carry on from a clean state
            report.recoveries.append((fault, trio.current_time() - ended))
            fault = (follow_ups or {}).get(fault)
    report.rss_end, report.fds_end = process_usage()
    if server_usage is not None and (usage := server_usage()) is not None:
        report.server_rss_end, report.server_fds_end = usage
    if memory is not None:
        report.memory = memory.finish()


async def run_soak(
    *,
    seconds: float,
    devices: int = 20,
    callers: int = 4,
    seed: int = 1,
    fault_every: float = 4.0,
    warmup: float = 5.0,
    fault_warmup: float = 0.0,
    faults: Sequence[str] = FAULTS,
    trace_memory: int | None = None,
) -> SoakReport:
    """Run the soak for ``seconds`` (after ``warmup`` of load and ``fault_warmup`` of faults: see
    :func:`run_schedule`) and return what it saw; see the module docstring. ``faults``: the kinds drawn (all by
    default; fewer to find which one drives a drift); ``trace_memory``: see :class:`.memory.MemoryTrace`."""
    report = SoakReport(devices=devices, callers=callers)
    rng = random.Random(seed)
    ids = [f"soak-{i:03d}" for i in range(devices)]
    report.recovery_bound = RECOVERY_BOUND
    started = time.monotonic()
    async with trio.open_nursery() as nursery, open_soak_rig(nursery, ids, report) as rig:
        async with ConstellationDeviceManager(task_name="soak", **MANAGER_SETTINGS) as manager:  # type: ignore[arg-type]
            manager.add_devices(rig.device(device_id, max_retries=1000) for device_id in ids)
            async with trio.open_nursery() as load:
                with trio.fail_after(60):
                    await _all_back(manager, ids)
                for number in range(callers):
                    load.start_soon(
                        run_caller, number, manager.assign_task_to_device, ids, random.Random(rng.random()), report
                    )
                await run_schedule(
                    report,
                    rng,
                    seconds=seconds,
                    warmup=warmup,
                    fault_warmup=fault_warmup,
                    fault_every=fault_every,
                    faults=faults,
                    inject=partial(inject_rig_fault, rig=rig, ids=ids, rng=rng),
                    all_back=partial(_all_back, manager, ids),
                    trace_memory=trace_memory,
                    server_usage=rig.device_side.usage,
                )
                # The callers stop; a call in flight is cancelled with them and still counts as one call, one end.
                load.cancel_scope.cancel()
        await rig.device_side.stop()  # its last records read
        nursery.cancel_scope.cancel()
    report.leftover_tasks = sorted(
        task.name for n in trio.lowlevel.current_task().child_nurseries for task in n.child_tasks
    )
    report.seconds = time.monotonic() - started
    return report
