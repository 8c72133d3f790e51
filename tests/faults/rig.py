"""The test rig for fault scenarios: our AIP server, our device agents and a FaultProxy, wired as in production.

    manager ──ws──▶ FaultProxy ──tcp──▶ AIP server ◀──ws── DeviceAgent(s)

The manager reaches the server only through the proxy, so every fault on its link is one switch away; the agents
connect to the server directly (a server restart reaches them, a proxy fault does not). The server runs in a cancel
scope of its own, so a test can stop it at any moment and start it again on the same port — the agents' URLs stay
valid and they reconnect by themselves. Everything runs in the test's nursery; :func:`assert_no_leftovers` checks
what is left once the manager has gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import psutil
import trio
import trio.testing

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceEvent, DeviceStatus, EventKind
from galaxy_trio.agent import DeviceAgent, DeviceInfoProvider, SystemProbes, ToolRegistry, add_builtin_tools
from galaxy_trio.aip import ClientType, ToolType
from galaxy_trio.manager import EventSubscription
from galaxy_trio.server import AIPServer, serve_aip

from .proxy import FaultProxy

TOKEN: Final = "fault-scenario-token"
TASK_NAME: Final = "faults"

#: Manager settings of the scenarios (seconds, virtual time). The phase timeouts differ from one another so that a
#: failure reason or an elapsed time says which one fired.
HEARTBEAT_INTERVAL: Final = 10.0
HEARTBEAT_TIMEOUT: Final = 4.0
CONNECT_TIMEOUT: Final = 5.0
REGISTER_TIMEOUT: Final = 6.0
TELEMETRY_TIMEOUT: Final = 3.0
RECONNECT_DELAY: Final = 0.5
BACKOFF_CAP: Final = 2.0
TASK_TIMEOUT: Final = 120.0

#: What the device agents use: quick reconnects, so that after a server restart they are back before the
#: manager's retries run out.
AGENT_OPTIONS: Final = {
    "heartbeat_interval": 10.0,
    "heartbeat_timeout": 4.0,
    "reconnect_delay": 0.25,
    "backoff_cap": 1.0,
    "registration_timeout": 5.0,
}

#: Cheap, constant probes: a fleet of agents re-registering many times should not spend its time in psutil.
FAST_PROBES: Final = SystemProbes(
    platform=lambda: "linux",
    os_version=lambda: "6.1-test",
    cpu_count=lambda: 4,
    memory_total_bytes=lambda: 8 << 30,
    hostname=lambda: "fault-rig",
    ip_address=lambda: "127.0.0.1",
)

#: A task that runs until the test lets it finish (see :class:`Gate`).
HOLD_REQUEST: Final = '{"tool_name": "hold"}'


def open_manager(**overrides: float) -> ConstellationDeviceManager:
    """A manager with the scenarios' settings (``overrides`` replace some); use it as ``async with``."""
    settings: dict[str, float] = {
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "reconnect_delay": RECONNECT_DELAY,
        "backoff_cap": BACKOFF_CAP,
        "connect_timeout": CONNECT_TIMEOUT,
        "register_timeout": REGISTER_TIMEOUT,
        "telemetry_timeout": TELEMETRY_TIMEOUT,
        "task_timeout": TASK_TIMEOUT,
    }
    settings.update(overrides)
    return ConstellationDeviceManager(task_name=TASK_NAME, **settings)  # type: ignore[arg-type]


def constellation_id(device_id: str) -> str:
    return f"{TASK_NAME}@{device_id}"


class Gate:
    """The ``hold`` tool of an agent: it starts, signals it, and returns only when released."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.released = trio.Event()
        self.calls = 0

    async def hold(self) -> str:
        """Block until the test releases the gate."""
        self.calls += 1
        self.started.set()
        await self.released.wait()
        return "released"


class ServerHandle:
    """Our AIP server in a cancel scope of its own: :meth:`stop` and :meth:`start` it again on the same port."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.port = 0
        self.server: AIPServer | None = None
        self.starts = 0
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={TOKEN}"

    @property
    def running(self) -> bool:
        return self._scope is not None

    async def start(self) -> AIPServer:
        assert self._scope is None, "the server is already running"
        self._scope = scope = trio.CancelScope()
        self._stopped = stopped = trio.Event()
        self.server = await self._nursery.start(self._run, scope, stopped, name="aip-server")
        self.port = self.server.port
        self.starts += 1
        return self.server

    async def _run(
        self, scope: trio.CancelScope, stopped: trio.Event, *, task_status: trio.TaskStatus[AIPServer]
    ) -> None:
        try:
            with scope:
                await serve_aip(host="127.0.0.1", port=self.port, token=TOKEN, task_status=task_status)
        finally:
            stopped.set()

    def stop_now(self) -> None:
        """Cancel the server at once (its connections close as it unwinds); :meth:`stopped` waits for the end."""
        assert self._scope is not None, "the server is not running"
        self._scope.cancel()
        self._scope = None

    async def stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self.stop_now()
        await self.stopped()

    def online(self) -> dict[str, ClientType]:
        assert self.server is not None
        return self.server.online_clients()

    def constellations(self) -> list[str]:
        return sorted(cid for cid, role in self.online().items() if role is ClientType.CONSTELLATION)


@dataclass(eq=False)
class AgentHandle:
    """One device agent running in its own cancel scope (``kill`` it, ``start`` a fresh one)."""

    device_id: str
    url: str
    gate: Gate = field(default_factory=Gate)
    agent: DeviceAgent | None = None
    incarnations: int = 0
    _scope: trio.CancelScope | None = None

    options: dict[str, float] = field(default_factory=dict)

    def _new_agent(self) -> DeviceAgent:
        info = DeviceInfoProvider(probes=FAST_PROBES)
        tools = ToolRegistry()
        add_builtin_tools(tools, partial(info.collect, self.device_id))
        tools.add(self.gate.hold, name="hold", tool_type=ToolType.ACTION)
        options = {**AGENT_OPTIONS, **self.options}
        return DeviceAgent(self.url, self.device_id, tools=tools, info_provider=info, **options)  # type: ignore[arg-type]

    async def start(self, nursery: trio.Nursery, *, registered: bool = True) -> None:
        """Start a new incarnation; with ``registered``, return once the server has confirmed it."""
        assert self._scope is None, f"agent {self.device_id} is already running"
        self.agent = agent = self._new_agent()
        self._scope = scope = trio.CancelScope()
        self.incarnations += 1
        name = f"agent:{self.device_id}"
        if registered:
            await nursery.start(_run_agent, scope, agent, name=name)
        else:
            nursery.start_soon(_run_agent, scope, agent, name=name)

    @property
    def running(self) -> bool:
        return self._scope is not None

    def kill(self) -> None:
        assert self._scope is not None, f"agent {self.device_id} is not running"
        self._scope.cancel()
        self._scope = None


async def _run_agent(
    scope: trio.CancelScope, agent: DeviceAgent, *, task_status: trio.TaskStatus[DeviceAgent] = trio.TASK_STATUS_IGNORED
) -> None:
    with scope:
        await agent.run(task_status=task_status)


class Rig:
    """Server, proxy and agents in one nursery; see the module docstring."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.server = ServerHandle(nursery)
        self.proxy: FaultProxy | None = None
        self.agents: dict[str, AgentHandle] = {}

    async def start(self) -> Rig:
        await self.server.start()
        self.proxy = FaultProxy("127.0.0.1", self.server.port)
        await self.nursery.start(self.proxy.serve, name="fault-proxy")
        return self

    @property
    def fault_proxy(self) -> FaultProxy:
        assert self.proxy is not None
        return self.proxy

    @property
    def manager_url(self) -> str:
        """The URL the manager uses: through the proxy."""
        return self.fault_proxy.url_for(f"/ws?token={TOKEN}")

    def device(self, device_id: str, **fields: object) -> DeviceConfig:
        fields.setdefault("max_retries", 50)
        return DeviceConfig(device_id=device_id, server_url=self.manager_url, **fields)  # type: ignore[arg-type]

    async def start_agent(
        self, device_id: str, *, registered: bool = True, options: Mapping[str, float] | None = None
    ) -> AgentHandle:
        """Start (or restart) the agent of ``device_id``; ``options`` override :data:`AGENT_OPTIONS`."""
        handle = self.agents.get(device_id)
        if handle is None:
            handle = self.agents[device_id] = AgentHandle(device_id, self.server.url, options=dict(options or {}))
        await handle.start(self.nursery, registered=registered)
        return handle

    async def start_agents(self, device_ids: Iterable[str], *, options: Mapping[str, float] | None = None) -> None:
        async with trio.open_nursery() as starting:
            for device_id in device_ids:
                starting.start_soon(partial(self.start_agent, device_id, options=options))

    async def stop_server(self) -> None:
        """Stop the server; the proxy closes its port meanwhile, so that the manager, like the agents, finds the
        port closed (connection refused) rather than a proxy that accepts and then resets."""
        self.fault_proxy.listening = False
        await self.server.stop()

    async def start_server(self) -> None:
        """Start the server again on its port, and reopen the proxy's."""
        await self.server.start()
        proxy = self.fault_proxy
        proxy.listening = True
        await proxy.wait_for(lambda: proxy.port_open)

    async def restart_server(self) -> None:
        await self.stop_server()
        await self.start_server()

    def expected_children(self) -> list[str]:
        """Names of the tasks the rig keeps in the test's nursery: the server, the proxy, the live agents."""
        names = ["fault-proxy"] + (["aip-server"] if self.server.running else [])
        names += [f"agent:{h.device_id}" for h in self.agents.values() if h.running]
        return sorted(names)


# --- waiting on events ---------------------------------------------------------------------------------------------


async def next_event(events: EventSubscription, predicate: Callable[[DeviceEvent], bool]) -> DeviceEvent:
    """The next event that satisfies ``predicate`` (the ones before it are consumed)."""
    async for event in events:
        if predicate(event):
            return event
    raise AssertionError("the event stream ended")


async def next_status(events: EventSubscription, status: DeviceStatus, device_id: str | None = None) -> DeviceEvent:
    return await next_event(
        events,
        lambda e: (
            e.kind is EventKind.STATUS and e.new_status is status and (device_id is None or e.device_id == device_id)
        ),
    )


async def next_phase(events: EventSubscription, phase: str) -> DeviceEvent:
    return await next_event(events, lambda e: e.kind is EventKind.PHASE and e.reason == phase)


# --- what must be left after the manager has gone ------------------------------------------------------------------


def sockets_to(port: int) -> list[object]:
    """This process's TCP sockets connected to ``port`` on 127.0.0.1 (any state)."""
    return [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port]


async def assert_no_leftovers(rig: Rig, manager: ConstellationDeviceManager) -> None:
    """After ``async with manager`` has exited: every device DISCONNECTED, no link left on the proxy, no socket
    of the manager's left open, no constellation registered on the server, no task but the rig's own."""
    statuses = {device_id: p.status for device_id, p in manager.get_all_devices().items()}
    assert set(statuses.values()) <= {DeviceStatus.DISCONNECTED}, statuses
    proxy = rig.fault_proxy
    with trio.fail_after(5):  # a pair leaves the proxy once both its sockets are closed: the manager's side too
        await proxy.wait_for(lambda: not proxy.connections)
    assert sockets_to(proxy.port) == []  # no socket of the manager's still connected, in any state
    if rig.server.running:
        # The server unregisters a client as soon as it has read the close; let it get there.
        await trio.testing.wait_all_tasks_blocked()
        assert rig.server.constellations() == []
    children = sorted(task.name for task in rig.nursery.child_tasks)
    assert children == rig.expected_children()
    # And the test task itself holds no nursery with a task still in it (callers included).
    assert [n.child_tasks for n in trio.lowlevel.current_task().child_nurseries if n.child_tasks] == []
