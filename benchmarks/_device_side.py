"""The device side of the fleet benchmarks: one AIP server and many device agents in ONE trio process.

Usage::

    python benchmarks/_device_side.py --devices N [--port 0] [--token T] [--prefix dev-]
    python benchmarks/_device_side.py --devices N --agents-only --server-url ws://127.0.0.1:PORT/ws [--token T]
    python benchmarks/_device_side.py --devices 0 --port PORT [--token T]        # the server alone

The registration and reconnect benchmarks measure the *manager*: its wall time, CPU and memory. Everything it talks
to — the AIP server and the device agents — therefore runs in processes of its own, started with this script, so
none of their work is billed to the manager. Thousands of agents share one process (one trio loop), as the
benchmark's device side; a real fleet has one agent per machine.

Once the server listens and every agent is registered, it prints ONE JSON line on stdout (``"event": "ready"``,
with the ``port``, the token-free ``url``, the device ids' ``prefix``, ``listening_at`` as wall-clock seconds,
and the open-files limit) and then runs until its stdin closes (the parent's lifeline: a parent that dies
takes the device side with it) or it receives SIGTERM/SIGINT. The token comes from ``--token`` or else
``$GALAXY_TRIO_TOKEN``; parents pass it through the environment so it never shows in a process listing.

Agents wait 60 s (not the agent's default 10 s) for a reply to a heartbeat before declaring their link dead: on a
loaded 2-core machine a server busy with thousands of registrations may answer late, and an agent that drops and
re-registers in the middle of a measurement would measure the device side's flapping, not the manager.

Once every agent is registered, the process calls ``gc.freeze()``: the thousands of long-lived objects of its
connections then stay out of Python's full garbage collections, which otherwise grow with them and, at 5,000
agents, stall the process for seconds at a time — long enough for the server's keepalive to give up on its own
agents (20 s) and for devices to drop out in the middle of a measurement. The device side is the load generator,
not what is measured. (The manager worker of `bench_registration.py` raises its collector's thresholds as
``python -m galaxy_trio run`` does; see ``galaxy_trio.runtime``.)

The agents share one system_info, probed once at start: probing psutil afresh for each of 5,000 simulated devices
on one host would cost the device side seconds of CPU on the machine the manager is measured on, and tell nothing.

This module also holds what the benchmark scripts need to drive such processes: :func:`raise_nofile_limit` and
:func:`start_device_side` (a running child, :class:`DeviceSide`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _common  # noqa: F401  (puts the repository root on sys.path)
import psutil
import trio

from galaxy_trio.agent import DeviceAgent, DeviceInfoProvider, SystemProbes
from galaxy_trio.redact import url_token, url_with_token
from galaxy_trio.runtime import freeze_settled_objects
from galaxy_trio.server import AIPServer, ServerSettings, serve_aip

__all__ = [
    "SCRIPT",
    "TOKEN_ENV",
    "DeviceSide",
    "DeviceSideFailed",
    "describe_load",
    "fds_needed",
    "host_load",
    "nofile_limits",
    "raise_nofile_limit",
    "start_device_side",
]

#: This script, for parents that start it.
SCRIPT = Path(__file__).resolve()
#: Where the token comes from when ``--token`` is not given (the CLI's ``serve`` reads the same variable).
TOKEN_ENV = "GALAXY_TRIO_TOKEN"
#: Agents registering at once while the device side starts: enough to start 5,000 agents in a few seconds,
#: few enough never to overflow the listening socket's accept queue (somaxconn is often 4096).
STARTUP_CONCURRENCY = 256
#: File descriptors a process needs besides its sockets: stdio, the trio wakeup pipe and epoll, imports, logs.
FD_OVERHEAD = 128

logger = logging.getLogger("galaxy_trio.bench")


# --- open-files limit ------------------------------------------------------------------------------------------


def nofile_limits() -> tuple[int, int]:
    """``(soft, hard)`` RLIMIT_NOFILE of this process; ``RLIM_INFINITY`` is reported as a very large int."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    return (sys.maxsize if soft == infinity else soft, sys.maxsize if hard == infinity else hard)


def start_child_process(flag: str) -> str | None:
    """What every benchmark child process (a manager worker, a fleet member) does first: raise its open-files
    limit and take the token from the environment. Returns the token, or None after saying on stderr that
    ``$GALAXY_TRIO_TOKEN`` is missing (the child then exits 2)."""
    raise_nofile_limit()
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"{flag} needs ${TOKEN_ENV}", file=sys.stderr)
        return None
    return token


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit (what an unprivileged process may do); return both.

    Every link costs a descriptor at each end, so 10,000 devices need tens of thousands; the usual soft limit
    (1024) would stop the benchmark at a few hundred devices with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-files limit from %s to %s: %s", soft, hard, exc)
    return nofile_limits()


def fds_needed(*, agents: int, server_links: int) -> int:
    """Descriptors a device-side process needs: one per agent socket, one per link the server accepts."""
    return agents + server_links + FD_OVERHEAD


def host_load(sample_s: float = 0.5) -> dict[str, float]:
    """How busy the machine is before a benchmark starts: other processes on the same cores distort every figure."""
    return {"loadavg_1m": os.getloadavg()[0], "cpu_busy_percent": psutil.cpu_percent(interval=sample_s)}


def describe_load(load: dict[str, float]) -> str:
    """A line for the output; it warns when the machine was not idle."""
    text = f"machine load before the run: {load['cpu_busy_percent']:.0f}% CPU busy, 1-min load {load['loadavg_1m']:.2f}"
    if load["cpu_busy_percent"] > 20:
        text += " -- WARNING: other processes were using the CPUs; figures are inflated"
    return text


# --- the device-side process -----------------------------------------------------------------------------------


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def probed_once() -> SystemProbes:
    """Probes that answer what this host's real probes answered once (see the module docstring)."""
    real = SystemProbes()
    return SystemProbes(**{field.name: _constant(getattr(real, field.name)()) for field in dataclasses.fields(real)})


async def _until_stdin_closes_or_signal() -> str:
    """Return why the device side should stop: ``"stdin closed"`` or the name of the signal received."""
    why = "stdin closed"
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as watchers:

            async def stdin_eof() -> None:
                # A blocking read in a worker thread: no need to make the (maybe shared) stdin non-blocking.
                await trio.to_thread.run_sync(_read_to_eof, abandon_on_cancel=True)
                watchers.cancel_scope.cancel()

            watchers.start_soon(stdin_eof)
            async for signum in signals:
                why = signal.Signals(signum).name
                watchers.cancel_scope.cancel()
                break
    return why


def _read_to_eof() -> None:
    stream = sys.stdin.buffer
    while stream.read1(65536):
        pass


def _server_settings() -> ServerSettings:
    # Registration is the benchmark's burst: thousands of peers may wait a while for the loop to read their REGISTER.
    return ServerSettings(handshake_deadline=60.0, registration_deadline=60.0)


async def run_device_side(args: argparse.Namespace, token: str) -> None:
    """Start the server (unless ``--agents-only``) and the agents, announce readiness, run until told to stop."""
    soft, hard = raise_nofile_limit()
    needed = fds_needed(agents=args.devices, server_links=0 if args.agents_only else 2 * args.devices)
    if needed > soft:
        print(
            f"_device_side: {args.devices} devices need about {needed} open files but the limit is {soft} "
            f"(hard {hard}); expect EMFILE",
            file=sys.stderr,
        )
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        if args.agents_only:
            url = args.server_url
            port = urlsplit(url).port or 80
            listening_at = None
        else:
            server: AIPServer = await nursery.start(
                partial(serve_aip, host=args.host, port=args.port, token=token, settings=_server_settings())
            )
            url, port, listening_at = server.url, server.port, time.time()
        agent_url = url if url_token(url) is not None else url_with_token(url, token)
        provider = DeviceInfoProvider(probes=probed_once())
        agents = [
            DeviceAgent(
                agent_url,
                f"{args.prefix}{index}",
                info_provider=provider,
                reconnect_delay=args.reconnect_delay,
                backoff_cap=args.backoff_cap,
                heartbeat_interval=args.heartbeat_interval,
                heartbeat_timeout=args.heartbeat_timeout,
                registration_timeout=60.0,
            )
            for index in range(args.devices)
        ]
        limiter = trio.CapacityLimiter(STARTUP_CONCURRENCY)

        async def start_agent(agent: DeviceAgent) -> None:
            async with limiter:
                await nursery.start(agent.run)

        async with trio.open_nursery() as starting:
            for agent in agents:
                starting.start_soon(start_agent, agent)
        # Everything built so far lives as long as the process: move it out of the cyclic GC's reach (see above).
        freeze_settled_objects()
        ready = {
            "event": "ready",
            "pid": os.getpid(),
            "port": port,
            "url": url.split("?", 1)[0],
            "devices": args.devices,
            "prefix": args.prefix,
            "server": not args.agents_only,
            "listening_at": listening_at,
            "startup_s": time.perf_counter() - started,
            "nofile": {"soft": soft, "hard": hard, "needed": needed},
        }
        print(json.dumps(ready), flush=True)
        why = await _until_stdin_closes_or_signal()
        print(f"_device_side (pid {os.getpid()}): stopping ({why})", file=sys.stderr)
        nursery.cancel_scope.cancel()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, required=True, metavar="N", help="device agents to run (0: none)")
    parser.add_argument("--host", default="127.0.0.1", help="address the server binds (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port the server binds (default 0: a free one)")
    parser.add_argument("--token", help=f"the server's token (default: ${TOKEN_ENV})")
    parser.add_argument("--prefix", default="dev-", help="device ids are PREFIX0, PREFIX1, … (default dev-)")
    parser.add_argument("--agents-only", action="store_true", help="no server: agents connect to --server-url")
    parser.add_argument("--server-url", metavar="URL", help="with --agents-only: ws://HOST:PORT/ws of the server")
    parser.add_argument("--reconnect-delay", type=float, default=1.0, metavar="S", help="agents' first backoff")
    parser.add_argument("--backoff-cap", type=float, default=30.0, metavar="S", help="agents' largest backoff")
    parser.add_argument("--heartbeat-interval", type=float, default=30.0, metavar="S", help="agents' heartbeats")
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="agents' liveness window (default 60: a device side busy serving thousands of registrations must not "
        "declare its own links dead)",
    )
    parser.add_argument("--log-level", default="ERROR", help="logging level of galaxy_trio (default ERROR)")
    args = parser.parse_args(argv)
    if args.devices < 0:
        parser.error("--devices must be >= 0")
    if args.agents_only and not args.server_url:
        parser.error("--agents-only needs --server-url")
    if args.server_url and not args.agents_only:
        parser.error("--server-url is only for --agents-only")
    if args.agents_only and args.devices == 0:
        parser.error("--agents-only with --devices 0 would run nothing")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not 0 < args.reconnect_delay <= args.backoff_cap or not math.isfinite(args.backoff_cap):
        parser.error("need 0 < --reconnect-delay <= --backoff-cap")
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.error(f"give the server's token with --token or ${TOKEN_ENV}")
    return args, token


def main(argv: Sequence[str] | None = None) -> int:
    args, token = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(run_device_side, args, token)
    return 0


# --- driving it from a benchmark script ------------------------------------------------------------------------


class DeviceSideFailed(RuntimeError):
    """A device-side process exited or went silent before announcing it was ready."""


@dataclasses.dataclass
class DeviceSide:
    """A running ``_device_side.py`` child: its process, its ready line, and where its stderr goes."""

    process: trio.Process
    ready: dict[str, Any]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def url(self) -> str:
        """The server's ``ws://host:port/ws``, without the token."""
        return str(self.ready["url"])

    def kill(self) -> None:
        """SIGKILL: the server crashes; the kernel closes its sockets and every peer sees its link drop."""
        self.process.kill()

    async def stop(self, grace: float = 30.0) -> None:
        """Close its stdin (it then shuts down cleanly); SIGTERM, then SIGKILL, if it takes longer than ``grace``."""
        if self.process.returncode is not None:
            return
        if self.process.stdin is not None:
            with trio.move_on_after(1):
                await self.process.stdin.aclose()
        with trio.move_on_after(grace):
            await self.process.wait()
            return
        self.process.terminate()
        with trio.move_on_after(5):
            await self.process.wait()
            return
        self.process.kill()
        await self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def start_device_side(
    options: Sequence[str], *, token: str, log_path: Path, ready_within: float, script: Path = SCRIPT
) -> DeviceSide:
    """Start ``_device_side.py options…`` and return once it printed its ready line.

    ``script`` may be another checkout's ``benchmarks/_device_side.py`` (that checkout's library then serves):
    how ``bench_server.py`` compares two servers in one run.

    Raises :class:`DeviceSideFailed` (with the end of its stderr) if it exits or is not ready within
    ``ready_within`` seconds; the child is then killed.
    """
    env = {**os.environ, TOKEN_ENV: token}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(script), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    side = DeviceSide(process, {}, log_path)
    assert process.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(ready_within):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(65536)
                if not chunk:
                    await process.wait()
                    raise DeviceSideFailed(
                        f"device side {list(options)} exited with status {process.returncode} before it was ready:\n"
                        + side.log_tail()
                    )
                buffer += chunk
    except BaseException as exc:
        # Not ready in time, failed, or cancelled (a sibling start failed): the child must not outlive us.
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        if isinstance(exc, trio.TooSlowError):
            raise DeviceSideFailed(
                f"device side {list(options)} not ready within {ready_within:g} s:\n" + side.log_tail()
            ) from None
        raise
    side.ready = json.loads(buffer.split(b"\n", 1)[0])
    return side


if __name__ == "__main__":
    sys.exit(main())
