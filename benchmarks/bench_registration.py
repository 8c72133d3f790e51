"""How fast galaxy_trio's manager brings a fleet to IDLE, and what each managed device costs it in CPU and memory.

Usage: ``python benchmarks/bench_registration.py --devices N [N ...] [--repeat R] [--single-repeat S]
[--profile FILE] [--heartbeat-interval S] [--timeout S] [--device-processes P] [--hold S] [--logs DIR]
[--out FILE]``

For each fleet size N, the device side — an AIP server and N device agents — is started in separate processes
with ``benchmarks/_device_side.py`` (one process below 1,000 devices; from 1,000 on, two processes, each an AIP
server with half the agents, because the machine has two cores and one process cannot hold 3 x 10,000 sockets
under a 20,000 open-files limit; ``--device-processes P`` asks for P). Once every agent is registered, a fresh
manager process (this script, run with ``--worker``) times, R times with a fresh
:class:`ConstellationDeviceManager` each:

- **to all IDLE**: from ``add_devices`` (every device as a :class:`DeviceConfig`, token in the URL) until every
  device is IDLE (``wait_for_device`` on each), with deadlines far above the run time so that nothing retries;
- **per device**: from the device's first PHASE ``connect`` event to its IDLE status event (the manager's own
  event stream, wall-clock stamps), reported as p50/p95/p99/max over all devices of all repeats;
- the manager process's **CPU seconds** (``time.process_time``) over the same span, of which **GC seconds** spent
  in Python's cyclic garbage collector (``gc.callbacks``), its **peak RSS** (``ru_maxrss``, timed runs only) and
  **RSS per device**: (RSS with N devices IDLE - RSS before the manager) / N, psutil, first repeat, after one
  untimed single-device warm-up run so that lazily built module state is not billed to devices;
- the **device side's CPU seconds** (psutil, user + system, each device-side process) over the same span: the
  manager and the device side share the machine's cores, so this says how much of the wall time is whose.

N = 1 is "one device to IDLE", repeated ``--single-repeat`` times (default 50) against the same device side.
Figures are medians over the repeats. Targets (2-core machine, loopback): one device <= 3 ms median; 100 devices
<= 0.15 s; 1,000 <= 2 s; 10,000 <= 25 s; an idle managed device <= 30 KiB. UFO Galaxy on the same kind of
machine: one device 66 ms, 100 devices 1.12 s. Only failures change the exit status: a device not IDLE, or the
manager raising when it is closed (reported with the figures, which are complete by then).

``--profile FILE`` adds one untimed run at the largest N under pyinstrument, writes its report to FILE (text) and
prints the top 10 functions by self time and galaxy_trio's top 10 by inclusive time (also in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import _device_side
import msgspec
import psutil
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig, ManagerSettings
from galaxy_trio.manager import DeviceStatus, EventKind
from galaxy_trio.redact import url_with_token
from galaxy_trio.runtime import tune_gc

#: Seconds to all IDLE that we aim for, by fleet size.
TARGET_S = {1: 0.003, 100: 0.15, 1000: 2.0, 10000: 25.0}
#: UFO Galaxy's figures on the same kind of machine (asyncio + websockets + pydantic), by fleet size.
UFO_S = {1: 0.066, 100: 1.12}
#: Resident memory one idle managed device may cost the manager.
TARGET_KIB_PER_DEVICE = 30.0
#: From this many devices on, the device side is split over two processes (the machine has two cores).
SPLIT_FROM = 1000
#: Deadlines so generous that nothing times out and retries: a retry would measure the backoff, not the manager.
GENEROUS_S = 300.0
#: The library's heartbeat interval, used unless --heartbeat-interval says otherwise.
_DEFAULT_HEARTBEAT = ManagerSettings().heartbeat_interval
#: This script: the orchestrator starts it again as the manager worker.
SCRIPT = Path(__file__).resolve()


# --- the manager process (``--worker``) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shard:
    """One device-side process: its server's URL (no token), its device-id prefix and how many devices it runs."""

    url: str
    prefix: str
    count: int

    def device_ids(self) -> list[str]:
        return [f"{self.prefix}{index}" for index in range(self.count)]


def _settings(task_name: str, heartbeat_interval: float | None) -> ManagerSettings:
    settings = ManagerSettings(
        task_name=task_name,
        connect_timeout=GENEROUS_S,
        register_timeout=GENEROUS_S,
        telemetry_timeout=GENEROUS_S,
    )
    if heartbeat_interval is not None:
        settings = msgspec.structs.replace(settings, heartbeat_interval=heartbeat_interval)
    return settings


def _configs(shards: Sequence[Shard], token: str) -> list[DeviceConfig]:
    return [
        DeviceConfig(device_id=device_id, server_url=url_with_token(shard.url, token), max_retries=3)
        for shard in shards
        for device_id in shard.device_ids()
    ]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


class GcClock:
    """Time spent in Python's cyclic garbage collector, and collections per generation, while installed.

    With tens of thousands of long-lived objects per thousand devices, full collections can take a visible share
    of the manager's CPU; this tells that share apart from the manager's own work.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self.seconds_by_generation = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            spent = time.perf_counter() - self._started
            self.seconds += spent
            self.collections[info["generation"]] += 1
            self.seconds_by_generation[info["generation"]] += spent

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


def _cpu_of(processes: Sequence[psutil.Process]) -> list[float]:
    """CPU seconds (user + system) so far of each device-side process (0 for one that is gone)."""
    seconds = []
    for process in processes:
        try:
            times = process.cpu_times()
            seconds.append(float(times.user + times.system))
        except psutil.Error:
            seconds.append(0.0)
    return seconds


async def run_fleet(
    configs: Sequence[DeviceConfig],
    task_name: str,
    *,
    heartbeat_interval: float | None,
    profiler: Any = None,
    device_pids: Sequence[int] = (),
    hold_s: float = 0.0,
) -> dict[str, Any]:
    """One timed run with a fresh manager: every device to IDLE, then a clean close. Returns its figures.

    Bound it with the caller's cancel scope (the worker uses ``--timeout``). A pyinstrument ``profiler`` given
    here records exactly the timed span, not the manager's start or close.
    """
    ids = [config.device_id for config in configs]
    # Bookkeeping allocated before the RSS baseline, so that only the manager's own state counts per device.
    connect_at: dict[str, float] = dict.fromkeys(ids, math.nan)
    idle_at: dict[str, float] = dict.fromkeys(ids, math.nan)
    attempts = dict.fromkeys(ids, 0)
    last_phase = dict.fromkeys(ids, "")
    all_idle_recorded = trio.Event()
    device_processes = [psutil.Process(pid) for pid in device_pids]
    gc.collect()
    rss_before = _rss()
    figures: dict[str, Any] = {}
    closing = math.nan
    try:
        async with ConstellationDeviceManager(settings=_settings(task_name, heartbeat_interval)) as manager:
            with manager.subscribe(buffer=16 * len(ids) + 64) as events:
                left_idle = [0]

                async def record() -> None:
                    idle_recorded = 0
                    async for event in events:
                        if event.kind is EventKind.STATUS and event.old_status is DeviceStatus.IDLE:
                            left_idle[0] += 1  # (during --hold: a missed heartbeat, a dropped link)
                        if event.kind is EventKind.PHASE:
                            last_phase[event.device_id] = event.reason or ""
                        if event.kind is EventKind.PHASE and event.reason == "connect":
                            attempts[event.device_id] += 1
                            if math.isnan(connect_at[event.device_id]):
                                connect_at[event.device_id] = event.at
                        elif event.kind is EventKind.STATUS and event.new_status is DeviceStatus.IDLE:
                            if math.isnan(idle_at[event.device_id]):
                                idle_at[event.device_id] = event.at
                                idle_recorded += 1
                                if idle_recorded == len(ids):
                                    all_idle_recorded.set()

                async with trio.open_nursery() as recorder:
                    recorder.start_soon(record)
                    if profiler is not None:
                        profiler.start()
                    usage_before = resource.getrusage(resource.RUSAGE_SELF)
                    device_cpu_before = _cpu_of(device_processes)
                    cpu_before = time.process_time()
                    started = time.perf_counter()
                    with GcClock() as gc_clock:
                        manager.add_devices(configs)
                        try:
                            for device_id in ids:  # wait_until_settled, minus building N snapshots at the end
                                await manager.wait_for_device(device_id)
                        except BaseException:
                            _report_unsettled(task_name, manager.get_all_devices(), last_phase)
                            raise
                    elapsed = time.perf_counter() - started
                    if profiler is not None:
                        profiler.stop()
                    cpu = time.process_time() - cpu_before
                    device_cpu = [a - b for a, b in zip(_cpu_of(device_processes), device_cpu_before, strict=True)]
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    rss_idle = _rss()
                    # The recorder may be one scheduling round behind the manager; it sees the last IDLE soon after.
                    with trio.move_on_after(5):
                        await all_idle_recorded.wait()
                    hold = await _hold(manager, ids, hold_s, attempts, left_idle) if hold_s > 0 else None
                    recorder.cancel_scope.cancel()
                dropped = events.dropped
            statuses: dict[str, int] = {}
            for profile in manager.get_all_devices().values():
                statuses[profile.status.value] = statuses.get(profile.status.value, 0) + 1
            figures = {
                "devices": len(ids),
                "total_s": elapsed,
                "cpu_s": cpu,
                "cpu_user_s": usage.ru_utime - usage_before.ru_utime,
                "cpu_sys_s": usage.ru_stime - usage_before.ru_stime,
                # Over the same span: each device-side process (its server and agents), whose CPU bounds the wall
                # time once it exceeds the manager's (two cores for everything).
                "device_cpu_s": device_cpu,
                "gc_s": gc_clock.seconds,
                "gc_collections": gc_clock.collections,
                "gc_s_by_generation": gc_clock.seconds_by_generation,
                "rss_before_bytes": rss_before,
                "rss_idle_bytes": rss_idle,
                "rss_per_device_kib": (rss_idle - rss_before) / len(ids) / 1024.0,
                "idle": statuses.get(DeviceStatus.IDLE.value, 0),
                "statuses": statuses,
                "retries": sum(attempts.values()) - len(ids),
                "events_dropped": dropped,
                "close_error": None,
                "hold": hold,
            }
            closing = time.perf_counter()
    except Exception as exc:
        if not figures:
            raise
        # The figures are in; what failed is closing the manager. Report it rather than lose the run.
        figures["close_error"] = describe_error(exc)
    figures["close_s"] = time.perf_counter() - closing
    per_device = sorted(
        (idle_at[i] - connect_at[i]) * 1000.0 for i in ids if not (math.isnan(idle_at[i]) or math.isnan(connect_at[i]))
    )
    figures["per_device_ms"] = per_device
    return figures


async def _hold(
    manager: ConstellationDeviceManager,
    ids: Sequence[str],
    hold_s: float,
    attempts: dict[str, int],
    left_idle: list[int],
) -> dict[str, Any]:
    """Keep the fleet IDLE for ``hold_s`` seconds with its heartbeats running (``--hold``); what that cost."""
    attempts_before, left_before = sum(attempts.values()), left_idle[0]
    cpu_before = time.process_time()
    await trio.sleep(hold_s)
    cpu = time.process_time() - cpu_before
    idle = sum(state.status is DeviceStatus.IDLE for state in manager.get_all_device_states().values())
    rss = _rss()
    return {
        "seconds": hold_s,
        "idle_at_end": idle,
        "left_idle": left_idle[0] - left_before,
        "reconnects": sum(attempts.values()) - attempts_before,
        "cpu_s": cpu,
        "cpu_ms_per_device_minute": cpu * 1000 / len(ids) / (hold_s / 60),
        "rss_at_end_bytes": rss,
    }


def _report_unsettled(task_name: str, profiles: dict[str, Any], last_phase: dict[str, str]) -> None:
    """When a run is given up (``--timeout``), say where its devices stand: status and last phase begun."""
    where: dict[str, int] = {}
    for device_id, profile in profiles.items():
        key = f"{profile.status.value} (phase {last_phase.get(device_id) or '-'})"
        where[key] = where.get(key, 0) + 1
    print(f"run {task_name!r} did not settle; devices by status: {where}", file=sys.stderr, flush=True)


def describe_error(exc: BaseException) -> str:
    """One line for an exception or a (nested) exception group: its leaves counted by type and message."""
    leaves: dict[str, int] = {}

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            text = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
            text = re.sub(r"payload=b?'[^']*'|payload=b?\"[^\"]*\"", "payload=...", text)[:200]
            leaves[text] = leaves.get(text, 0) + 1

    walk(exc)
    return "; ".join(f"{count} x {text}" for text, count in sorted(leaves.items(), key=lambda item: -item[1]))


Key = tuple[str, str, int]


def _frame_times(session: Any) -> tuple[float, dict[Key, float], dict[Key, float]]:
    """Total time of a pyinstrument session, and self and inclusive time per function.

    ``[self]``/``[await]`` pseudo-frames are folded into their parents; a function that recurses is counted once
    per stack in its inclusive time.
    """
    root = session.root_frame()
    self_time: dict[Key, float] = {}
    inclusive: dict[Key, float] = {}
    synthetic = {"[self]", "[await]", "[out-of-context]"}

    def walk(frame: Any, outer: frozenset[Key]) -> None:
        children = [child for child in frame.children if child.function not in synthetic]
        key = (frame.function, frame.file_path_short or "", frame.line_no or 0)
        self_time[key] = self_time.get(key, 0.0) + frame.time - sum(child.time for child in children)
        if key not in outer:
            inclusive[key] = inclusive.get(key, 0.0) + frame.time
        for child in children:
            walk(child, outer | {key})

    if root is None:
        return 0.0, self_time, inclusive
    walk(root, frozenset())
    return float(root.time), self_time, inclusive


def _ranked(times: dict[Key, float], total: float, top: int, *, only: str = "") -> list[dict[str, Any]]:
    chosen = [(key, seconds) for key, seconds in times.items() if only in key[1]]
    chosen.sort(key=lambda item: item[1], reverse=True)
    return [
        {
            "function": f"{path}:{line} {function}",
            "seconds": seconds,
            "percent": 100.0 * seconds / total if total else 0,
        }
        for (function, path, line), seconds in chosen[:top]
    ]


async def profile_fleet(configs: Sequence[DeviceConfig], heartbeat_interval: float | None) -> dict[str, Any]:
    """One run under pyinstrument (all tasks: trio runs them on one thread); ``report`` holds its text report."""
    from pyinstrument import Profiler  # only needed for --profile

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    figures = await run_fleet(configs, "profiled", heartbeat_interval=heartbeat_interval, profiler=profiler)
    session = profiler.last_session
    assert session is not None
    total, self_time, inclusive = _frame_times(session)
    return {
        "devices": len(configs),
        "profiled_s": session.duration,
        "profiled_cpu_s": session.cpu_time,
        "report": profiler.output_text(unicode=True, color=False, show_all=False),
        "total_s": figures["total_s"],
        "hot_spots": _ranked(self_time, total, 10),
        "galaxy_trio_inclusive": _ranked(inclusive, total, 10, only="galaxy_trio/"),
    }


async def worker(spec: dict[str, Any], token: str) -> dict[str, Any]:
    """The manager process's whole job for one fleet size: warm-up, R timed runs, an optional profiled run."""
    shards = [Shard(**shard) for shard in spec["shards"]]
    configs = _configs(shards, token)
    timeout = float(spec["timeout"])
    heartbeat_interval: float | None = spec["heartbeat_interval"]
    device_pids: list[int] = spec.get("device_pids", [])
    hold_s = float(spec.get("hold_s", 0.0))
    # Warm-up: one device, untimed, so that first-use costs (lazy imports, caches) are paid before measuring.
    with trio.fail_after(timeout):
        await run_fleet(configs[:1], "warmup", heartbeat_interval=heartbeat_interval)
    runs = []
    for repeat in range(int(spec["repeat"])):
        with trio.fail_after(timeout + hold_s):
            runs.append(
                await run_fleet(
                    configs,
                    f"bench{repeat}",
                    heartbeat_interval=heartbeat_interval,
                    device_pids=device_pids,
                    hold_s=hold_s,
                )
            )
    # Peak RSS of the timed runs, before the profiler (which keeps every sample in memory) runs.
    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    profile = None
    if spec.get("profile"):
        with trio.fail_after(timeout):
            profile = await profile_fleet(configs, heartbeat_interval)
    return {
        "runs": runs,
        "peak_rss_bytes": peak_rss_bytes,
        "nofile": dict(zip(("soft", "hard"), _device_side.nofile_limits(), strict=True)),
        "profile": profile,
    }


#: How the manager process sets up the garbage collector (--gc); passed to each worker in its spec.
GC_MODE = "cli"


def worker_main(spec_json: str) -> int:
    token = _device_side.start_child_process("--worker")
    if token is None:
        return 2
    spec = json.loads(spec_json)
    if spec.get("gc", "cli") == "cli":
        tune_gc()  # as `python -m galaxy_trio run` does (galaxy_trio/runtime.py)
    try:
        result = trio.run(worker, spec, token)
    except trio.TooSlowError:
        print(f"a run did not bring every device to IDLE within {spec['timeout']:g} s (--timeout)", file=sys.stderr)
        return 1
    profile = result["profile"]
    if profile is not None:
        out = Path(spec["profile"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(profile.pop("report"), encoding="utf-8")
        profile["file"] = str(out)
    print(json.dumps(result), flush=True)
    return 0


# --- the orchestrator ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How one fleet size is laid out over processes, or why it cannot run here."""

    devices: int
    shard_counts: tuple[int, ...]
    skipped: str | None = None

    @property
    def layout(self) -> str:
        if not self.shard_counts:
            return "-"
        counts = sorted(set(self.shard_counts))
        agents = str(counts[0]) if len(counts) == 1 else "/".join(str(c) for c in self.shard_counts)
        return f"{len(self.shard_counts)}x(server+{agents})"


class WorkerFailed(Exception):
    """The manager process for one fleet size failed (its stderr, already shown, says why)."""


def plan(devices: int, hard_limit: int, port_range: int, processes: int | None = None) -> Plan:
    """Split the device side so that each process fits under the open-files limit and the ephemeral port range.

    ``processes`` (``--device-processes``) asks for at least that many device-side processes; by default one
    below :data:`SPLIT_FROM` devices and two from there on. More are used when one would not fit.
    """
    manager_fds = devices + _device_side.FD_OVERHEAD
    if manager_fds > hard_limit:
        return Plan(
            devices,
            (),
            f"the manager needs ~{manager_fds} open files (one per link) but the hard limit is {hard_limit}",
        )
    shards = processes if processes is not None else (2 if devices >= SPLIT_FROM else 1)
    shards = max(1, min(shards, devices))
    while True:
        share = math.ceil(devices / shards)
        fits_fds = _device_side.fds_needed(agents=share, server_links=2 * share) <= hard_limit
        fits_ports = 2 * share <= port_range  # agents' and manager's links to one server port, all from 127.0.0.1
        if fits_fds and fits_ports:
            break
        shards += 1
    base, extra = divmod(devices, shards)
    return Plan(devices, tuple(base + (1 if index < extra else 0) for index in range(shards)))


def ephemeral_port_range() -> int:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(high) - int(low) + 1
    except (OSError, ValueError):
        return 28232  # Linux's default 32768-60999


async def measure(
    fleet: Plan,
    *,
    repeat: int,
    run_limit: float,
    heartbeat_interval: float | None,
    profile: Path | None,
    logs: Path,
    log_level: str,
    hold_s: float = 0.0,
) -> dict[str, Any]:
    """Start the device side for one fleet size, run the manager worker against it, stop the device side."""
    token = secrets.token_urlsafe(24)
    sides: list[_device_side.DeviceSide] = []
    ready_within = 60.0 + fleet.devices * 0.02
    try:
        async with trio.open_nursery() as starting:

            async def start(index: int, count: int) -> None:
                side = await _device_side.start_device_side(
                    ["--devices", str(count), "--port", "0", "--prefix", f"s{index}-dev-", "--log-level", log_level],
                    token=token,
                    log_path=logs / f"device_side_{fleet.devices}_{index}.log",
                    ready_within=ready_within,
                )
                sides.append(side)

            for index, count in enumerate(fleet.shard_counts):
                starting.start_soon(start, index, count)
        sides.sort(key=lambda side: str(side.ready["prefix"]))
        spec = {
            "shards": [{"url": s.url, "prefix": s.ready["prefix"], "count": s.ready["devices"]} for s in sides],
            "device_pids": [side.process.pid for side in sides],
            "hold_s": hold_s,
            "repeat": repeat,
            "timeout": run_limit,
            "heartbeat_interval": heartbeat_interval,
            "profile": str(profile) if profile is not None else None,
            "gc": GC_MODE,
        }
        completed = await trio.run_process(
            [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
            env={**os.environ, _device_side.TOKEN_ENV: token},
            capture_stdout=True,
            check=False,
        )
        if completed.returncode != 0:
            raise WorkerFailed(f"the manager worker for {fleet.devices} devices exited with {completed.returncode}")
        result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
        result["device_side"] = [
            {key: side.ready[key] for key in ("pid", "devices", "startup_s", "nofile")} for side in sides
        ]
        return result
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as stopping:
                for side in sides:
                    stopping.start_soon(side.stop)


def summarise(fleet: Plan, result: dict[str, Any]) -> dict[str, Any]:
    """The row for one fleet size: medians over repeats, percentiles over every device of every repeat."""
    runs = result["runs"]
    pooled = sorted(value for run in runs for value in run["per_device_ms"])
    failed = [run for run in runs if run["idle"] != fleet.devices]
    total = statistics.median(run["total_s"] for run in runs)
    target = TARGET_S.get(fleet.devices)
    return {
        "devices": fleet.devices,
        "layout": fleet.layout,
        "device_processes": len(fleet.shard_counts),
        "agents_per_process": list(fleet.shard_counts),
        "runs": len(runs),
        "total_s_median": total,
        "total_s_all": [run["total_s"] for run in runs],
        "target_s": target,
        "meets_target": None if target is None else total <= target,
        "ufo_s": UFO_S.get(fleet.devices),
        "per_device_ms": {
            "p50": percentile(pooled, 50),
            "p95": percentile(pooled, 95),
            "p99": percentile(pooled, 99),
            "max": pooled[-1] if pooled else math.nan,
            "samples": len(pooled),
        },
        "cpu_s_median": statistics.median(run["cpu_s"] for run in runs),
        "cpu_user_s_median": statistics.median(run["cpu_user_s"] for run in runs),
        "cpu_sys_s_median": statistics.median(run["cpu_sys_s"] for run in runs),
        "device_cpu_s_median": statistics.median(sum(run["device_cpu_s"]) for run in runs),
        "device_cpu_s_by_process": [run["device_cpu_s"] for run in runs],
        "holds": [run["hold"] for run in runs if run.get("hold")],
        "gc_s_median": statistics.median(run["gc_s"] for run in runs),
        "gc_collections": [run["gc_collections"] for run in runs],
        "gc_s_by_generation": [run["gc_s_by_generation"] for run in runs],
        "close_s_median": statistics.median(run["close_s"] for run in runs),
        "peak_rss_mib": result["peak_rss_bytes"] / 2**20,
        "rss_per_device_kib": runs[0]["rss_per_device_kib"],
        "rss_before_mib": runs[0]["rss_before_bytes"] / 2**20,
        "rss_idle_mib": runs[0]["rss_idle_bytes"] / 2**20,
        "retries": sum(run["retries"] for run in runs),
        "events_dropped": sum(run["events_dropped"] for run in runs),
        "failed_runs": len(failed),
        "close_errors": [run["close_error"] for run in runs if run["close_error"]],
        "statuses": [run["statuses"] for run in runs],
        "device_side": result["device_side"],
        "manager_nofile": result["nofile"],
        "profile": result["profile"],
    }


def _seconds(value: float) -> str:
    return f"{value * 1000:.2f} ms" if value < 0.1 else f"{value:.3f} s"


def _target(row: dict[str, Any]) -> str:
    if row["target_s"] is None:
        return "-"
    verdict = "met" if row["meets_target"] else "MISSED"
    return f"<= {_seconds(row['target_s'])} ({verdict})"


def render(
    rows: Sequence[dict[str, Any]],
    skipped: Sequence[Plan],
    nofile: tuple[int, int],
    heartbeat_interval: float | None,
) -> str:
    table = _common.markdown_table(
        [
            "devices",
            "layout",
            "runs",
            "to all IDLE",
            "target",
            "UFO",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "CPU s",
            "device side CPU s",
            "GC s",
            "peak RSS MiB",
            "KiB/device",
            "retries",
        ],
        [
            [
                row["devices"],
                row["layout"],
                row["runs"],
                _seconds(row["total_s_median"]),
                _target(row),
                "-" if row["ufo_s"] is None else _seconds(row["ufo_s"]),
                f"{row['per_device_ms']['p50']:.2f}",
                f"{row['per_device_ms']['p95']:.2f}",
                f"{row['per_device_ms']['p99']:.2f}",
                f"{row['per_device_ms']['max']:.2f}",
                f"{row['cpu_s_median']:.3f}",
                f"{row['device_cpu_s_median']:.3f}",
                f"{row['gc_s_median']:.3f}",
                f"{row['peak_rss_mib']:.1f}",
                f"{row['rss_per_device_kib']:.1f}",
                row["retries"],
            ]
            for row in rows
        ],
    )
    lines = [table, ""]
    lines.append(
        "Layout: the manager runs alone in its own process (this script with --worker, a fresh one per fleet size); "
        "the device side runs in 'layout' processes, each one AIP server plus its agents (_device_side.py). "
        "'CPU s' is the manager's, 'device side CPU s' all device-side processes' over the same span (medians)."
    )
    lines.append(
        f"Manager settings: connect/register/telemetry timeouts {GENEROUS_S:g} s, heartbeat_interval "
        f"{_DEFAULT_HEARTBEAT if heartbeat_interval is None else heartbeat_interval:g} s, max_retries 3; per-device "
        "time from the first PHASE connect event to IDLE."
    )
    lines.append(
        f"Open files: soft limit raised to the hard limit ({nofile[1]}) in every process started; a device-side "
        "process needs ~3 per device (agent socket + both server-side links), the manager ~1 per device."
    )
    sized = [row for row in rows if row["devices"] >= 100] or list(rows)
    if sized:
        largest = max(sized, key=lambda row: row["devices"])
        kib = largest["rss_per_device_kib"]
        verdict = "met" if kib <= TARGET_KIB_PER_DEVICE else "MISSED"
        lines.append(
            f"Idle managed device: {kib:.1f} KiB of manager RSS at {largest['devices']} devices "
            f"(target <= {TARGET_KIB_PER_DEVICE:g} KiB: {verdict})."
        )
    for row in rows:
        if row["failed_runs"]:
            lines.append(
                f"FAILED: {row['devices']} devices: not all IDLE in {row['failed_runs']} run(s): {row['statuses']}"
            )
        for error in row["close_errors"]:
            lines.append(f"CLOSE FAILED at {row['devices']} devices (figures above are complete): {error}")
        if row["events_dropped"]:
            lines.append(
                f"note: {row['events_dropped']} events dropped at {row['devices']} devices (per-device figures partial)"
            )
    for row in rows:
        for hold in row["holds"]:
            lines.append(
                f"Held {row['devices']} devices IDLE for {hold['seconds']:g} s: {hold['idle_at_end']} IDLE at the end, "
                f"{hold['left_idle']} left IDLE, {hold['reconnects']} reconnects; manager CPU "
                f"{hold['cpu_ms_per_device_minute']:.3f} ms per device-minute, "
                f"RSS {(hold['rss_at_end_bytes'] / 2**20):.1f} MiB at the end."
            )
    for fleet in skipped:
        lines.append(f"SKIPPED {fleet.devices} devices: {fleet.skipped}")
    for row in rows:
        profile = row["profile"]
        if profile:
            lines.append("")
            lines.append(
                f"Profile of the manager (pyinstrument), {profile['devices']} devices, add_devices to all IDLE: "
                f"{profile['profiled_s']:.3f} s wall, {profile['profiled_cpu_s']:.3f} s CPU under the profiler; "
                f"full report in {profile['file']}. Top 10 by self time:"
            )
            lines.append(
                _common.markdown_table(
                    ["function", "self s", "% of run"],
                    [[h["function"], f"{h['seconds']:.3f}", f"{h['percent']:.1f}"] for h in profile["hot_spots"]],
                )
            )
            lines.append("")
            lines.append("Where that time goes in galaxy_trio's own code (inclusive time, top 10):")
            lines.append(
                _common.markdown_table(
                    ["function", "inclusive s", "% of run"],
                    [
                        [h["function"], f"{h['seconds']:.3f}", f"{h['percent']:.1f}"]
                        for h in profile["galaxy_trio_inclusive"]
                    ],
                )
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 100, 1000], metavar="N", help="fleet sizes")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="timed runs per fleet size (N > 1)")
    parser.add_argument("--single-repeat", type=int, default=50, metavar="S", help="timed runs for N = 1")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="give up on a run after S s")
    parser.add_argument("--profile", type=Path, metavar="FILE", help="profile the largest N; report to FILE")
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        metavar="S",
        help=f"the manager's heartbeat_interval (default: the library's, {_DEFAULT_HEARTBEAT:g} s)",
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the device side's logs (WARNING) in DIR")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="S",
        help="after each timed run (N > 1), keep the fleet IDLE S seconds with its heartbeats and report what left "
        "IDLE, reconnects, and the manager's CPU per device-minute",
    )
    parser.add_argument(
        "--device-processes",
        type=int,
        default=None,
        metavar="P",
        help="device-side processes (each one AIP server and its share of the agents); default 1 below "
        f"{SPLIT_FROM} devices, else 2; more if one would not fit the open-files limit or the port range",
    )
    parser.add_argument(
        "--gc",
        choices=["cli", "default"],
        default="cli",
        help="the manager process's GC thresholds: 'cli' = galaxy_trio.runtime.tune_gc() as the CLI sets them "
        "(default), 'default' = Python's",
    )
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    global GC_MODE
    GC_MODE = args.gc
    if args.worker is None:
        if any(n < 1 for n in args.devices):
            parser.error("--devices: every N must be at least 1")
        if args.repeat < 1 or args.single_repeat < 1:
            parser.error("--repeat and --single-repeat must be at least 1")
        if args.timeout is not None and not args.timeout > 0:
            parser.error("--timeout must be positive")
        if args.heartbeat_interval is not None and not args.heartbeat_interval > 0:
            parser.error("--heartbeat-interval must be positive")
        if args.device_processes is not None and args.device_processes < 1:
            parser.error("--device-processes must be at least 1")
        if not args.hold >= 0:
            parser.error("--hold must be >= 0")
    return args


async def orchestrate(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[Plan]]:
    _, hard = _device_side.raise_nofile_limit()
    port_range = ephemeral_port_range()
    rows: list[dict[str, Any]] = []
    skipped: list[Plan] = []
    sizes = sorted(set(args.devices))
    with tempfile.TemporaryDirectory(prefix="bench_registration_") as scratch:
        logs = args.logs if args.logs is not None else Path(scratch)
        for devices in sizes:
            fleet = plan(devices, hard, port_range, args.device_processes)
            if fleet.skipped is not None:
                skipped.append(fleet)
                print(f"skipping {devices} devices: {fleet.skipped}", file=sys.stderr)
                continue
            print(f"{devices} devices: device side {fleet.layout} ...", file=sys.stderr, flush=True)
            result = await measure(
                fleet,
                repeat=args.single_repeat if devices == 1 else args.repeat,
                run_limit=args.timeout if args.timeout is not None else 60.0 + devices * 0.02,
                heartbeat_interval=args.heartbeat_interval,
                profile=args.profile if args.profile is not None and devices == sizes[-1] else None,
                logs=logs,
                log_level="WARNING" if args.logs is not None else "ERROR",
                hold_s=args.hold if devices > 1 else 0.0,
            )
            rows.append(summarise(fleet, result))
    return rows, skipped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    load = _device_side.host_load()
    try:
        rows, skipped = trio.run(orchestrate, args)
    except (WorkerFailed, _device_side.DeviceSideFailed) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    soft, hard = _device_side.nofile_limits()
    cpu = psutil.cpu_count() or 0
    print(f"Registration: devices to IDLE over loopback, {cpu} CPUs, Python {_common.environment()['python']}\n")
    print(render(rows, skipped, (soft, hard), args.heartbeat_interval))
    print(_device_side.describe_load(load))
    if args.out is not None:
        _common.write_json(
            args.out,
            {
                "benchmark": "registration",
                "environment": {**_common.environment(), "cpus": cpu, "load_before": load},
                "targets": {
                    "to_all_idle_s": {str(n): s for n, s in TARGET_S.items()},
                    "kib_per_idle_device": TARGET_KIB_PER_DEVICE,
                },
                "ufo_reference_s": {str(n): s for n, s in UFO_S.items()},
                "nofile": {"soft": soft, "hard": hard},
                "repeat": args.repeat,
                "single_repeat": args.single_repeat,
                "heartbeat_interval_s": _DEFAULT_HEARTBEAT
                if args.heartbeat_interval is None
                else args.heartbeat_interval,
                "fleets": rows,
                "skipped": [{"devices": fleet.devices, "reason": fleet.skipped} for fleet in skipped],
            },
        )
    return 1 if any(row["failed_runs"] or row["close_errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
