"""The chaos soak in fleet mode (issue 15, item 2): three fleet members on one Redis share the devices, under the
single-manager soak's load and faults plus three of fleet mode's own — Redis restarted, a member killed, a member
cut off from Redis alone.

    member A ─┐  (in this process; they carry the callers)
    member B ─┼─ws─▶ FaultProxy ──▶ AIP server ◀── DeviceAgent × N      (.engine.SoakRig)
              │                     └────── .device_side ────┘
    member C ─┘  (tests/soak/member_process.py, a process of its own: SIGKILLed and started again)
        └──────── all three on one redis-server (a process this soak starts, kills and starts again);
                  C's link to it through a TcpProxy (tests/fleet/peers.py) that the schedule cuts

The fault proxy and C's Redis link each run in a process of their own (tests/soak/proxy_process.py), and so do
the server and the agents (tests/soak/device_side.py): A and B share this process with the checks alone.

Reused from :mod:`.engine`: the rig (the device side with the devices' ``work`` tool and its exact records, the
fault proxy), the callers, the fault loop, the five rig faults. Added here:

- **Redis restarted**: redis-server SIGKILLed and started again on the same port with no persistence, so the fleet
  finds it *empty* (no catalog, no task_name, no leases, no members, no mailboxes): the harsher case. (Redis cannot
  go through the fault proxy, which scans for HTTP heads.)
- **A member killed**: member C's process SIGKILLed (no lease released, its sockets closed by the kernel); its
  recovery is the takeover, measured from the kill. Then, as a fault of its own (``member_restart``), a new
  incarnation under a new member id: the survivors hand devices back to it. (Cancelling an in-process member
  would run its cleanup, which hands its leases back: a polite leave, not a kill.)
- **A member partitioned from Redis**: member C's Redis link cut (every connection dropped, new ones refused) for
  the lease TTL + 1-3 s while the others still reach Redis. C must stop driving its devices when their leases run
  out by its own clock, before A and B may take them (checked: no device driven by two members); once the link is
  back, C recovers and takes its share again (the recovery, measured from the link's return).

Invariants, on top of the single-manager soak's (one outcome per call, no task run twice, none overlapping, nothing
left at exit, RSS and descriptors of this process and of the device side):

- a call ends in one ``TaskResult`` or one of the documented refusals — :class:`RegistryUnavailable` (the device
  is another member's and Redis does not answer), :class:`DeviceNotConnected` (its owner holds the lease but has
  not connected it yet) — counted by type; any other exception is a violation;
- **at most one member drives a device at any moment**, observed at the members: each one's registered links
  (IDLE or BUSY), from its manager's STATUS events with their wall-clock time (C reports them on stdout). Two
  members' claims on one device may overlap only by the time the server's verdict takes to reach the old driver
  (the server unregisters a link before its close reaches the manager): at most :data:`OVERLAP_SLACK`, every overlap
  is measured and the worst one reported. The server cannot be the judge here: every member registers the same
  client id ``<task_name>@<device_id>`` and the server refuses a second REGISTER, so its count per device id is at
  most one by construction; it is the cross-check instead — a device is back only once the server lists its
  registration too;
- after each fault, every device is driven by exactly one live member, IDLE or BUSY, that member holds its lease
  in Redis, and the server lists its registration — within the lease TTL + the single-manager bound (a dead
  member's devices wait for its leases to expire). Measured twice: the wait right after the fault, and each
  device's outages (no driver) that began after the fault, which also catch a device that drops only later;
- at the end of each partition, member C drives none of the devices it drove when it was cut off.

:func:`run_fleet_soak` returns a :class:`FleetSoakReport`.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus
from galaxy_trio.aip import ClientType
from galaxy_trio.fleet import FleetMember, FleetRegistry, RegistryUnavailable, fair_share, open_fleet_member
from galaxy_trio.manager import DeviceNotConnected, EventKind

from ..redis_process import open_redis_process, redis_binary
from .engine import (
    FAULTS,
    MANAGER_SETTINGS,
    POLL_EVERY,
    RECOVERY_BOUND,
    SoakReport,
    SoakRig,
    inject_rig_fault,
    open_soak_rig,
    record_completed,
    run_caller,
    run_schedule,
)
from .lines import lines_of
from .proxy_process import open_proxy_process

FLEET_FAULTS = (*FAULTS, "redis_restart", "member_kill", "member_partition")
#: What a fleet caller may be told instead of a TaskResult (see the module docstring).
REFUSALS: tuple[type[Exception], ...] = (RegistryUnavailable, DeviceNotConnected)
TASK_NAME = "soak"
NAMESPACE = "soak"
IN_PROCESS_MEMBERS = ("soak-a", "soak-b")
REGISTERED = (DeviceStatus.IDLE, DeviceStatus.BUSY)
#: How long two members' claims on one device may overlap (seconds): the old driver learns that its link is over
#: a round trip after the server does, and the new one may register in between.
OVERLAP_SLACK = 0.5
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Member C's caller numbers: incarnation k's callers are k * this + 0, 1, ... (the in-process ones: 0, 1, ...).
CALLER_NUMBERS_PER_INCARNATION = 1000
#: The words of member C's lines about its callers' calls (see :meth:`MemberProcess._note_call`).
CALL_LINES = ("call", "result", "refused", "raised")
#: How long redis-server may take to say it accepts connections (a start, or a restart by the schedule).
REDIS_START_WITHIN = 30.0


@dataclass
class FleetSoakReport(SoakReport):
    """A :class:`SoakReport` plus what only fleet mode has: members' overlapping claims, the member process."""

    members: int = 3
    #: Of ``callers``, how many run in member C's process (each incarnation has its own), and how their calls
    #: ended: ``calls``, then per result kind (``completed``, ``failed/...``), refusal type, or ``raised``.
    member_callers: int = 0
    member_outcomes: Counter[str] = field(default_factory=Counter)
    lease_ttl: float = 0.0
    overlap_slack: float = OVERLAP_SLACK
    #: How often two members' claims on one device overlapped (however briefly), and the longest overlap (s).
    overlaps: int = 0
    worst_overlap: float = 0.0
    #: (device, member, member, seconds, the fault whose turn it began in and when) of the overlaps longer than
    #: ``overlap_slack`` (the first 100).
    double_drives: list[tuple[str, str, str, float, str]] = field(default_factory=list)
    #: Per incarnation of member C: its id and (seconds since the soak's faults began, RSS MiB, fds) samples.
    member_process: list[dict[str, Any]] = field(default_factory=list)
    #: (fault, started, ended) on the wall clock, in the order of ``recoveries``; ``fault_starts`` gets each start
    #: as the fault begins, ``latest_back`` the end of the last outage that began during each fault's turn.
    fault_times: list[tuple[str, float, float]] = field(default_factory=list)
    fault_starts: list[float] = field(default_factory=list)
    fault_kinds: list[str] = field(default_factory=list)
    latest_back: list[float] = field(default_factory=list)
    #: Per partition of member C from Redis: (devices it drove when cut off, devices it still drove when the link
    #: came back, TTL + 1-3 s later: must be 0 — its leases ran out by its own clock and it had to let them go).
    partitions: list[tuple[int, int]] = field(default_factory=list)
    #: How many times a device had no driver after the first fault, and the longest such time (seconds).
    outages: int = 0
    longest_outage: float = 0.0

    def begin_fault(self, fault: str, at: float) -> None:
        self.fault_starts.append(at)
        self.fault_kinds.append(fault)
        self.latest_back.append(-math.inf)

    def end_fault(self, fault: str, at: float) -> None:
        self.fault_times.append((fault, self.fault_starts[-1], at))

    def note_overlap(self, device_id: str, member_id: str, other: str, seconds: float, began: float) -> None:
        self.overlaps += 1
        self.worst_overlap = max(self.worst_overlap, seconds)
        if seconds > self.overlap_slack and len(self.double_drives) < 100:
            self.double_drives.append((device_id, member_id, other, round(seconds, 2), self._turn_of(began)))

    def _turn_of(self, at: float) -> str:
        """Which fault's turn the wall-clock time ``at`` fell in, and when (seconds after the first fault began)."""
        index = bisect.bisect_right(self.fault_starts, at) - 1
        if index < 0:
            return "before the first fault"
        start = self.fault_starts[index]
        return f"{self.fault_kinds[index]} at {start - self.fault_starts[0]:.1f} s, +{at - start:.1f} s"

    def note_outage(self, down: float, back: float) -> None:
        """A device had no driver from ``down`` to ``back``: it counts for the fault during whose turn it began."""
        index = bisect.bisect_right(self.fault_starts, down) - 1
        if index < 0:
            return  # before the first fault: the members joining and sharing out the devices
        self.outages += 1
        self.longest_outage = max(self.longest_outage, back - down)
        self.latest_back[index] = max(self.latest_back[index], back)

    def violations(self) -> list[str]:
        found = super().violations()
        if self.lost_with_member > self.member_callers * self.faults["member_kill"]:
            found.append(
                f"{self.lost_with_member} calls lost with member C, more than its {self.member_callers} callers had "
                f"in flight at its {self.faults['member_kill']} kills"
            )
        if self.double_drives:
            found.append(
                f"devices driven by two members at once (> {self.overlap_slack:g} s): {self.double_drives[:10]}"
            )
        found += [
            f"member C still drove {still} of its {held} devices after more than the lease TTL "
            f"({self.lease_ttl:g} s) cut off from Redis"
            for held, still in self.partitions
            if still
        ]
        return found

    def figures(self) -> dict[str, Any]:
        return {
            **super().figures(),
            "members": self.members,
            "member_callers": self.member_callers,
            "member_outcomes": dict(self.member_outcomes),
            "lease_ttl_s": self.lease_ttl,
            "outages": self.outages,
            "longest_outage_s": round(self.longest_outage, 2),
            "overlaps": self.overlaps,
            "worst_overlap_s": round(self.worst_overlap, 3),
            "partitions": self.partitions,
            "member_process": self.member_process,
            # Every fault: what, when (seconds after the first one started), how long until all was back.
            "timeline": [
                (fault, round(started - self.fault_times[0][1], 1), round(seconds, 2))
                for (fault, started, _), (_, seconds) in zip(self.fault_times, self.recoveries, strict=False)
            ],
            "violations": self.violations(),
        }


class ClaimBook:
    """Which members hold a registered link to which device, since when (wall clock); measures every overlap."""

    def __init__(self, report: FleetSoakReport) -> None:
        self._report = report
        self._holders: dict[str, dict[str, float]] = {}  # device → member → since
        self._held: dict[str, set[str]] = {}  # member → devices
        self._down_since: dict[str, float] = {}  # device → when its last driver let go

    def held_by(self, member_id: str) -> set[str]:
        return self._held.setdefault(member_id, set())

    def claim(self, member_id: str, device_id: str, at: float) -> None:
        holders = self._holders.setdefault(device_id, {})
        if member_id not in holders:
            holders[member_id] = at
            self.held_by(member_id).add(device_id)
            down_since = self._down_since.pop(device_id, None)
            if down_since is not None:
                self._report.note_outage(down_since, max(at, down_since))

    def release(self, member_id: str, device_id: str, at: float) -> None:
        holders = self._holders.get(device_id, {})
        since = holders.pop(member_id, None)
        if since is None:
            return
        self.held_by(member_id).discard(device_id)
        for other, other_since in holders.items():
            began = max(since, other_since)
            self._report.note_overlap(device_id, member_id, other, max(0.0, at - began), began)
        if not holders:
            self._down_since[device_id] = at

    def set_claims(self, member_id: str, devices: set[str], at: float) -> None:
        held = self.held_by(member_id)
        for device_id in sorted(held - devices):
            self.release(member_id, device_id, at)
        for device_id in sorted(devices - held):
            self.claim(member_id, device_id, at)

    def close_outages(self, at: float) -> None:
        """End the run's outages still open at ``at`` (a device that never came back stays down until then)."""
        for down_since in self._down_since.values():
            self._report.note_outage(down_since, at)
        self._down_since.clear()

    def finish(self, at: float) -> None:
        """Close every claim still open (the end of the run), measuring the overlaps that never ended."""
        for member_id, held in self._held.items():
            for device_id in sorted(held):
                self.release(member_id, device_id, at)
        self._down_since.clear()


async def watch_member(
    member_id: str, manager: ConstellationDeviceManager, book: ClaimBook, *, task_status: trio.TaskStatus[None]
) -> None:
    """Feed ``book`` with one in-process member's claims, from its manager's STATUS events."""
    with manager.subscribe(1 << 16) as events:
        task_status.started()
        dropped = 0
        async for event in events:
            if events.dropped != dropped:
                dropped = events.dropped
                states = manager.get_all_device_states().items()
                book.set_claims(member_id, {d for d, s in states if s.status in REGISTERED}, time.time())
            elif event.kind is EventKind.STATUS and event.new_status is not None:
                if event.new_status in REGISTERED:
                    book.claim(member_id, event.device_id, event.at)
                else:
                    book.release(member_id, event.device_id, event.at)


async def _shielded(cleanup: Callable[[], Awaitable[None]]) -> None:
    """Run a bounded cleanup even while the soak is being cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        await cleanup()


class MemberProcess:
    """Member C: ``member_process.py`` in a child process, one incarnation (and member id) per start."""

    def __init__(
        self,
        config: dict[str, Any],
        book: ClaimBook,
        report: FleetSoakReport,
        nursery: trio.Nursery,
        *,
        callers: int = 0,
        seed: int = 0,
    ):
        self._config = config
        self._book = book
        self._report = report
        self._nursery = nursery
        self._callers = callers
        self._seed = seed
        #: The calls of the live incarnation's callers that have begun and not ended: token → when it began.
        self._open: dict[str, float] = {}
        self.incarnation = 0
        self.member_id: str | None = None
        self._process: trio.Process | None = None
        self._read_all: trio.Event | None = None
        self._time_zero: float | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None

    @property
    def claims(self) -> set[str]:
        return self._book.held_by(self.member_id) if self.member_id is not None else set()

    def set_time_zero(self) -> None:
        """Samples from now on are timed from now (when the soak's faults begin), as the soak's own are."""
        self._time_zero = trio.current_time()

    async def start(self) -> None:
        self.incarnation += 1
        self.member_id = member_id = f"soak-c{self.incarnation}"
        # Caller numbers unique to this incarnation, so that its tasks' tokens are too; a seed of its own.
        callers = [CALLER_NUMBERS_PER_INCARNATION * self.incarnation + i for i in range(self._callers)]
        seed = self._seed * CALLER_NUMBERS_PER_INCARNATION + self.incarnation
        config = {**self._config, "member_id": member_id, "callers": callers, "caller_seed": seed}
        command = [sys.executable, "-m", "tests.soak.member_process", json.dumps(config)]
        self._process = process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, cwd=REPO_ROOT)
        self._report.member_process.append({"member_id": member_id, "pid": process.pid, "samples": []})
        self._read_all = read_all = trio.Event()
        with trio.fail_after(60):
            await self._nursery.start(self._read, process, member_id, read_all, name=f"member-stdout:{member_id}")
        self.sample()

    async def _read(
        self, process: trio.Process, member_id: str, read_all: trio.Event, *, task_status: trio.TaskStatus[None]
    ) -> None:
        assert process.stdout is not None
        started = False
        try:
            async with process.stdout:
                async for line in lines_of(process.stdout):
                    word, _, rest = line.decode().partition(" ")
                    if word == "ready" and not started:
                        started = True
                        task_status.started()
                    elif word in ("claim", "release"):
                        at, _, device_id = rest.partition(" ")
                        change = self._book.claim if word == "claim" else self._book.release
                        change(member_id, device_id, float(at))
                    elif word == "claims":
                        at, _, devices = rest.partition(" ")
                        self._book.set_claims(member_id, set(json.loads(devices)), float(at))
                    elif word in CALL_LINES:
                        self._note_call(word, rest)
            if not started:
                raise RuntimeError(f"member process {member_id} exited before joining: {process.returncode}")
        finally:
            read_all.set()

    def _note_call(self, word: str, rest: str) -> None:
        """A line about one of C's calls: ``call <token>`` as it begins, then one end — ``result <token> <kind>``,
        ``refused <token> <exception type>`` or ``raised <token> <text>`` (see ``member_process.py``)."""
        token, _, detail = rest.partition(" ")
        report = self._report
        if word == "call":
            report.calls += 1
            report.member_outcomes["calls"] += 1
            self._open[token] = trio.current_time()
            return
        began = self._open.pop(token, None)
        if began is not None:
            report.note_call_time(trio.current_time() - began)
        report.member_outcomes[detail if word != "raised" else "raised"] += 1
        if word == "result":
            report.results += 1
            report.results_by_kind[detail] += 1
            if detail == "completed":
                record_completed(report, token)
        elif word == "refused":
            report.refusals[detail] += 1
        else:
            report.raised.append(f"(member C) {detail}")

    def sample(self) -> None:
        """One RSS/fd sample of the live incarnation (seconds since the soak's faults began, or -1 before)."""
        if self._process is None:
            return
        try:
            child = psutil.Process(self._process.pid)
            rss, fds = child.memory_info().rss, child.num_fds()
        except psutil.Error:
            return
        at = -1 if self._time_zero is None else round(trio.current_time() - self._time_zero)
        self._report.member_process[-1]["samples"].append((at, round(rss / (1 << 20), 1), fds))

    async def kill(self) -> None:
        """SIGKILL: its links close with the process (the kernel closes the sockets), its leases stay until they
        expire. Every claim it reported before the kill is read before its claims are closed at the kill."""
        process, self._process = self._process, None
        if process is None:
            return
        self._sample_of(process)
        killed_at = time.time()
        process.kill()
        await process.wait()
        await self._wait_read()
        assert self.member_id is not None
        self._book.set_claims(self.member_id, set(), killed_at)
        # Its callers' calls in flight died with it: no outcome can come back (at most one per caller).
        self._report.lost_with_member += len(self._open)
        self._open.clear()

    def abandon(self) -> None:
        """SIGKILL the live incarnation, if any, without waiting: the soak is ending abnormally, and an orphaned
        member would go on competing for the next run's devices and CPU."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()

    def _sample_of(self, process: trio.Process) -> None:
        self._process = process
        self.sample()
        self._process = None

    async def stop(self) -> None:
        """SIGTERM: the member leaves the fleet gracefully (SIGKILL if it has not exited within 30 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        self._sample_of(process)
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        await self._wait_read()
        assert self.member_id is not None
        self._book.set_claims(self.member_id, set(), time.time())
        # Its callers stopped as it left: a call in flight was cut short, as the in-process callers' are.
        self._report.cut_short += len(self._open)
        self._open.clear()

    async def _wait_read(self) -> None:
        if self._read_all is not None:
            await self._read_all.wait()


@asynccontextmanager
async def open_members(
    redis_url: str, configs: Sequence[DeviceConfig], lease_ttl: float, book: ClaimBook
) -> AsyncIterator[list[FleetMember]]:
    """Members A and B in this process, each with a manager of its own and its claims watched; they leave (hand
    their devices back) when the block ends."""
    async with AsyncExitStack() as stack:
        watchers = await stack.enter_async_context(trio.open_nursery())
        stack.callback(watchers.cancel_scope.cancel)
        members = []
        for member_id in IN_PROCESS_MEMBERS:
            manager = await stack.enter_async_context(
                ConstellationDeviceManager(task_name=TASK_NAME, **MANAGER_SETTINGS)  # type: ignore[arg-type]
            )
            await watchers.start(watch_member, member_id, manager, book)
            member = await stack.enter_async_context(
                open_fleet_member(
                    manager, redis_url, configs, member_id=member_id, lease_ttl=lease_ttl, namespace=NAMESPACE
                )
            )
            members.append(member)
        yield members


def _drivers(ids: Sequence[str], members: Sequence[FleetMember], process: MemberProcess) -> list[list[str]]:
    """Per device of ``ids``, the live members that hold a registered link to it right now."""
    registered = [
        {d for d, state in member.manager.get_all_device_states().items() if state.status in REGISTERED}
        for member in members
    ]
    claims = process.claims if process.member_id is not None else set()
    return [
        [m.member_id for m, held in zip(members, registered, strict=True) if d in held]
        + ([process.member_id] if d in claims and process.member_id is not None else [])
        for d in ids
    ]


async def _all_back(
    members: Sequence[FleetMember], process: MemberProcess, rig: SoakRig, leases: FleetRegistry, ids: Sequence[str]
) -> None:
    """Until every device is driven by exactly one live member (IDLE or BUSY there), no member drives more than its
    fair share (so a member that just joined has had its part handed over), that member holds the device's lease in
    Redis, and the server lists the device's registration."""
    expected = sorted(f"{TASK_NAME}@{d}" for d in ids)
    while True:
        drivers = _drivers(ids, members, process)
        share = fair_share(len(ids), len(members) + (process.member_id is not None and process.alive))
        balanced = max(Counter(found[0] for found in drivers if found).values(), default=0) <= share
        if balanced and all(len(found) == 1 for found in drivers) and rig.device_side.server_running:
            online = await rig.device_side.online() or {}
            if sorted(c for c, role in online.items() if role == ClientType.CONSTELLATION.value) == expected:
                try:
                    owners = await leases.owners(ids)
                except RegistryUnavailable:
                    owners = []
                if owners == [found[0] for found in drivers]:
                    return
        await trio.sleep(POLL_EVERY)


async def _not_back(
    members: Sequence[FleetMember], process: MemberProcess, rig: SoakRig, leases: FleetRegistry, ids: Sequence[str]
) -> list[str]:
    """What :func:`_all_back` still waits for, device by device (the first few): who drives it, who holds its lease,
    what the server lists, and each in-process member's view of it."""
    try:
        owners: list[str | None] | str = await leases.owners(ids)
    except RegistryUnavailable as exc:
        owners = f"unknown ({exc})"
    online = await rig.device_side.online() or {}
    all_drivers = _drivers(ids, members, process)
    found = []
    for index, (device_id, drivers) in enumerate(zip(ids, all_drivers, strict=True)):
        owner = owners if isinstance(owners, str) else owners[index]
        registered = f"{TASK_NAME}@{device_id}" in online
        if len(drivers) == 1 and owner == drivers[0] and registered:
            continue
        views = ", ".join(
            f"{m.member_id}: {p.status.name if (p := m.manager.get_device_info(device_id)) else '-'}" for m in members
        )
        found.append(
            f"{device_id}: drivers {drivers}, lease {owner}, server: agent {'on' if device_id in online else 'off'},"
            f" constellation {'on' if registered else 'off'}; {views}"
        )
    share = fair_share(len(ids), len(members) + (process.member_id is not None and process.alive))
    counts = Counter(drivers[0] for drivers in all_drivers if drivers)
    return [f"{len(found)} devices not back; fair share {share}, driven: {dict(counts)}", *found[:MAX_DEVICES_SHOWN]]


#: How many devices :func:`_not_back` describes.
MAX_DEVICES_SHOWN = 8


def attribute_outages(report: FleetSoakReport) -> None:
    """Fold the devices' outages into the faults' recoveries: an outage that began after a fault started (and
    before the next one) is that fault's, and the fault has recovered when its last outage ended. This catches what
    the wait after a fault cannot: a device that drops *after* the wait saw everything back (a lease found gone at
    the next renewal after Redis came back empty, a cut link noticed a moment after the cut)."""
    for index, ((fault, waited), (_, _, ended)) in enumerate(zip(report.recoveries, report.fault_times, strict=True)):
        late = max(0.0, report.latest_back[index] - ended)
        if late > report.recovery_bound and waited <= report.recovery_bound:
            report.unrecovered.append(f"{fault} (a device down until {late:.1f} s after it)")
        report.recoveries[index] = (fault, max(waited, late))


async def run_fleet_soak(
    *,
    seconds: float,
    devices: int = 12,
    callers: int = 4,
    member_callers: int = 2,
    seed: int = 1,
    fault_every: float = 4.0,
    warmup: float = 5.0,
    fault_warmup: float = 0.0,
    lease_ttl: float = 3.0,
    faults: Sequence[str] = FLEET_FAULTS,
    trace_memory: int | None = None,
) -> FleetSoakReport:
    """Run the fleet soak for ``seconds`` (after ``warmup`` and ``fault_warmup``, as :func:`.engine.run_soak`) and
    return what it saw; see the module docstring. ``callers`` run in this process, on members A and B in turn, and
    ``member_callers`` more in member C's process (each incarnation its own: calls that C must route through
    Redis, refused while it is partitioned).
    ``faults`` and ``trace_memory``: as for :func:`.engine.run_soak` (member C's process is not traced)."""
    binary = redis_binary()
    from galaxy_trio.fleet.redis import open_redis_registry  # needs the fleet extra (valkey-glide)

    report = FleetSoakReport(
        devices=devices, callers=callers + member_callers, member_callers=member_callers, lease_ttl=lease_ttl
    )
    report.recovery_bound = lease_ttl + RECOVERY_BOUND
    rng = random.Random(seed)
    ids = [f"soak-{i:03d}" for i in range(devices)]
    book = ClaimBook(report)
    started = time.monotonic()
    async with (
        trio.open_nursery() as nursery,
        open_redis_process(binary=binary) as redis,  # killed however the soak ends
        AsyncExitStack() as children,
    ):
        # Whatever ends the soak (an error, a timeout, Ctrl-C), member C must not outlive it either.
        with trio.fail_after(REDIS_START_WITHIN):
            await redis.start()
        # Member C's way to Redis, which the partition cuts (in a process of its own: see .proxy_process).
        redis_link = await children.enter_async_context(open_proxy_process("tcp", redis.port))
        rig = await children.enter_async_context(open_soak_rig(nursery, ids, report))
        configs = [rig.device(device_id, max_retries=1000) for device_id in ids]
        process = MemberProcess(
            {
                "redis": f"redis://127.0.0.1:{redis_link.port}/0",
                "devices": [
                    {"device_id": c.device_id, "server_url": c.server_url, "max_retries": 1000} for c in configs
                ],
                "namespace": NAMESPACE,
                "lease_ttl": lease_ttl,
                "task_name": TASK_NAME,
                "settings": MANAGER_SETTINGS,
            },
            book,
            report,
            nursery,
            callers=member_callers,
            seed=seed,
        )
        children.callback(process.abandon)

        async def inject(fault: str) -> None:
            report.begin_fault(fault, time.time())
            await inject_fleet_fault(fault)
            report.end_fault(fault, time.time())

        async def inject_fleet_fault(fault: str) -> None:
            if fault == "redis_restart":
                await redis.kill()
                await trio.sleep(rng.uniform(0.2, 1.5))
                with trio.fail_after(REDIS_START_WITHIN):
                    await redis.start()
            elif fault == "member_kill":
                await process.kill()
            elif fault == "member_restart":
                await process.start()
            elif fault == "member_partition":
                held = len(process.claims)
                await redis_link.cut()
                await trio.sleep(lease_ttl + rng.uniform(1.0, 3.0))
                report.partitions.append((held, len(process.claims)))
                await redis_link.restore()
            else:
                await inject_rig_fault(fault, rig=rig, ids=ids, rng=rng)

        async with (
            open_redis_registry(redis.url, namespace=NAMESPACE, client_name="soak-observer") as leases,
            open_members(redis.url, configs, lease_ttl, book) as members,
        ):
            await process.start()
            all_back = partial(_all_back, members, process, rig, leases, ids)
            async with trio.open_nursery() as load:
                with trio.fail_after(60):
                    await all_back()
                for number in range(callers):
                    assign = members[number % len(members)].assign_task_to_device
                    rng_of_caller = random.Random(rng.random())
                    load.start_soon(run_caller, number, assign, ids, rng_of_caller, report, REFUSALS)

                def sample_process(_elapsed: float) -> None:
                    process.sample()

                await run_schedule(
                    report,
                    rng,
                    seconds=seconds,
                    warmup=warmup,
                    fault_warmup=fault_warmup,
                    fault_every=fault_every,
                    faults=faults,
                    inject=inject,
                    all_back=all_back,
                    on_sample=sample_process,
                    on_start=process.set_time_zero,
                    follow_ups={"member_kill": "member_restart"},
                    trace_memory=trace_memory,
                    describe=partial(_not_back, members, process, rig, leases, ids),
                    server_usage=rig.device_side.usage,
                )
                book.close_outages(time.time())
                attribute_outages(report)
                # The callers stop; a call in flight is cancelled with them and still counts as one call, one end.
                load.cancel_scope.cancel()
            await process.stop()
        book.finish(time.time())
        await rig.device_side.stop()  # its last records read
        await redis.kill()
        nursery.cancel_scope.cancel()
    report.leftover_tasks = sorted(
        task.name for n in trio.lowlevel.current_task().child_nurseries for task in n.child_tasks
    )
    report.seconds = time.monotonic() - started
    return report
