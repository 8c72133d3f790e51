"""The soaks' device side — the AIP server and every device's agent — in a process of its own.

    python -m tests.soak.device_side CONFIG_JSON

``CONFIG_JSON``: ``{"devices": [device id, ...]}``. The child starts our AIP server on a loopback port, then one
agent per device with the soak's ``work`` tool, and writes one line per event on stdout:

- ``ready <port>`` once the server listens and every agent has started;
- ``run <token>`` each time a device begins to execute the task ``token`` (the exact record the soak's "no task
  ran twice" and "a completed task ran exactly once" checks count), and ``overlap <n>`` each time the most tasks
  running at once on one device reaches a new high (1 at the first task; 2 or more is a violation);
- the answer to each command (below): ``ok``, ``online <json>``, or ``error <text>``.

Commands, one per line on stdin, answered in order once carried out: ``kill <device>`` and ``start <device>`` (an
agent stopped at once, and a fresh one started — ``start`` answers once it has registered, so it needs the
server up: the soak's faults never overlap), ``stop_server`` and ``start_server`` (the server cancelled, its
connections closing as it unwinds, and started again on the same port), ``online`` (the registered clients and
their roles, as JSON; ``null`` while the server is stopped). When stdin closes the child stops its agents and its
server, writes what it has not written yet, and exits.

Why a process: at 500 devices the soak's process, with the server and the agents in it beside members A and B,
saturated a core (in a profile, the server's connections took a quarter of its samples and the agents 5-9 %),
and the members' heartbeats, reconnects and lease renewals waited their turn behind them — in a 20-minute run,
19 of 96 faults took longer than their bound to recover, every stuck device at a member of that process. A real
fleet's managers do not share a core with the devices' server. :class:`DeviceSide` runs it from a soak.

(``benchmarks/_device_side.py`` is the benchmarks' device side: a load generator whose agents only register and
answer heartbeats, with no commands and no records. The soak needs agents it can kill and start one at a time, a
server it can restart, and an exact record of every execution, so it has this one.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import trio

from galaxy_trio.agent import DeviceAgent, DeviceInfoProvider, ToolRegistry, add_builtin_tools
from galaxy_trio.aip import ToolType

from ..faults.rig import AGENT_OPTIONS, FAST_PROBES, TOKEN, ServerHandle
from .lines import lines_of, write_lines

REPO_ROOT = Path(__file__).resolve().parents[2]
#: How long the device side may take to start (the server and every agent) and to stop.
START_WITHIN = 120.0
STOP_WITHIN = 30.0
#: The first words of the child's answers to commands (every other line is a record, or ``ready``).
ANSWERS = ("ok", "online", "error")


# --- the parent's side ---------------------------------------------------------------------------------------------


class DeviceSide:
    """The parent's handle on the device-side process. ``on_run(token)`` is called for each ``run`` line and
    ``on_overlap(n)`` for each ``overlap`` line; the methods send one command each and return once the child has
    carried it out. Start it with ``await nursery.start(device_side.run)``; :meth:`stop` ends it."""

    def __init__(
        self, device_ids: list[str], *, on_run: Callable[[str], None], on_overlap: Callable[[int], None]
    ) -> None:
        self._config = {"devices": device_ids}
        self._on_run = on_run
        self._on_overlap = on_overlap
        self.port = 0
        self.pid = 0
        #: Whether the server is up, as far as this side's commands go (``stop_server`` / ``start_server``).
        self.server_running = False
        self._process: trio.Process | None = None
        self._answers_in, self._answers = trio.open_memory_channel[str](1)
        self._lock = trio.Lock()
        self._done = trio.Event()

    @property
    def url(self) -> str:
        """The server's URL, for a client that connects to it directly (an agent; not a manager: see the proxy)."""
        return f"ws://127.0.0.1:{self.port}/ws?token={TOKEN}"

    async def run(self, *, task_status: trio.TaskStatus[DeviceSide]) -> None:
        """Start the child, read its lines until it exits; started once it is ``ready``."""
        command = [sys.executable, "-m", "tests.soak.device_side", json.dumps(self._config)]
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT
        )
        self._process, self.pid = process, process.pid
        assert process.stdout is not None
        started = False
        try:
            async for line in lines_of(process.stdout):
                word, _, rest = line.decode().partition(" ")
                if word == "run":
                    self._on_run(rest)
                elif word == "overlap":
                    self._on_overlap(int(rest))
                elif word == "ready" and not started:
                    self.port = int(rest)
                    self.server_running = True
                    started = True
                    task_status.started(self)
                elif word in ANSWERS:
                    self._answers_in.send_nowait(line.decode())  # (one command at a time: room for its answer)
                else:
                    raise RuntimeError(f"the device side wrote an unexpected line: {line[:200]!r}")
            if not started:
                raise RuntimeError(f"the device side exited before it was ready: {process.returncode}")
        finally:
            self._answers_in.close()
            self._done.set()
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await process.wait()

    async def _ask(self, command: str) -> str:
        process = self._process
        assert process is not None and process.stdin is not None, "the device side is not running"
        async with self._lock:
            await process.stdin.send_all(command.encode() + b"\n")
            try:
                return await self._answers.receive()
            except trio.EndOfChannel:
                raise RuntimeError(f"the device side exited before it answered {command!r}") from None

    async def _command(self, command: str) -> None:
        answer = await self._ask(command)
        if answer != "ok":
            raise RuntimeError(f"the device side answered {answer!r} to {command!r}")

    async def kill_agent(self, device_id: str) -> None:
        await self._command(f"kill {device_id}")

    async def start_agent(self, device_id: str) -> None:
        await self._command(f"start {device_id}")

    async def stop_server(self) -> None:
        await self._command("stop_server")
        self.server_running = False

    async def start_server(self) -> None:
        await self._command("start_server")
        self.server_running = True

    async def online(self) -> dict[str, str] | None:
        """The server's registered clients (client id → role), or ``None`` while it is stopped."""
        answer = await self._ask("online")
        word, _, rest = answer.partition(" ")
        if word != "online":
            raise RuntimeError(f"the device side answered {answer!r} to 'online'")
        online: dict[str, str] | None = json.loads(rest)
        return online

    def usage(self) -> tuple[int, int] | None:
        """The child's RSS and open descriptors, or ``None`` if it is gone."""
        try:
            child = psutil.Process(self.pid)
            return int(child.memory_info().rss), child.num_fds()
        except psutil.Error:
            return None

    async def stop(self) -> None:
        """Close the child's stdin: it stops its agents and server, writes its last records and exits. Returns
        once every line is read (within :data:`STOP_WITHIN`, or the child is killed and this raises)."""
        process = self._process
        if process is None or process.stdin is None:
            return
        with trio.CancelScope(shield=True):
            await process.stdin.aclose()
            with trio.move_on_after(STOP_WITHIN):
                await self._done.wait()
        if not self._done.is_set():
            process.kill()
            raise RuntimeError(f"the device side did not stop within {STOP_WITHIN:g} s; killed")


# --- the child -----------------------------------------------------------------------------------------------------


class _Records:
    """The ``work`` tool of every agent, writing each execution's record as a line through one writer task."""

    def __init__(self, lines: trio.MemorySendChannel[bytes]) -> None:
        self._lines = lines
        self._running: Counter[str] = Counter()
        self._peak = 0

    def tool_for(self, device_id: str) -> Callable[..., Any]:
        async def work(token: str, ms: int = 0) -> str:
            """Record one execution of ``token`` on this device, take ``ms`` milliseconds."""
            self._running[device_id] += 1
            try:
                await self._lines.send(f"run {token}\n".encode())
                if self._running[device_id] > self._peak:
                    self._peak = self._running[device_id]
                    await self._lines.send(f"overlap {self._peak}\n".encode())
                await trio.sleep(ms / 1000)
            finally:
                self._running[device_id] -= 1
            return token

        return work


class _Agent:
    """One device agent in a cancel scope of its own (``kill`` it, ``start`` a fresh one)."""

    def __init__(self, device_id: str, url: str, records: _Records) -> None:
        self.device_id = device_id
        self._url = url
        self._records = records
        self._scope: trio.CancelScope | None = None

    def _make(self) -> DeviceAgent:
        info = DeviceInfoProvider(probes=FAST_PROBES)
        tools = ToolRegistry()
        add_builtin_tools(tools, partial(info.collect, self.device_id))
        tools.add(self._records.tool_for(self.device_id), name="work", tool_type=ToolType.ACTION, in_thread=False)
        return DeviceAgent(self._url, self.device_id, tools=tools, info_provider=info, **AGENT_OPTIONS)  # type: ignore[arg-type]

    async def start(self, nursery: trio.Nursery) -> None:
        self.kill()
        self._scope = scope = trio.CancelScope()
        await nursery.start(self._run, scope, self._make(), name=f"soak-agent:{self.device_id}")

    @staticmethod
    async def _run(scope: trio.CancelScope, agent: DeviceAgent, *, task_status: trio.TaskStatus[DeviceAgent]) -> None:
        with scope:
            await agent.run(task_status=task_status)

    def kill(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


async def _serve(config: dict[str, Any]) -> None:
    out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))  # (non-blocking: a busy parent must not stall us)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    lines_in, lines = trio.open_memory_channel[bytes](1 << 14)
    async with out, stdin, trio.open_nursery() as writing:
        writing.start_soon(write_lines, out, lines)
        # When this block ends, the last sender closes: the writer writes what is queued and ends.
        async with lines_in, trio.open_nursery() as nursery:
            server = ServerHandle(nursery)
            await server.start()
            records = _Records(lines_in)
            agents = {d: _Agent(d, server.url, records) for d in config["devices"]}
            for agent in agents.values():
                await agent.start(nursery)
            await lines_in.send(f"ready {server.port}\n".encode())
            await _obey(stdin, lines_in, server, agents, nursery)
            nursery.cancel_scope.cancel()  # the parent closed stdin: agents and server stop


async def _obey(
    stdin: trio.abc.ReceiveStream,
    answers: trio.MemorySendChannel[bytes],
    server: ServerHandle,
    agents: dict[str, _Agent],
    nursery: trio.Nursery,
) -> None:
    """Carry out each command line until stdin closes."""
    async for line in lines_of(stdin):
        word, _, device_id = line.decode().partition(" ")
        if word in ("kill", "start") and device_id not in agents:
            answer = f"error no device {device_id!r}"
        elif word == "kill":
            agents[device_id].kill()
            answer = "ok"
        elif word == "start":
            await agents[device_id].start(nursery)
            answer = "ok"
        elif word == "stop_server":
            await server.stop()
            answer = "ok"
        elif word == "start_server":
            await server.start()
            answer = "ok"
        elif word == "online":
            online = {c: role.value for c, role in server.online().items()} if server.running else None
            answer = f"online {json.dumps(online)}"
        else:
            answer = f"error unknown command {line!r}"
        await answers.send(answer.encode() + b"\n")


if __name__ == "__main__":
    trio.run(_serve, json.loads(sys.argv[1]))
