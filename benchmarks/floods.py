"""Floods and exhaustion against ``serve`` (issue 15, item 3): a bystander's heartbeat round trips during each.

Three kinds of process, so that the figures are the server's and not the load generator's:

- the AIP server (``--serve``: ``serve_aip`` with the settings below, logging its warnings to a file);
- the flooder (``--flood KIND``), one per phase, which runs one flood for ``--seconds`` and prints its own figures;
- this process, which keeps one bystander device registered and sends it a heartbeat every 20 ms, timing each
  round trip (heartbeat to its ack), and labels every sample with the phase it fell in.

Phases, in order: ``baseline`` (no flood); ``frames`` (one client sending ``--rate`` small frames a second,
reconnecting each time it is closed); ``frames-unbounded`` (the same against a second server whose frame budget is
off, for the ratio); ``silent`` (``--silent`` TCP clients that send nothing, each reopened when the server hangs up);
``held`` (``--held`` devices registered, then held open ``--seconds``, each answering pings; the ramp while they
connect is reported apart as ``held-ramp``); ``deaf`` (a device that reads nothing
while a constellation queues TASKs, hence COMMANDs, for it); ``manager`` (a manager in this process with
``--manager-devices`` devices, one of whose servers floods its link at ``--rate`` frames a second: the gaps between
the other devices' heartbeats, as their server saw them).

The main server runs with the default settings (frame budget: 200 frames/s, burst 2000) but 5 s handshake and
registration deadlines; ``frames-unbounded`` and ``deaf`` run against a second server with no frame budget and 5 s
keepalive and send deadlines, so that each bound shows within a phase (a second bystander measures it).

With ``--base DIR`` (a checkout or ``git archive`` of another commit), a third server runs from that tree's
``galaxy_trio`` (``PYTHONPATH=DIR``), with its own bystander, and every phase of the main server runs against it
first, labelled ``PHASE (base)``: a before/after in one run, under the same machine load.

    python benchmarks/floods.py [--seconds 10] [--rate 10000] [--silent 1000] [--held 5000] [--base DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import _common
import psutil
import trio
import trio.lowlevel
import trio.testing
from _device_side import describe_load, host_load

from galaxy_trio.aip import (
    ClientMessageType,
    ClientType,
    builders,
    decode_client_message,
    decode_server_message,
    encode_text,
)
from galaxy_trio.errors import LinkError
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.redact import url_with_token
from galaxy_trio.runtime import tune_gc
from galaxy_trio.server import ServerSettings, serve_aip
from galaxy_trio.transport import CLOSE_GRACE, LinkRequest, open_link, serve_links

TOKEN = "floods-bench-token"
SCRIPT = Path(__file__).resolve()
#: The main server: the defaults (frame budget 200/s, burst 2000), with 5 s handshake and registration deadlines so
#: that the silent clients are dropped within a phase.
MAIN_SETTINGS: dict[str, Any] = {"handshake_deadline": 5.0, "registration_deadline": 5.0}
#: The second server: no frame budget (the ratio for the frames flood) and 5 s keepalive and send deadlines, so that
#: the deaf device is closed within a phase.
SHORT_SETTINGS: dict[str, Any] = {
    **MAIN_SETTINGS,
    "frame_rate": 1e12,
    "frame_burst": 10**12,
    "ping_interval": 5.0,
    "ping_timeout": 5.0,
    "send_deadline": 5.0,
}
BYSTANDER_PERIOD = 0.02
#: The bystander's label while the server is stopped (``--release-paused``): those round trips are not counted.
PAUSED = "paused"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _ws(port: int) -> str:
    return url_with_token(f"ws://127.0.0.1:{port}/ws", TOKEN)


# --- the server process -----------------------------------------------------------------------------------------


#: A pass that starts with more runnable tasks than this is profiled (``--profile-passes``).
PROFILED_RUNNABLE = 1000

#: A scheduler pass of the server longer than this is logged (``--pass-log``): every other client waits it out.
LONG_PASS_S = 0.02


class PassLog(trio.abc.Instrument):
    """The server's long scheduler passes, and those in which a garbage collection ran, one JSON line each: when
    it ended (``time.time()``), how long it took, how much CPU time the server spent in it (the rest is the OS
    running other processes), how many task steps ran in it, and how much of it was a full (generation 2)
    garbage collection, and how much a young one (generations 0 and 1: with ``serve``'s thresholds a generation-1
    collection scans the survivors of 50 young ones, which during a ramp are most of the new connections' objects).
    Collections are timed in CPU time, so that one preempted by another process does not count the other's time.

    A bystander's round trip on a loaded machine also waits for the CPU; these say what the server itself did.
    Costs four clock reads a pass and a counter a task step.
    """

    def __init__(self, path: str, profile_dir: str | None = None) -> None:
        self._file = open(path, "w", buffering=1)  # (open for the server process's life)
        #: With ``profile_dir``, every pass that starts with over PROFILED_RUNNABLE runnable tasks runs under
        #: cProfile (a pstats file each): where the time of a storm's pass goes, that pass alone.
        self._profile_dir = profile_dir
        self._profiler: cProfile.Profile | None = None
        self._profiled = 0
        self._started = 0.0
        self._cpu_started = 0.0
        self._steps = 0
        self._gc_s = 0.0
        self._young_gc_s = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        elif info["generation"] == 2:
            self._gc_s += time.thread_time() - self._gc_started
        else:
            self._young_gc_s += time.thread_time() - self._gc_started

    def after_io_wait(self, timeout: float) -> None:
        if self._profile_dir is not None and trio.lowlevel.current_statistics().tasks_runnable > PROFILED_RUNNABLE:
            self._profiler = cProfile.Profile()
            self._profiler.enable()
        self._started = time.perf_counter()
        self._cpu_started = time.thread_time()
        self._steps = 0
        self._gc_s = 0.0
        self._young_gc_s = 0.0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self._steps += 1

    def before_io_wait(self, timeout: float) -> None:
        took = time.perf_counter() - self._started
        if self._profiler is not None:
            self._profiler.disable()
            self._profiled += 1
            self._profiler.dump_stats(f"{self._profile_dir}/pass-{self._profiled}.pstats")
            self._profiler = None
        if self._started and (took > LONG_PASS_S or self._gc_s or self._young_gc_s):
            line = {
                "t": time.time(),
                "ms": 1000 * took,
                "cpu_ms": 1000 * (time.thread_time() - self._cpu_started),
                "steps": self._steps,
                "gc_ms": 1000 * self._gc_s,
                "young_gc_ms": 1000 * self._young_gc_s,
            }
            self._file.write(json.dumps(line) + "\n")


def pass_figures(path: Path, start: float, end: float) -> dict[str, Any]:
    """The server's long passes that ended between ``start`` and ``end`` (``time.time()``), and its collections
    (every pass in which one ran is logged)."""
    logged = [p for line in path.read_text().splitlines() if start <= (p := json.loads(line))["t"] < end]
    passes = [p for p in logged if p["ms"] > 1000 * LONG_PASS_S]
    return {
        "server_long_passes": len(passes),
        "server_longest_pass_ms": round(max((p["ms"] for p in passes), default=0.0), 1),
        # The server's own CPU time in its longest-CPU pass: the rest of a long pass's wall time is the OS's.
        "server_most_cpu_in_a_pass_ms": round(max((p.get("cpu_ms", 0.0) for p in passes), default=0.0), 1),
        "server_most_steps_in_a_pass": max((p["steps"] for p in passes), default=0),
        "server_full_gc_ms": round(sum(p["gc_ms"] for p in logged), 1),
        "server_young_gc_ms": round(sum(p.get("young_gc_ms", 0.0) for p in logged), 1),  # (a base tree's log too)
        # The most collection time in one pass: what a collection adds to a bystander's round trip at worst.
        "server_most_gc_in_a_pass_ms": round(
            max((p["gc_ms"] + p.get("young_gc_ms", 0.0) for p in logged), default=0.0), 1
        ),
    }


async def run_server(extra: dict[str, Any]) -> None:
    settings = ServerSettings(**extra)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, port=0, token=TOKEN, settings=settings))
        print(server.port, flush=True)


# --- the flooders (one process per phase) -------------------------------------------------------------------------


def masked_text_frame(payload: bytes) -> bytes:
    """One client text frame, built by hand (RFC 6455 §5.2) so that a whole batch goes out in one write: FIN and
    opcode 1, the mask bit with an all-zero masking key (legal, and XOR with zeros leaves the payload as is)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return b"\x81" + length + b"\0\0\0\0" + payload


async def _raw_upgrade(port: int) -> trio.SocketStream:
    """A TCP stream to the server, past the HTTP upgrade (the answer's head is read and dropped)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = (
        f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await stream.send_all(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise trio.BrokenResourceError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:40]!r}")
    return stream


async def flood_frames(port: int, seconds: float, rate: int) -> dict[str, Any]:
    """One client at a time writing ``rate`` heartbeat frames a second (in batches every 10 ms, reading and dropping
    whatever comes back), reconnecting each time the server hangs up."""
    sent = connections = 0
    lifetimes: list[float] = []
    batch_size = max(1, rate // 100)
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            client_id = f"flooder-{connections}"
            register = encode_text(builders.device_register(client_id, platform="linux", system_info=None))
            batch = masked_text_frame(encode_text(builders.heartbeat(client_id, ClientType.DEVICE)).encode())
            batch *= batch_size
            opened = trio.current_time()
            stream = await _raw_upgrade(port)
            try:
                await stream.send_all(masked_text_frame(register.encode()))
                async with trio.open_nursery() as nursery:

                    async def drain(
                        stream: trio.SocketStream = stream, done: trio.CancelScope = nursery.cancel_scope
                    ) -> None:
                        while await stream.receive_some(1 << 16):
                            pass
                        done.cancel()

                    nursery.start_soon(drain)
                    next_at = trio.current_time()
                    while True:
                        await stream.send_all(batch)
                        sent += batch_size
                        next_at += 0.01
                        await trio.sleep_until(next_at)
            except* (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                lifetimes.append(trio.current_time() - opened)
                await stream.aclose()
    return {
        "frames_sent": sent,
        "sent_per_s": round(sent / seconds),
        "connections": connections,
        "median_lifetime_s": round(percentile(lifetimes[:-1], 50), 3),
    }


async def flood_silent(port: int, seconds: float, count: int) -> dict[str, Any]:
    """``count`` TCP connections that send nothing; each is reopened when the server hangs up on it."""
    hangups: list[float] = []
    opened = 0

    async def one() -> None:
        nonlocal opened
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            opened += 1
            start = trio.current_time()
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass
            hangups.append(trio.current_time() - start)
            await stream.aclose()

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return {"opened": opened, "hung_up": len(hangups), "median_hangup_s": percentile(hangups, 50)}


async def flood_held(port: int, seconds: float, count: int, wait_for_go: bool = False) -> dict[str, Any]:
    """``count`` devices registered and held open (each reading, so it answers pings), connected 100 at a time (a
    storm of thousands at once measures the load generator, not the server; ``silent`` is the storm). Prints a
    first line when all are registered (or after 120 s), a second after holding them ``seconds``, then lets go
    (``wait_for_go``: once a line comes on stdin)."""
    registered = 0
    failures: Counter[str] = Counter()
    start = trio.current_time()

    async def one(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal registered
        try:
            async with open_link(_ws(port)) as link:
                await link.send(builders.device_register(f"held-{i}", platform="linux", system_info=None))
                await link.receive()
                registered += 1
                task_status.started()
                try:
                    while True:
                        await link.receive()
                finally:
                    registered -= 1
        except LinkError as exc:
            failures[type(exc).__name__] += 1

    async def batch(first: int) -> None:
        async with trio.open_nursery() as starting:
            for i in range(first, min(first + 100, count)):
                starting.start_soon(nursery.start, one, i)

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(120):
            for first in range(0, count, 100):
                await batch(first)
        ramp = {"registered": registered, "ramp_s": round(trio.current_time() - start, 2)}
        print(json.dumps(ramp), flush=True)
        await trio.sleep(seconds)
        held = registered
        print("{}", flush=True)  # the hold is over: what follows is the release
        if wait_for_go:
            await _line(trio.lowlevel.FdStream(os.dup(0)))  # (the driver stopped the server meanwhile)
        nursery.cancel_scope.cancel()
    return {**ramp, "still_registered_at_end": held, "failures": dict(failures)}


async def flood_deaf(port: int, seconds: float) -> dict[str, Any]:
    """A device that reads nothing, and a constellation queueing 20 TASKs a second for it."""
    tasks = ends = refused = 0
    closed_after = math.nan
    async with open_link(_ws(port)) as deaf, open_link(_ws(port)) as constellation:
        await deaf.send(builders.device_register("deaf", platform="linux", system_info=None))
        await deaf.receive()  # the confirmation; nothing is read after it
        await constellation.send(builders.constellation_register("t", "deaf"))
        await constellation.receive()
        start = trio.current_time()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:

                async def submit() -> None:
                    nonlocal tasks
                    while True:
                        tasks += 1
                        request = builders.task_request(
                            "t@deaf", "deaf", session_id=f"s{tasks}", task_name="t", request="list_tools"
                        )
                        await constellation.send(request)
                        await trio.sleep(0.05)

                nursery.start_soon(submit)
                try:
                    while True:
                        message = decode_server_message(await constellation.receive())
                        if message.type.value == "task_end":
                            ends += 1
                        elif message.error and "disconnected" in message.error:
                            closed_after = trio.current_time() - start
                        elif message.error:
                            refused += 1
                except LinkError:
                    nursery.cancel_scope.cancel()
    return {"tasks_sent": tasks, "task_ends": ends, "refused": refused, "deaf_closed_after_s": closed_after}


async def flood_manager_servers(rate: int) -> dict[str, Any]:
    """Fake AIP servers for the manager phase: one floods its link with heartbeat acks nobody asked for, the other
    answers calmly and times the heartbeats it gets. Prints its ports, serves until a line on stdin, returns the
    calm devices' heartbeat gaps."""
    beats: dict[str, list[float]] = {}

    async def serve(flooding: bool, request: LinkRequest) -> None:
        try:
            link = await request.accept()
            register = decode_client_message(await link.receive())
            await link.send(builders.registration_confirmation())
            device = register.target_id or "?"
            async with trio.open_nursery() as nursery:
                if flooding:

                    async def flood() -> None:
                        ack = encode_text(builders.heartbeat_ack())
                        next_at = trio.current_time()
                        while True:
                            for _ in range(max(1, rate // 100)):
                                await link.send_text(ack)
                            next_at += 0.01
                            await trio.sleep_until(next_at)

                    nursery.start_soon(flood)
                while True:
                    message = decode_client_message(await link.receive())
                    if message.type is ClientMessageType.HEARTBEAT:
                        beats.setdefault(device, []).append(time.monotonic())
                        await link.send(builders.heartbeat_ack())
                    elif message.type is ClientMessageType.DEVICE_INFO_REQUEST:
                        info = {"os": "linux", "platform": "linux"}
                        await link.send(builders.device_info_response(message.request_id, info))
        except* LinkError:
            pass  # the manager went away (both tasks may see it: hence except*)

    async with trio.open_nursery() as nursery:
        serving = partial(serve_links, host="127.0.0.1", port=0, handshake_deadline=5.0)
        flood_port = await nursery.start(partial(serving, partial(serve, True)))
        calm_port = await nursery.start(partial(serving, partial(serve, False)))
        print(json.dumps({"flood_port": flood_port, "calm_port": calm_port}), flush=True)
        await trio.lowlevel.FdStream(os.dup(0)).receive_some(1)
        nursery.cancel_scope.cancel()
    return _manager_gaps({d: t for d, t in beats.items() if d != "flooded"}, 1.0)


def _manager_gaps(beats: dict[str, list[float]], interval: float) -> dict[str, Any]:
    """How late each heartbeat came after the one before, beyond ``interval``."""
    late = [b - a - interval for times in beats.values() for a, b in itertools.pairwise(times)]
    return {
        "calm_heartbeat_gaps": len(late),
        "late_p50_ms": 1000 * percentile(late, 50),
        "late_p99_ms": 1000 * percentile(late, 99),
        "late_max_ms": 1000 * max(late, default=math.nan),
    }


# --- one storm's pass, taken apart (``--pass-floor``, in this process) ----------------------------------------------

#: A client's close frame (FIN, opcode 8, masked, empty payload, all-zero key): what the storm's readers wake to.
CLOSE_FRAME = b"\x88\x80\0\0\0\0"
UPGRADE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class StormPass(trio.abc.Instrument):
    """The pass with the most task steps: its wall and CPU time, and the CPU time of the collections in it (the
    storm's pass, once readers all wake)."""

    def __init__(self) -> None:
        self.most: tuple[int, float, float, float] = (0, 0.0, 0.0, 0.0)  # (steps, wall ms, cpu ms, gc cpu ms)
        #: The same figures of the pass with the most CPU time.
        self.most_cpu: tuple[int, float, float, float] = (0, 0.0, 0.0, 0.0)
        self._steps = 0
        self._started = self._cpu_started = self._gc_started = self._gc_s = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self._gc_s += time.thread_time() - self._gc_started

    def after_io_wait(self, timeout: float) -> None:
        self._steps = 0
        self._gc_s = 0.0
        self._started, self._cpu_started = time.perf_counter(), time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self._steps += 1

    def before_io_wait(self, timeout: float) -> None:
        if not self._started:
            return
        cpu = 1000 * (time.thread_time() - self._cpu_started)
        figures = (self._steps, 1000 * (time.perf_counter() - self._started), cpu, 1000 * self._gc_s)
        if self._steps > self.most[0]:
            self.most = figures
        if cpu > self.most_cpu[2]:
            self.most_cpu = figures


async def _storm_pass(readers: list[Any], wake: Callable[[Any], object]) -> tuple[int, float, float, float]:
    """Wait until every reader is parked, wake them all in one task step, and time the pass they run in (the one
    with the most task steps, once everything is blocked again)."""
    await trio.testing.wait_all_tasks_blocked()
    gc.collect()
    storm = StormPass()
    trio.lowlevel.add_instrument(storm)
    gc.callbacks.append(storm.on_gc)
    try:
        for reader in readers:
            wake(reader)  # (plain writes, no schedule point: every reader becomes readable in this one step)
        await trio.testing.wait_all_tasks_blocked()
    finally:
        gc.callbacks.remove(storm.on_gc)
        trio.lowlevel.remove_instrument(storm)
    return storm.most


async def _bare_readers(count: int, paced: bool) -> tuple[int, float, float, float]:
    """``count`` trio socket streams, each read by a task parked in ``receive_some``; then ``paced``, each goes
    through a close turnstile (what ``WsLink._read`` does with a close frame) and no further."""
    from galaxy_trio.transport._pacing import PassTurnstile

    turnstile = PassTurnstile(16)
    pairs = [socket.socketpair() for _ in range(count)]

    async def read(stream: trio.SocketStream) -> None:
        await stream.receive_some(RECEIVE)
        if paced:
            await turnstile.pass_through()

    try:
        async with trio.open_nursery() as nursery:
            for theirs, _ in pairs:
                nursery.start_soon(read, trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
            return await _storm_pass([ours for _, ours in pairs], lambda ours: ours.send(CLOSE_FRAME))
    finally:
        for _, ours in pairs:
            ours.close()


async def _connect_clients(port: int, count: int, clients: list[socket.socket], *, register: bool) -> None:
    """``count`` clients of this process (non-blocking sockets, appended to ``clients``), upgraded one at a time;
    ``register``: each then a registered device (its confirmation read)."""
    for n in range(count):
        client = socket.socket()
        clients.append(client)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        await trio.lowlevel.wait_writable(client)
        client.send(
            f"GET /ws?token={TOKEN} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {UPGRADE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            await trio.lowlevel.wait_readable(client)
            head += client.recv(4096)
        if register:
            frame = encode_text(builders.device_register(f"d{n}", platform="linux", system_info=None))
            client.send(masked_text_frame(frame.encode()))
            await trio.lowlevel.wait_readable(client)
            client.recv(4096)  # the confirmation: registered


#: ``--pass-floor``'s keepalive: the devices' pings come due while the server is stopped (it stops this long, longer
#: than registering them all takes), and their verdicts a second after it goes on.
SILENT_PING_INTERVAL = 15.0
SILENT_PING_TIMEOUT = 1.0


async def _silent_devices(count: int) -> tuple[int, float, float, float]:
    """``count`` registered devices that send nothing more and read nothing; then this process is stopped
    (SIGSTOP; a shell sends SIGCONT) for ``SILENT_PING_INTERVAL``, as a server stopped by a busy machine, so every
    device's ping is due when it goes on, and a second later every verdict. The pass with the most CPU time from
    the resumption to the end of the closes the verdicts started."""
    settings = ServerSettings(ping_interval=SILENT_PING_INTERVAL, ping_timeout=SILENT_PING_TIMEOUT)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, port=0, token=TOKEN, settings=settings))
        clients: list[socket.socket] = []
        try:
            await _connect_clients(server.port, count, clients, register=True)
            await trio.testing.wait_all_tasks_blocked()
            waker = await trio.lowlevel.open_process(
                ["sh", "-c", f"sleep {SILENT_PING_INTERVAL}; kill -CONT {os.getpid()}"]
            )
            os.kill(os.getpid(), signal.SIGSTOP)
            storm = StormPass()
            trio.lowlevel.add_instrument(storm)
            try:
                # The closes wait CLOSE_GRACE for answers that never come.
                await trio.sleep(SILENT_PING_TIMEOUT + CLOSE_GRACE + 1.0)
            finally:
                trio.lowlevel.remove_instrument(storm)
            await waker.wait()
        finally:
            for client in clients:
                client.close()
        nursery.cancel_scope.cancel()
    return storm.most_cpu


async def _link_readers(count: int, aip: bool) -> tuple[int, float, float, float]:
    """``count`` clients (non-blocking sockets of this process) on a real server (``serve_links`` with a handler
    that reads each link until it ends; ``aip``: ``serve_aip``, each client a registered device), then every
    client's close frame at once: the server's whole close path runs, the pass timed is the first one."""

    async def handle(request: LinkRequest) -> None:
        link = await request.accept()
        try:
            while True:
                await link.receive()
        except LinkError:
            pass

    async with trio.open_nursery() as nursery:
        if aip:
            server = await nursery.start(partial(serve_aip, port=0, token=TOKEN, settings=ServerSettings()))
            port = server.port
        else:
            port = await nursery.start(partial(serve_links, handle, "127.0.0.1", 0, handshake_deadline=5.0))
        clients: list[socket.socket] = []
        try:
            await _connect_clients(port, count, clients, register=aip)
            most = await _storm_pass(clients, lambda client: client.send(CLOSE_FRAME))
        finally:
            for client in clients:
                client.close()
        nursery.cancel_scope.cancel()
    return most


RECEIVE = 16 * 1024
#: ``--pass-floor``'s variants: name, label, the coroutine (its figures: steps, wall ms, CPU ms, GC CPU ms).
PASS_FLOOR_VARIANTS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "bare": ("trio readers (receive_some only)", partial(_bare_readers, paced=False)),
    "turnstile": ("... and the close turnstile", partial(_bare_readers, paced=True)),
    "links": ("serve_links links (WsLink close path)", partial(_link_readers, aip=False)),
    "aip": ("serve_aip devices (the whole server)", partial(_link_readers, aip=True)),
    # (the most-CPU pass here, not the most-steps one: a keepalive's verdicts can be one task step)
    "silent": ("serve_aip devices pinged, then judged silent, after a stop (most-CPU pass)", _silent_devices),
}


async def pass_floor(count: int, repeat: int, variants: Sequence[str]) -> dict[str, Any]:
    """The storm's pass for each variant, ``repeat`` times: median wall and CPU ms, and CPU per reader in µs."""
    figures: dict[str, Any] = {}
    for name in variants:
        label, variant = PASS_FLOOR_VARIANTS[name]
        runs = [await variant(count) for _ in range(repeat)]
        cpu = percentile([r[2] for r in runs], 50)
        figures[label] = {
            "steps": max(r[0] for r in runs),
            "pass_ms": round(percentile([r[1] for r in runs], 50), 1),
            "cpu_ms": round(cpu, 1),
            "cpu_us_per_reader": round(1000 * cpu / count, 1),
            "cpu_ms_each_run": [round(r[2], 1) for r in runs],
            "gc_cpu_ms_each_run": [round(r[3], 1) for r in runs],
        }
    return figures


# --- the bystander and the phases (this process) ------------------------------------------------------------------


class Bystander:
    """One registered device timing heartbeat round trips; ``phase`` labels the samples (and ``windows`` keeps
    when each label began and ended, ``time.time()``, to match the server's pass log)."""

    def __init__(self) -> None:
        self._phase = "setup"
        self._since = time.time()
        self.windows: dict[str, tuple[float, float]] = {}
        self.samples: dict[str, list[float]] = {}
        self.failures: Counter[str] = Counter()
        #: When a paused server was let go (``time.perf_counter()``), for the round trips in flight across it.
        self.resumed_at = 0.0

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, label: str) -> None:
        now = time.time()
        self.windows[self._phase] = (self._since, now)
        self._phase, self._since = label, now

    async def run(self, port: int, client_id: str = "bystander") -> None:
        async with open_link(_ws(port)) as link:
            await link.send(builders.device_register(client_id, platform="linux", system_info=None))
            await link.receive()
            frame = encode_text(builders.heartbeat(client_id, ClientType.DEVICE))
            while True:
                sent = time.perf_counter()
                await link.send_text(frame)
                while decode_server_message(await link.receive()).type.value != "heartbeat":
                    pass
                if self.phase != PAUSED:
                    # A round trip across the server's pause counts from its resumption: the rest was the pause.
                    began = max(sent, self.resumed_at)
                    self.samples.setdefault(self.phase, []).append(time.perf_counter() - began)
                await trio.sleep(BYSTANDER_PERIOD)

    def figures(self, phase: str) -> dict[str, Any]:
        rtts = self.samples.get(phase, [])
        return {
            "heartbeats": len(rtts),
            "rtt_p50_ms": 1000 * percentile(rtts, 50),
            "rtt_p99_ms": 1000 * percentile(rtts, 99),
            "rtt_max_ms": 1000 * max(rtts, default=math.nan),
        }


async def _line(stream: trio.abc.ReceiveStream) -> str:
    """One line from a child's stdout, read byte by byte (nothing after it is consumed)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise RuntimeError("a child process exited early")
        line += chunk
    return line.decode().strip()


def _tree_env(tree: str) -> dict[str, str]:
    """The environment of a child that imports ``galaxy_trio`` from ``tree``. This checkout's root goes on the path
    too, after ``tree``: ``_common`` puts it first when it is missing (so that a script run from a checkout imports
    that checkout), and would otherwise shadow ``tree`` (until 2026-12-07 13:10 it did: every ``--base`` server ran
    this checkout's code)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([tree, str(SCRIPT.parent.parent)])}


async def _start_process(
    *args: str, stderr: Any = subprocess.DEVNULL, tree: str | None = None
) -> tuple[trio.Process, str]:
    """Start this script in another mode (importing ``galaxy_trio`` from ``tree`` if given); returns the process
    and its first output line."""
    env = None if tree is None else _tree_env(tree)
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SCRIPT), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
    )
    assert process.stdout is not None
    return process, await _line(process.stdout)


#: After the held flooder exits, ``held-release`` lasts until the server is back to this many more descriptors
#: than before the phase (its sockets of the held devices closed), or this long at most.
RELEASE_FDS_LEFT = 50
RELEASE_MAX_S = 60.0


async def _flood(
    kind: str, port: int, args: argparse.Namespace, bystander: Bystander, server_pid: int, suffix: str = ""
) -> dict[str, Any]:
    """Run one flooder process to its end. A ``held`` flooder's first line ends its ramp: the samples after it are
    labelled ``held`` (before it, ``held-ramp``); its second line starts the release, labelled ``held-release``
    until the server has closed the held sockets (the flooder's exit only starts that work). ``suffix`` follows
    each label."""
    fds_before = _server_usage(server_pid)["server_fds"]
    paused = kind == "held" and args.release_paused
    extra = {"silent": ["--count", str(args.silent)], "held": ["--count", str(args.held)]}.get(kind, [])
    if paused:
        extra.append("--wait-for-go")
    # The deaf device is closed by the keepalive (ping_interval + ping_timeout = 10 s): give it the time.
    seconds = max(args.seconds, 15.0) if kind == "deaf" else args.seconds
    process, first = await _start_process(
        "--flood", kind, "--port", str(port), "--seconds", str(seconds), "--rate", str(args.rate), *extra
    )
    ramp: dict[str, Any] = {}
    assert process.stdout is not None
    spy: trio.Process | None = None
    if kind == "held":
        ramp = json.loads(first)
        bystander.phase = "held" + suffix
        if args.spy_release is not None and not suffix:
            # Sampling starts while the devices are held (idle, so hardly a sample) and ends after the release.
            spy = await trio.lowlevel.open_process(
                ["py-spy", "record", "--pid", str(server_pid), "--rate", str(args.spy_rate), "--format", "raw",
                 "--output", args.spy_release],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        await _line(process.stdout)
        if paused:
            bystander.phase = PAUSED
            os.kill(server_pid, signal.SIGSTOP)
            assert process.stdin is not None
            await process.stdin.send_all(b"go\n")
        else:
            bystander.phase = "held-release" + suffix
        first = ""
    output = first.encode()
    try:
        while chunk := await process.stdout.receive_some(1 << 16):
            output += chunk
        if await process.wait() != 0:
            raise RuntimeError(f"the {kind} flooder failed")
    finally:
        if paused:  # every held device has sent its close and hung up: the server finds them all at once
            os.kill(server_pid, signal.SIGCONT)
            bystander.resumed_at = time.perf_counter()
            bystander.phase = "held-release" + suffix
    result: dict[str, Any] = {**ramp, **json.loads(output)}
    if kind == "held":
        released = trio.current_time()
        with trio.move_on_after(RELEASE_MAX_S):
            # Another process's descriptors: nothing to wait on but the count itself.
            while True:
                if _server_usage(server_pid)["server_fds"] <= fds_before + RELEASE_FDS_LEFT:
                    break
                await trio.sleep(0.05)
        result["release_s"] = round(trio.current_time() - released, 2)
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        await spy.wait()
    return result


def _server_usage(pid: int) -> dict[str, Any]:
    process = psutil.Process(pid)
    cpu = process.cpu_times()
    return {
        "server_rss_mib": process.memory_info().rss / (1 << 20),
        "server_fds": process.num_fds(),
        "server_cpu_s": cpu.user + cpu.system,
    }


async def _manager_phase(args: argparse.Namespace) -> dict[str, Any]:
    """A manager here, its devices on the fake servers of a ``manager-servers`` process (heartbeats every 1 s)."""
    child_log = trio.Path(f"{args.server_log}.manager-servers")
    with await trio.to_thread.run_sync(partial(open, child_log, "wb")) as stderr:
        process, line = await _start_process("--flood", "manager-servers", "--rate", str(args.rate), stderr=stderr)
    ports = json.loads(line)
    ids = ["flooded"] + [f"calm-{i}" for i in range(args.manager_devices - 1)]
    try:
        async with ConstellationDeviceManager(
            task_name="floods", heartbeat_interval=1.0, heartbeat_timeout=5.0
        ) as manager:
            for device_id in ids:
                port = ports["flood_port"] if device_id == "flooded" else ports["calm_port"]
                await manager.register_device(device_id, _ws(port))
            await trio.sleep(args.seconds)
            profiles = [manager.get_device_info(d) for d in ids]
            idle = sum(1 for p in profiles if p is not None and p.status is DeviceStatus.IDLE)
    finally:
        assert process.stdin is not None and process.stdout is not None
        await process.stdin.send_all(b"stop\n")
        output = b""
        while chunk := await process.stdout.receive_some(1 << 16):
            output += chunk
        await process.wait()
    if not output.strip():
        tail = (await child_log.read_text(errors="replace"))[-2000:]
        raise RuntimeError(
            f"the manager-servers process exited with status {process.returncode} without its figures;"
            f" the end of its stderr ({child_log}):\n{tail}"
        )
    return {"devices": len(ids), "idle_at_end": idle, **json.loads(output)}


async def measure(args: argparse.Namespace, server_log: Any) -> dict[str, Any]:
    """Every phase in turn; ``server_log`` (an open file) takes both servers' warnings."""
    results: dict[str, Any] = {"phases": {}}
    pass_logs = {
        suffix: Path(f"{args.server_log}.passes{suffix.strip(' ()') or '-main'}.jsonl") for suffix in ("", " (base)")
    }
    gc_mode = ("--server-gc", args.server_gc)
    base_gc_mode = ("--server-gc", args.base_server_gc or args.server_gc)
    profiling: dict[str, tuple[str, ...]] = {"": (), " (base)": ()}
    if args.profile_passes is not None:
        profiling = {
            "": ("--profile-passes", args.profile_passes),
            " (base)": ("--profile-passes", str(Path(args.profile_passes, "base"))),
        }
    server, port_line = await _start_process(
        "--serve", *gc_mode, "--pass-log", str(pass_logs[""]), *profiling[""], stderr=server_log
    )
    unbounded, unbounded_port = await _start_process("--serve", *gc_mode, "--unbounded", stderr=server_log)
    servers = [server, unbounded]
    # (label suffix, server process, its port, its bystander): the base tree's server first, when asked for.
    mains: list[tuple[str, trio.Process, int, Bystander]] = []
    try:
        if args.base is not None:
            base, base_port = await _start_process(
                "--serve",
                *base_gc_mode,
                "--pass-log",
                str(pass_logs[" (base)"]),
                *profiling[" (base)"],
                stderr=server_log,
                tree=args.base,
            )
            servers.append(base)
            mains.append((" (base)", base, int(base_port), Bystander()))
        mains.append(("", server, int(port_line), Bystander()))
        other = Bystander()
        async with trio.open_nursery() as nursery:
            for _, _, main_port, main_bystander in mains:
                nursery.start_soon(main_bystander.run, main_port)
            nursery.start_soon(other.run, int(unbounded_port), "bystander-unbounded")
            await trio.sleep(1.0)
            for phase in args.phases:
                on_short = phase in ("frames-unbounded", "deaf")
                runs = [("", unbounded, int(unbounded_port), other)] if on_short or phase == "manager" else mains
                for suffix, process, port, who in runs:
                    label = phase + suffix
                    who.phase = ("held-ramp" if phase == "held" else phase) + suffix
                    cpu_before = _server_usage(process.pid)["server_cpu_s"]
                    if phase == "baseline":
                        flood: dict[str, Any] = {}
                        await trio.sleep(args.seconds)
                    elif phase == "manager":
                        flood = await _manager_phase(args)
                    else:
                        kind = "frames" if phase == "frames-unbounded" else phase
                        flood = await _flood(kind, port, args, who, process.pid, suffix)
                    who.phase = "between"
                    usage = _server_usage(process.pid)
                    usage["server_cpu_s"] = round(usage["server_cpu_s"] - cpu_before, 2)  # over the whole phase
                    passes = partial(_passes, who, pass_logs.get(suffix) if process is not unbounded else None)
                    if phase == "held":
                        for part in ("held-ramp", "held-release"):
                            results["phases"][part + suffix] = {
                                **who.figures(part + suffix),
                                **usage,
                                **passes(part + suffix),
                            }
                    results["phases"][label] = {**who.figures(label), **flood, **usage, **passes(label)}
                    print(f"{label}: {results['phases'][label]}", file=sys.stderr, flush=True)
                    await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
    finally:
        for process in servers:
            process.kill()
            await process.wait()
    return results


def _passes(who: Bystander, pass_log: Path | None, label: str) -> dict[str, Any]:
    if pass_log is None or label not in who.windows:
        return {}
    return pass_figures(pass_log, *who.windows[label])


def _warnings(text: str) -> dict[str, int]:
    """The bounds that fired, counted from the servers' log."""
    return {
        "frame budget exceeded": text.count("exceeded its frame budget"),
        "not reading (send_deadline)": text.count("(not reading)"),
        "keepalive ping timeout": text.count("did not answer a ping"),
        "no REGISTER in time": text.count("sent no REGISTER"),
    }


#: The server's long-pass figures (:func:`pass_figures`), as table columns.
PASS_COLUMNS = (
    "server_long_passes",
    "server_longest_pass_ms",
    "server_most_cpu_in_a_pass_ms",
    "server_most_steps_in_a_pass",
    "server_full_gc_ms",
    "server_young_gc_ms",
    "server_most_gc_in_a_pass_ms",
)


def render(results: dict[str, Any]) -> str:
    rows = []
    for phase, f in results["phases"].items():
        detail = {k: v for k, v in f.items() if not k.startswith(("rtt", "heartbeats", "server_"))}
        rows.append(
            [
                phase,
                f["heartbeats"],
                f"{f['rtt_p50_ms']:.2f}",
                f"{f['rtt_p99_ms']:.2f}",
                f"{f['rtt_max_ms']:.1f}",
                f"{f['server_rss_mib']:.0f}",
                f["server_fds"],
                f["server_cpu_s"],
                *(f.get(key, "") for key in PASS_COLUMNS),
                json.dumps(detail, default=str),
            ]
        )
    table = _common.markdown_table(
        [
            "phase", "beats", "p50 ms", "p99 ms", "max ms", "server RSS MiB", "server fds", "server CPU s",
            "passes > 20 ms", "longest pass ms", "most CPU in a pass ms", "most steps in a pass", "full GC ms",
            "young GC ms", "most GC in a pass ms", "flood",
        ],
        rows,
    )  # fmt: skip
    collector = f"servers' garbage collector: {results['server_gc']}"
    return "\n".join(
        [describe_load(results["load"]), collector, table, f"server warnings: {results['server_warnings']}"]
    )


GC_MODES = ("serve", "default")
PHASES = ("baseline", "frames", "frames-unbounded", "silent", "held", "deaf", "manager")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--rate", type=int, default=10_000, help="frames per second of the frame floods")
    parser.add_argument("--silent", type=int, default=1000, help="silent TCP clients (default 1000)")
    parser.add_argument("--held", type=int, default=5000, help="connections held open (default 5000)")
    parser.add_argument("--manager-devices", type=int, default=10, help="devices of the manager phase")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument(
        "--server-log",
        default="/tmp/floods-server.log",
        help="the servers' warnings (the pass logs and the manager phase's fake servers' stderr go next to it)",
    )
    parser.add_argument(
        "--base", metavar="DIR", help="also run each main-server phase against a server from this tree, first"
    )
    _common.add_out_argument(parser)
    parser.add_argument(
        "--server-gc",
        choices=GC_MODES,
        default="serve",
        help="the servers' garbage collector: as `python -m galaxy_trio serve` sets it (runtime.tune_gc, the "
        "default), or Python's default thresholds",
    )
    parser.add_argument(
        "--base-server-gc",
        choices=GC_MODES,
        help="the --base server's garbage collector, if not --server-gc's (with --base DIR = this tree: what the "
        "thresholds buy, in one run)",
    )
    parser.add_argument(
        "--spy-release",
        metavar="FILE",
        help="profile the main server with py-spy (raw format, to FILE) from the end of the held ramp to the end of "
        "the release; summarise it with benchmarks/spy_summary.py",
    )
    parser.add_argument("--spy-rate", type=int, default=1000, help="py-spy samples a second (default 1000)")
    parser.add_argument(
        "--profile-passes",
        metavar="DIR",
        help=f"the servers run each scheduler pass that starts with over {PROFILED_RUNNABLE} runnable tasks under "
        "cProfile, one pstats file each in DIR (the main server's; the base's, in DIR/base)",
    )
    parser.add_argument(
        "--pass-floor",
        type=int,
        metavar="N",
        help="instead of the phases: N readers woken in one step, in this process (bare trio sockets; with the "
        "close turnstile; serve_links links; serve_aip devices), and the pass they run in, timed (--repeat times)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of each --pass-floor variant (default 5)")
    parser.add_argument(
        "--variant",
        action="append",
        choices=list(PASS_FLOOR_VARIANTS),
        help="--pass-floor's variants to run (repeatable; default all; 'silent' stops this process 15 s a run)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unbounded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pass-log", help=argparse.SUPPRESS)
    parser.add_argument("--flood", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--wait-for-go", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--release-paused",
        action="store_true",
        help="stop each server (SIGSTOP) while the held devices close, and let it go once they have: every close "
        "then waits for the server at once, as on a machine busy for a moment (the paused round trips not counted)",
    )
    return parser.parse_args(argv)


def _pass_floor_main(args: argparse.Namespace) -> int:
    """``--pass-floor``: the variants here, or with ``--base``, in a child process on the base tree, then in one on
    this tree (a before/after in one run), one table per tree."""
    load = host_load()
    variants = args.variant or list(PASS_FLOOR_VARIANTS)
    if args.base is None:
        # As --serve: the servers' warnings (a verdict each, in the 'silent' variant) are logged, to stderr here.
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        tune_gc()
        tables = {"this tree": trio.run(pass_floor, args.pass_floor, args.repeat, variants)}
    else:
        tables = {}
        for tree, label in ((args.base, "base"), (str(SCRIPT.parent.parent), "this tree")):
            out = Path(f"{args.server_log}.pass-floor-{label.replace(' ', '-')}.json")
            command = [sys.executable, str(SCRIPT), "--pass-floor", str(args.pass_floor), "--repeat", str(args.repeat)]
            command += [option for name in variants for option in ("--variant", name)]
            subprocess.run([*command, "--out", str(out)], check=True, env=_tree_env(tree), stdout=subprocess.DEVNULL)
            tables[label] = json.loads(out.read_text())["pass_floor"]["this tree"]
    print(describe_load(load))
    for label, figures in tables.items():
        print(f"{label}:")
        print(
            _common.markdown_table(
                [
                    "readers woken at once",
                    "steps",
                    "pass ms",
                    "CPU ms",
                    "CPU µs per reader",
                    "CPU ms, each run",
                    "of which GC",
                ],
                [
                    [
                        k,
                        v["steps"],
                        v["pass_ms"],
                        v["cpu_ms"],
                        v["cpu_us_per_reader"],
                        v["cpu_ms_each_run"],
                        v["gc_cpu_ms_each_run"],
                    ]
                    for k, v in figures.items()
                ],
            )
        )
    if args.out is not None:
        _common.write_json(args.out, {"environment": _common.environment(), "load": load, "pass_floor": tables})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.base is not None:
        args.base = os.path.abspath(args.base)  # for the child's PYTHONPATH, whatever its working directory
    if args.serve:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        if args.server_gc == "serve":
            tune_gc()  # what the CLI's `serve` does, so that these are the figures of the server as shipped
        instruments = [] if args.pass_log is None else [PassLog(args.pass_log, args.profile_passes)]
        settings = SHORT_SETTINGS if args.unbounded else MAIN_SETTINGS
        trio.run(run_server, settings, instruments=instruments)
        return 0
    if args.pass_floor is not None:
        return _pass_floor_main(args)
    if args.flood == "manager-servers":
        print(json.dumps(trio.run(flood_manager_servers, args.rate)))
        return 0
    if args.flood:
        floods = {
            "frames": partial(flood_frames, args.port, args.seconds, args.rate),
            "silent": partial(flood_silent, args.port, args.seconds, args.count),
            "held": partial(flood_held, args.port, args.seconds, args.count, args.wait_for_go),
            "deaf": partial(flood_deaf, args.port, args.seconds),
        }
        print(json.dumps(trio.run(floods[args.flood])))
        return 0
    if args.profile_passes is not None:
        Path(args.profile_passes, "base").mkdir(parents=True, exist_ok=True)
    load = host_load()
    log = Path(args.server_log)
    with log.open("wb") as server_log:
        results = trio.run(measure, args, server_log)
    server_gc = (
        args.server_gc
        if args.base_server_gc in (None, args.server_gc)
        else (f"{args.server_gc} (base: {args.base_server_gc})")
    )
    results = {"environment": _common.environment(), "load": load, "server_gc": server_gc, **results}
    results["server_warnings"] = _warnings(log.read_text(errors="replace"))
    print(render(results))
    if args.out is not None:
        _common.write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
