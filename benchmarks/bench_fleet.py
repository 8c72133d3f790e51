"""Fleet mode at scale: N devices over M managers sharing one Redis — to all IDLE, then one manager killed.

Usage: ``python benchmarks/bench_fleet.py [--devices N] [--members M] [--device-processes P] [--ttl S]
[--steady S] [--timeout S] [--logs DIR] [--out FILE]``

Everything runs in processes of its own, so that each one's CPU can be told apart:

- **Redis**: a ``redis-server`` this script starts on a free loopback port (no persistence), as the fleet tests do;
- **the device side**: ``benchmarks/_device_side.py`` processes, each one AIP server and its share of the N device
  agents (laid out as ``bench_registration.py`` lays them out: enough processes for the open-files limit);
- **the members**: M managers, each this script run with ``--member`` — a :class:`ConstellationDeviceManager`
  with the library's default settings joined to the fleet with :func:`open_fleet_member` (what ``python -m
  galaxy_trio run devices.yaml --redis URL`` does, with the lease TTL as a setting: the CLI has none and uses the
  library's 10 s, this script's default too), all listing the same N devices and the same ``task_name``.

What is observed is each member's own view through the library's API: the devices it holds a valid lease for
(``FleetMember.owned``) and their status in its manager (``idle_since`` of each device's ``DeviceState``). Each
member reports changes of that set on stdout as they happen; the fleet is all IDLE when the members' sets, which
never overlap, cover every device. At each such moment the members are asked to ``publish_now()`` and the fleet is
then read once from Redis (``read_fleet_status``, what ``status --redis`` prints): every device must be ``idle``
there too, owned by a live member, with a report that is not stale.

Phases, each with the wall time, Redis's commands per second per 1,000 devices (``INFO`` deltas:
``total_commands_processed``, which counts the commands the fleet's Lua scripts run too, and the requests —
``EVALSHA``, ``MGET``, ``XREAD`` and the rest that only clients send) and the CPU seconds of the members, the
device side and redis-server (psutil) over the phase:

1. **to all IDLE**: from starting the member processes until every device is IDLE under one of them;
2. **steady**: ``--steady`` seconds with the fleet IDLE (lease renewals, membership beats, heartbeat refreshes of
   the device records, the mailbox reads);
3. **takeover**: one member is SIGKILLed (it releases nothing); until every device it held is IDLE under the
   others. Target: within the lease TTL + 10 s. The survivors' own devices must stay IDLE throughout.

Only failures change the exit status — devices not IDLE within ``--timeout`` (each of phases 1 and 3), Redis
disagreeing with the members, a member that exits or raises — never a figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import _device_side
import bench_registration
import msgspec
import psutil
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig, ManagerSettings
from galaxy_trio.manager import DeviceStatus, EventKind
from galaxy_trio.redact import url_with_token
from galaxy_trio.runtime import tune_gc
from tests.redis_process import RedisDidNotStart, RedisProcess, open_redis_process

#: Seconds over the lease TTL within which a dead member's devices must be IDLE under the others.
TAKEOVER_MARGIN_S = 10.0
#: The library's default lease TTL (``open_fleet_member(lease_ttl=...)``), which the CLI uses.
DEFAULT_TTL_S = 10.0
#: The fleet's ``task_name``: every member must share it (it makes the devices' client ids).
TASK_NAME = "bench_fleet"
#: Redis commands that only clients send (never a fleet script): their calls are the requests on the wire.
CLIENT_ONLY_COMMANDS = frozenset(
    {"evalsha", "eval", "evalsha_ro", "eval_ro", "mget", "xread", "smembers", "script|load", "script|exists"}
)
#: A member coalesces the changes of this long into one report line (a report per status event would cost more
#: than the member's own work at thousands of devices); the times reported are the devices' own ``idle_since``.
REPORT_COALESCE_S = 0.1
#: Bound on a member's graceful exit (release every lease, close every link) once its stdin closes.
LEAVE_LIMIT_S = 60.0
SCRIPT = Path(__file__).resolve()
#: ``--timeouts generous``: connect/register/telemetry deadlines no run here comes near, as bench_registration.py
#: sets them — with the library's (10 s, 10 s, 5 s), a startup burst of thousands of connects on a loaded 2-core
#: machine times out, retries with backoff and keeps the device side overloaded (measured: 13 of 5,000 IDLE after
#: 160 s), and the benchmark would measure the retries, not the fleet.
GENEROUS_S = bench_registration.GENEROUS_S


# --- a member process (``--member``) ---------------------------------------------------------------------------


def _member_configs(spec: dict[str, Any], token: str) -> list[DeviceConfig]:
    """The fleet's devices, the same list in every member (as one shared config file would give them)."""
    shards = [bench_registration.Shard(**shard) for shard in spec["shards"]]
    return [
        DeviceConfig(device_id=device_id, server_url=url_with_token(shard.url, token))
        for shard in shards
        for device_id in shard.device_ids()
    ]


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def run_member(spec: dict[str, Any], token: str) -> None:
    """One manager in the fleet: report what it owns and has IDLE, obey ``report``/``publish`` on stdin, leave
    (handing every device back) when stdin closes."""
    from galaxy_trio.fleet import open_fleet_member

    configs = _member_configs(spec, token)
    settings = ManagerSettings(task_name=TASK_NAME)
    if spec["timeouts"] == "generous":
        settings = msgspec.structs.replace(
            settings, connect_timeout=GENEROUS_S, register_timeout=GENEROUS_S, telemetry_timeout=GENEROUS_S
        )
    member_id = spec["member_id"]
    async with (
        ConstellationDeviceManager(settings=settings) as manager,
        open_fleet_member(
            manager, spec["redis_url"], configs, member_id=member_id, lease_ttl=spec["ttl"], namespace="bench"
        ) as member,
    ):
        _emit({"event": "joined", "member": member_id, "pid": os.getpid(), "at": time.time()})
        reported: dict[str, float] = {}
        connects = [0]
        fleet_events: dict[str, int] = {}
        wake = trio.Event()

        def owned_idle() -> dict[str, float]:
            now: dict[str, float] = {}
            for device_id in member.owned:
                state = manager.get_device_state(device_id)
                if state.status is DeviceStatus.IDLE and state.idle_since is not None:
                    now[device_id] = state.idle_since
            return now

        def where() -> dict[str, int]:
            """The devices this member holds, by status and phase (what a run that does not settle is told)."""
            counts: dict[str, int] = {}
            for device_id in member.owned:
                state = manager.get_device_state(device_id)
                key = f"{state.status.value} (phase {state.phase.value if state.phase else '-'})"
                counts[key] = counts.get(key, 0) + 1
            return dict(sorted(counts.items()))

        def report(full: bool) -> None:
            now = owned_idle()
            up = {d: at for d, at in now.items() if reported.get(d) != at}
            down = [d for d in reported if d not in now]
            reported.clear()
            reported.update(now)
            if up or down or full:
                _emit(
                    {
                        "event": "full" if full else "delta",
                        "member": member_id,
                        "up": now if full else up,
                        "down": down,
                        "held": len(member.owned),
                        "connects": connects[0],
                        "fleet_events": fleet_events,
                        "where": where() if full else None,
                        "at": time.time(),
                    }
                )

        async def watch_manager() -> None:
            with manager.subscribe(16 * len(configs) + 64) as events:
                async for event in events:
                    if event.kind is EventKind.PHASE and event.reason == "connect":
                        connects[0] += 1
                    if event.kind is EventKind.STATUS:
                        wake.set()

        async def watch_member() -> None:
            with member.subscribe(16 * len(configs) + 64) as events:
                async for event in events:
                    fleet_events[event.kind.value] = fleet_events.get(event.kind.value, 0) + 1
                    wake.set()

        async def reporter() -> None:
            nonlocal wake
            while True:
                await wake.wait()
                await trio.sleep(REPORT_COALESCE_S)
                wake = trio.Event()
                report(full=False)

        async def obey() -> None:
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buffer = b""
            async with stdin:
                while True:
                    chunk = await stdin.receive_some(4096)
                    if not chunk:
                        return
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        command = line.decode().strip()
                        if command == "report":
                            report(full=True)
                        elif command == "publish":
                            await member.publish_now()
                            _emit({"event": "published", "member": member_id, "at": time.time()})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_manager)
            nursery.start_soon(watch_member)
            nursery.start_soon(reporter)
            await obey()  # stdin closed: leave the fleet
            nursery.cancel_scope.cancel()
        left_at = time.time()
    _emit({"event": "left", "member": member_id, "leave_s": time.time() - left_at})


def member_main(spec_json: str) -> int:
    token = _device_side.start_child_process("--member")
    if token is None:
        return 2
    spec = json.loads(spec_json)
    tune_gc()  # as `python -m galaxy_trio run` does (galaxy_trio/runtime.py)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        trio.run(run_member, spec, token)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


class Failed(Exception):
    """Something the benchmark needs did not happen (the message says what); the run's figures are incomplete."""


def parse_info(text: str) -> dict[str, str]:
    """``INFO``'s ``key:value`` lines as a dict (section headers and blank lines skipped)."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def command_calls(info: dict[str, str]) -> dict[str, int]:
    """``cmdstat_<name>:calls=N,...`` of ``INFO commandstats`` as ``{name: N}``."""
    calls = {}
    for key, value in info.items():
        if key.startswith("cmdstat_"):
            parts = dict(part.split("=", 1) for part in value.split(","))
            calls[key.removeprefix("cmdstat_")] = int(parts["calls"])
    return calls


@dataclass(frozen=True)
class Sample:
    """Redis's counters and every process's CPU seconds at one moment."""

    at: float
    total_commands: int
    calls: dict[str, int]
    cpu: dict[str, float]


class Meter:
    """Reads Redis's counters (one INFO per sample, which is subtracted) and the CPU of every process."""

    def __init__(self, client: Any, processes: dict[str, psutil.Process]) -> None:
        self.client = client
        self.processes = processes

    async def sample(self) -> Sample:
        at = time.time()
        raw = await self.client.custom_command(["INFO", "everything"])
        info = parse_info(raw.decode() if isinstance(raw, bytes) else str(raw))
        cpu = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                cpu[name] = float(times.user + times.system)
            except psutil.Error:
                cpu[name] = math.nan  # gone (the killed member): its CPU is counted up to its last sample
        return Sample(at, int(info["total_commands_processed"]), command_calls(info), cpu)


def between(first: Sample, last: Sample, devices: int) -> dict[str, Any]:
    """Figures of the span between two samples: Redis rates per 1,000 devices, CPU by process and by role."""
    seconds = max(last.at - first.at, 1e-9)
    calls = {name: last.calls.get(name, 0) - first.calls.get(name, 0) for name in last.calls}
    calls = {name: count for name, count in calls.items() if count}
    # Our own INFO requests are in the counters (INFO counts itself before it answers): not the fleet's.
    ours = calls.pop("info", 0)
    total = last.total_commands - first.total_commands - ours
    requests = sum(count for name, count in calls.items() if name in CLIENT_ONLY_COMMANDS)
    cpu = {}
    for name in first.cpu.keys() | last.cpu.keys():
        before = first.cpu.get(name, 0.0)  # absent: the process started after the first sample
        after = last.cpu.get(name, math.nan)
        cpu[name] = 0.0 if math.isnan(before) else (before if math.isnan(after) else after) - before
    roles = {"members": 0.0, "device_side": 0.0, "redis": 0.0}
    for name, seconds_used in cpu.items():
        role = "members" if name.startswith("member:") else "device_side" if name.startswith("device:") else "redis"
        roles[role] += seconds_used
    per_thousand = 1000.0 / devices
    return {
        "seconds": seconds,
        "redis_commands": total,
        "redis_requests": requests,
        "commands_per_s_per_1000": total / seconds * per_thousand,
        "requests_per_s_per_1000": requests / seconds * per_thousand,
        "calls": dict(sorted(calls.items(), key=lambda item: -item[1])),
        "cpu_s": dict(sorted(cpu.items())),
        "cpu_s_by_role": roles,
    }


# --- the members, seen from the orchestrator ----------------------------------------------------------------------


@dataclass
class Member:
    member_id: str
    process: trio.Process
    log_path: Path
    idle: dict[str, float] = field(default_factory=dict)  #: devices it owns and has IDLE, with their idle_since
    held: int = 0
    connects: int = 0
    #: The member's fleet events so far, by kind (lease acquired/lost/expired/released, degraded, recovered).
    fleet_events: dict[str, int] = field(default_factory=dict)
    #: Its held devices by status and phase, as of its last full report.
    where: dict[str, int] = field(default_factory=dict)
    joined_at: float | None = None
    killed: bool = False
    left: dict[str, Any] | None = None
    exited: int | None = None
    #: Devices that left this member's IDLE set, while measuring (phase: count).
    dropped: dict[str, int] = field(default_factory=dict)
    phase: str = "start"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Fleet:
    """The member processes: their reports, merged; waiting for conditions on them."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.device_ids = frozenset(device_ids)
        self.members: dict[str, Member] = {}
        self.changed = trio.Event()
        self.published: dict[str, trio.Event] = {}
        self.full: dict[str, trio.Event] = {}
        self.problems: list[str] = []

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def live(self) -> list[Member]:
        return [m for m in self.members.values() if not m.killed and m.exited is None]

    def idle_owners(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        for member in self.live():
            for device_id in member.idle:
                if device_id in owners:
                    self.problems.append(f"{device_id} IDLE under both {owners[device_id]} and {member.member_id}")
                owners[device_id] = member.member_id
        return owners

    async def read(self, member: Member) -> None:
        """Follow one member's stdout until it closes, then record its exit status."""
        assert member.process.stdout is not None
        buffer = b""
        while True:
            chunk = await member.process.stdout.receive_some(1 << 20)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._handle(member, json.loads(line))
        member.exited = await member.process.wait()
        if member.exited != 0 and not member.killed:
            self.problems.append(f"member {member.member_id} exited with status {member.exited}:\n{member.log_tail()}")
        self._notify()

    def _handle(self, member: Member, record: dict[str, Any]) -> None:
        event = record["event"]
        if event == "joined":
            member.joined_at = record["at"]
        elif event in ("delta", "full"):
            if event == "full":
                gone = [d for d in member.idle if d not in record["up"]]
                member.idle = dict(record["up"])
            else:
                gone = list(record["down"])
                for device_id in gone:
                    member.idle.pop(device_id, None)
                member.idle.update(record["up"])
            if gone:
                member.dropped[member.phase] = member.dropped.get(member.phase, 0) + len(gone)
            member.held, member.connects = record["held"], record["connects"]
            member.fleet_events = record["fleet_events"]
            member.where = record["where"] or member.where
            if event == "full":
                self.full[member.member_id].set()
        elif event == "published":
            self.published[member.member_id].set()
        elif event == "left":
            member.left = record
        self._notify()

    async def until(self, predicate: Any) -> None:
        while not predicate():
            if any(m.exited is not None and not m.killed for m in self.members.values()):
                raise Failed("a member exited:\n" + "\n".join(self.problems))
            await self.changed.wait()

    async def tell(self, member: Member, command: str) -> None:
        assert member.process.stdin is not None
        await member.process.stdin.send_all(command.encode() + b"\n")

    async def report(self, member: Member) -> None:
        self.full[member.member_id] = trio.Event()
        await self.tell(member, "report")
        await self.full[member.member_id].wait()

    async def describe(self) -> str:
        """Where each live member's devices stand (asked for now, bounded), for a run that did not settle."""
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                for member in self.live():
                    nursery.start_soon(self.report, member)
        return "; ".join(
            f"{m.member_id}: holds {m.held}, {m.where}, fleet events {m.fleet_events}" for m in self.live()
        )

    async def publish(self) -> None:
        async with trio.open_nursery() as nursery:
            for member in self.live():

                async def one(m: Member = member) -> None:
                    self.published[m.member_id] = trio.Event()
                    await self.tell(m, "publish")
                    await self.published[m.member_id].wait()

                nursery.start_soon(one)


async def check_redis(redis_url: str, device_ids: frozenset[str], live: Sequence[str]) -> dict[str, Any]:
    """The fleet as Redis has it (what ``status --redis`` prints): every device IDLE, owned by a live member."""
    from galaxy_trio.fleet import read_fleet_status

    rows = await read_fleet_status(redis_url, namespace="bench")
    bad = []
    for row in rows:
        if row["status"] != "idle" or row["owner"] not in live or row["stale"]:
            bad.append(f"{row['device_id']}: status {row['status']}, owner {row['owner']}, stale {row['stale']}")
    missing = sorted(device_ids - {row["device_id"] for row in rows})
    owners: dict[str, int] = {}
    for row in rows:
        if row["owner"]:
            owners[row["owner"]] = owners.get(row["owner"], 0) + 1
    return {"devices": len(rows), "not_idle": bad, "missing": missing, "owners": dict(sorted(owners.items()))}


# --- the orchestrator ----------------------------------------------------------------------------------------


async def orchestrate(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    _, hard = _device_side.raise_nofile_limit()
    layout = bench_registration.plan(
        args.devices, hard, bench_registration.ephemeral_port_range(), args.device_processes
    )
    if layout.skipped is not None:
        raise Failed(f"{args.devices} devices do not fit here: {layout.skipped}")
    logs = args.logs if args.logs is not None else scratch
    logs.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    result: dict[str, Any] = {"layout": layout.layout, "agents_per_process": list(layout.shard_counts)}
    sides: list[_device_side.DeviceSide] = []
    client = None
    async with open_redis_process(maxclients=1000) as redis:
        try:
            with trio.fail_after(15):
                await redis.start()
            print(f"device side: {layout.layout} ...", file=sys.stderr, flush=True)
            async with trio.open_nursery() as starting:

                async def start_side(index: int, count: int) -> None:
                    side = await _device_side.start_device_side(
                        ["--devices", str(count), "--prefix", f"s{index}-dev-", "--log-level", "WARNING"],
                        token=token,
                        log_path=logs / f"device_side_{index}.log",
                        ready_within=60.0 + count * 0.03,
                    )
                    sides.append(side)

                for index, count in enumerate(layout.shard_counts):
                    starting.start_soon(start_side, index, count)
            sides.sort(key=lambda side: str(side.ready["prefix"]))
            result["device_side"] = [
                {key: side.ready[key] for key in ("pid", "devices", "startup_s", "nofile")} for side in sides
            ]
            shards = [{"url": s.url, "prefix": s.ready["prefix"], "count": s.ready["devices"]} for s in sides]
            client = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", redis.port)]))
            processes = {"redis": psutil.Process(redis.pid)}
            for index, side in enumerate(sides):
                processes[f"device:{index}"] = psutil.Process(side.process.pid)
            fleet = Fleet([d for s in shards for d in bench_registration.Shard(**s).device_ids()])
            meter = Meter(client, processes)
            async with trio.open_nursery() as readers:
                try:
                    print(f"{args.members} members, {args.devices} devices ...", file=sys.stderr, flush=True)
                    start = await meter.sample()
                    for index in range(args.members):
                        member = await start_member(f"m{index}", args, redis, shards, token, logs)
                        fleet.members[member.member_id] = member
                        processes[f"member:{member.member_id}"] = psutil.Process(member.process.pid)
                        readers.start_soon(fleet.read, member)
                    result.update(await measure(args, fleet, meter, start, redis))
                finally:
                    with trio.CancelScope(shield=True):
                        await stop_members(fleet, result)
        finally:
            with trio.CancelScope(shield=True):
                if client is not None:
                    await client.close()
                async with trio.open_nursery() as stopping:
                    for side in sides:
                        stopping.start_soon(side.stop)
                await trio.Path(logs / "redis.log").write_bytes(bytes(redis.log))
    return result


async def start_member(
    member_id: str, args: argparse.Namespace, redis: RedisProcess, shards: list[dict[str, Any]], token: str, logs: Path
) -> Member:
    """This script with ``--member``: one manager of the fleet, in a process of its own."""
    spec = {
        "member_id": member_id,
        "redis_url": redis.url,
        "ttl": args.ttl,
        "shards": shards,
        "timeouts": args.timeouts,
    }
    log_path = logs / f"member_{member_id}.log"
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(SCRIPT), "--member", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, _device_side.TOKEN_ENV: token},
        )
    return Member(member_id, process, log_path)


async def measure(
    args: argparse.Namespace, fleet: Fleet, meter: Meter, start: Sample, redis: RedisProcess
) -> dict[str, Any]:
    devices = len(fleet.device_ids)
    result: dict[str, Any] = {}
    # 1. to all IDLE.
    with trio.move_on_after(args.timeout) as settling:
        await fleet.until(lambda: len(fleet.idle_owners()) == devices)
    if settling.cancelled_caught:
        owned = len(fleet.idle_owners())
        raise Failed(
            f"only {owned} of {devices} devices IDLE under a member after {args.timeout:g} s (--timeout); "
            + await fleet.describe()
        )
    settled = await meter.sample()
    last_idle = max(at for m in fleet.live() for at in m.idle.values())
    joined = [m.joined_at for m in fleet.members.values() if m.joined_at is not None]
    result["to_all_idle"] = {
        **between(start, settled, devices),
        # From starting the member processes to the last device's idle_since (the sample comes a little later).
        "to_last_idle_s": last_idle - start.at,
        "from_last_join_s": last_idle - max(joined),
        "connects_beyond_one_per_device": sum(m.connects for m in fleet.live()) - devices,
        "held": {m.member_id: m.held for m in fleet.live()},
        "fleet_events": {m.member_id: dict(m.fleet_events) for m in fleet.live()},
    }
    result["redis_after_settle"] = await published_and_checked(args, fleet, redis)
    # 2. steady.
    for member in fleet.live():
        member.phase = "steady"
    steady_from = await meter.sample()
    await trio.sleep(args.steady)  # the measurement window itself, not a wait for a condition
    steady_to = await meter.sample()
    result["steady"] = between(steady_from, steady_to, devices)
    result["steady"]["devices_left_idle"] = sum(m.dropped.get("steady", 0) for m in fleet.live())
    # 3. takeover: SIGKILL one member.
    victim = fleet.members["m0"]
    await fleet.report(victim)
    orphans = dict(victim.idle)
    survivors = [m for m in fleet.live() if m is not victim]
    for member in survivors:
        member.phase = "takeover"
    before_kill = await meter.sample()
    victim.killed = True
    victim.process.send_signal(signal.SIGKILL)
    killed_at = time.time()

    def taken_over() -> bool:
        owners = fleet.idle_owners()
        return all(device_id in owners for device_id in orphans)

    with trio.move_on_after(args.timeout) as taking:
        await fleet.until(taken_over)
    if taking.cancelled_caught:
        owners = fleet.idle_owners()
        left = sum(1 for d in orphans if d not in owners)
        raise Failed(
            f"{left} of the killed member's {len(orphans)} devices not IDLE elsewhere {args.timeout:g} s after the "
            "kill; " + await fleet.describe()
        )
    taken = await meter.sample()
    owners = fleet.idle_owners()
    last = max(fleet.members[owners[d]].idle[d] for d in orphans)
    bound = args.ttl + TAKEOVER_MARGIN_S
    result["takeover"] = {
        **between(before_kill, taken, devices),
        "victim": victim.member_id,
        "orphans": len(orphans),
        "takeover_s": last - killed_at,
        "first_orphan_idle_s": min(fleet.members[owners[d]].idle[d] for d in orphans) - killed_at,
        "bound_s": bound,
        "meets_bound": last - killed_at <= bound,
        "taken_by": {m.member_id: sum(1 for d in orphans if owners[d] == m.member_id) for m in survivors},
        "survivor_devices_left_idle": sum(m.dropped.get("takeover", 0) for m in survivors),
        "held": {m.member_id: m.held for m in survivors},
        "fleet_events": {m.member_id: dict(m.fleet_events) for m in survivors},
    }
    result["redis_after_takeover"] = await published_and_checked(args, fleet, redis)
    result["problems"] = list(fleet.problems)
    return result


async def published_and_checked(args: argparse.Namespace, fleet: Fleet, redis: RedisProcess) -> dict[str, Any]:
    """Have every live member publish its devices' state, then read the fleet from Redis once."""
    with trio.move_on_after(args.timeout) as publishing:
        await fleet.publish()
    if publishing.cancelled_caught:
        raise Failed(f"the members did not publish their devices' state within {args.timeout:g} s")
    return await check_redis(redis.url, fleet.device_ids, [m.member_id for m in fleet.live()])


async def stop_members(fleet: Fleet, result: dict[str, Any]) -> None:
    """Close each live member's stdin (it leaves the fleet gracefully); kill one that takes too long."""
    leaving = {}
    async with trio.open_nursery() as nursery:
        for member in fleet.members.values():

            async def stop(m: Member = member) -> None:
                started = time.perf_counter()
                if m.process.returncode is None and m.process.stdin is not None:
                    with trio.move_on_after(1):
                        await m.process.stdin.aclose()
                with trio.move_on_after(LEAVE_LIMIT_S):
                    await m.process.wait()
                if m.process.returncode is None:
                    m.process.kill()
                    await m.process.wait()
                    fleet.problems.append(f"member {m.member_id} did not leave within {LEAVE_LIMIT_S:g} s")
                if not m.killed:
                    leaving[m.member_id] = time.perf_counter() - started

            nursery.start_soon(stop)
    result["leave_s"] = leaving
    result["problems"] = sorted(set(fleet.problems))


# --- output ------------------------------------------------------------------------------------------------------


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    phases = [("to all IDLE", result["to_all_idle"]), (f"steady {args.steady:g} s", result["steady"])]
    phases.append(("takeover", result["takeover"]))
    table = _common.markdown_table(
        [
            "phase",
            "wall s",
            "Redis cmds/s per 1k dev",
            "requests/s per 1k dev",
            "members CPU s",
            "device side CPU s",
            "redis CPU s",
        ],
        [
            [
                name,
                f"{phase['seconds']:.2f}",
                f"{phase['commands_per_s_per_1000']:.1f}",
                f"{phase['requests_per_s_per_1000']:.2f}",
                f"{phase['cpu_s_by_role']['members']:.2f}",
                f"{phase['cpu_s_by_role']['device_side']:.2f}",
                f"{phase['cpu_s_by_role']['redis']:.2f}",
            ]
            for name, phase in phases
        ],
    )
    idle, takeover = result["to_all_idle"], result["takeover"]
    verdict = "met" if takeover["meets_bound"] else "MISSED"
    lines = [
        table,
        "",
        f"{args.devices} devices over {args.members} members, lease TTL {args.ttl:g} s, {args.timeouts} "
        "connect/register/telemetry timeouts; device side "
        f"{result['layout']}. All IDLE {idle['to_last_idle_s']:.2f} s after starting the members "
        f"({idle['from_last_join_s']:.2f} s after the last one joined; {idle['connects_beyond_one_per_device']} "
        f"connects beyond one per device); held {idle['held']}.",
        f"Takeover: {takeover['victim']} SIGKILLed holding {takeover['orphans']} devices; all of them IDLE under "
        f"the others {takeover['takeover_s']:.2f} s later (first {takeover['first_orphan_idle_s']:.2f} s; bound "
        f"TTL + {TAKEOVER_MARGIN_S:g} s = {takeover['bound_s']:g} s: {verdict}); taken by {takeover['taken_by']}; "
        f"the survivors' own devices that left IDLE meanwhile: {takeover['survivor_devices_left_idle']}.",
        f"Fleet events by member, at the end of the takeover (since it started): {takeover['fleet_events']}.",
        f"Steady: devices that left IDLE: {result['steady']['devices_left_idle']}; top Redis commands "
        + ", ".join(f"{name} {count / result['steady']['seconds']:.1f}/s" for name, count in _top(result["steady"]))
        + ".",
        "Redis cmds/s counts every command Redis ran (INFO total_commands_processed: the fleet's Lua scripts' "
        "inner GET/PEXPIRE/HSET/... included); requests/s only those clients send (EVALSHA, MGET, XREAD, ...). "
        "CPU: psutil user+system of each process over the phase; 'wall s' of a phase spans its two samples.",
        f"Redis agrees after settling: {_agrees(result['redis_after_settle'])}; after the takeover: "
        f"{_agrees(result['redis_after_takeover'])}. Members left in {_leave(result)}.",
    ]
    for problem in result["problems"]:
        lines.append(f"FAILED: {problem}")
    return "\n".join(lines)


def _top(phase: dict[str, Any], count: int = 6) -> list[tuple[str, int]]:
    return list(phase["calls"].items())[:count]


def _agrees(check: dict[str, Any]) -> str:
    if not check["not_idle"] and not check["missing"]:
        return f"yes ({check['devices']} devices idle, owners {check['owners']})"
    return f"NO: {len(check['not_idle'])} not idle, {len(check['missing'])} missing"


def _leave(result: dict[str, Any]) -> str:
    return ", ".join(f"{m} {s:.1f} s" for m, s in result.get("leave_s", {}).items()) or "-"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000, metavar="N", help="devices in the fleet (default 1000)")
    parser.add_argument("--members", type=int, default=4, metavar="M", help="managers sharing them (default 4)")
    parser.add_argument(
        "--device-processes",
        type=int,
        default=None,
        metavar="P",
        help="device-side processes (each one AIP server and its share of the agents); default as "
        "bench_registration.py: 1 below 1,000 devices, else 2, more if the open-files limit needs it",
    )
    parser.add_argument(
        "--ttl",
        type=float,
        default=DEFAULT_TTL_S,
        metavar="S",
        help=f"the fleet's lease TTL, open_fleet_member(lease_ttl=S) (default {DEFAULT_TTL_S:g}, the library's)",
    )
    parser.add_argument("--steady", type=float, default=30.0, metavar="S", help="steady window (default 30 s)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up when the fleet is not all IDLE S seconds after the members start, or the killed member's "
        "devices S seconds after the kill (default 60 s + 20 ms per device)",
    )
    parser.add_argument(
        "--timeouts",
        choices=["generous", "library"],
        default="generous",
        help="the members' connect/register/telemetry timeouts: 'generous' (default) = "
        f"{bench_registration.GENEROUS_S:g} s each, as bench_registration.py; 'library' = ManagerSettings' defaults",
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep redis, device-side and member logs in DIR")
    parser.add_argument("--member", metavar="SPEC", help=argparse.SUPPRESS)
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.member is None:
        if args.devices < 1:
            parser.error("--devices must be at least 1")
        if args.members < 2:
            parser.error("--members must be at least 2 (one is killed, the others take over)")
        if args.device_processes is not None and args.device_processes < 1:
            parser.error("--device-processes must be at least 1")
        if not (math.isfinite(args.ttl) and args.ttl > 0):
            parser.error("--ttl must be a positive number of seconds")
        if not args.steady >= 0:
            parser.error("--steady must be >= 0")
        if args.timeout is None:
            args.timeout = 60.0 + 0.02 * args.devices
        elif not args.timeout > 0:
            parser.error("--timeout must be positive")
    return args


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.member is not None:
        return member_main(args.member)
    load = _device_side.host_load()
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as scratch:
        failures: list[BaseException] = []
        try:
            result = trio.run(orchestrate, args, Path(scratch))
        except* (Failed, RedisDidNotStart, _device_side.DeviceSideFailed) as group:
            failures.extend(_leaves(group))
    if failures:
        for exc in failures:
            print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    cpu = psutil.cpu_count() or 0
    print(f"Fleet mode: {args.devices} devices over {args.members} managers on one Redis, {cpu} CPUs\n")
    print(render(args, result))
    print(_device_side.describe_load(load))
    if args.out is not None:
        _common.write_json(
            args.out,
            {
                "benchmark": "fleet",
                "environment": {**_common.environment(), "cpus": cpu, "load_before": load},
                "devices": args.devices,
                "members": args.members,
                "ttl_s": args.ttl,
                "steady_s": args.steady,
                "timeout_s": args.timeout,
                "takeover_bound_s": args.ttl + TAKEOVER_MARGIN_S,
                **result,
            },
        )
    failed = result["problems"] or any(
        _agrees(result[key]).startswith("NO") for key in ("redis_after_settle", "redis_after_takeover")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
