"""A real fleet for control-plane tests: an AIP server, device agents, a manager and its control server.

Everything on 127.0.0.1 with port 0. Agents run in their own cancel scopes so that a test can kill one (the
server then drops the device and the manager sees it leave IDLE) and start it again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import httpx
import trio

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus
from galaxy_trio.agent import DeviceAgent
from galaxy_trio.control import ControlEndpoint, serve_control
from galaxy_trio.server import AIPServer, serve_aip

AIP_TOKEN = "control-rig-aip-token"
CONTROL_TOKEN = "control-rig-token-0123456789"


@dataclass
class Rig:
    manager: ConstellationDeviceManager
    endpoint: ControlEndpoint
    aip_url: str
    nursery: trio.Nursery
    agents: dict[str, trio.CancelScope] = field(default_factory=dict)
    #: The agents' ``hold`` tool returns once the test sets the gate of that name.
    gates: defaultdict[str, trio.Event] = field(default_factory=lambda: defaultdict(trio.Event))
    #: The control server's cancel scope, and an event set once it has stopped.
    control: tuple[trio.CancelScope, trio.Event] = field(default_factory=lambda: (trio.CancelScope(), trio.Event()))
    sse_buffer: int = 256
    server: AIPServer | None = None

    @property
    def url(self) -> str:
        return self.endpoint.url

    def client(self, token: str | None = CONTROL_TOKEN) -> httpx.AsyncClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}".strip()}
        return httpx.AsyncClient(base_url=self.endpoint.url, headers=headers, timeout=30.0)

    async def start_agent(self, device_id: str) -> None:
        scope = trio.CancelScope()
        self.agents[device_id] = scope
        agent = DeviceAgent(self.aip_url, device_id)
        gates = self.gates

        async def hold(gate: str) -> str:
            """Wait until the test opens ``gate``."""
            await gates[gate].wait()
            return f"{gate} opened"

        agent.tools.add(hold, tool_type="action")
        await self.nursery.start(_run_agent, scope, agent)

    async def stop_control(self) -> None:
        """Stop the control server (as a manager restart would) and wait until its port is free."""
        scope, stopped = self.control
        scope.cancel()
        await stopped.wait()

    async def start_control(self) -> None:
        """Serve the control plane again, on the same port and with the same token."""
        port = int(self.endpoint.url.rstrip("/").rsplit(":", 1)[1])
        self.endpoint, self.control = await _start_control(
            self.nursery, self.manager, port, self.sse_buffer, self.server
        )

    def kill_agent(self, device_id: str) -> None:
        self.agents.pop(device_id).cancel()

    async def wait_status(self, device_id: str, status: DeviceStatus) -> None:
        with self.manager.subscribe() as events:
            profile = self.manager.get_device_info(device_id)
            if profile is not None and profile.status is status:
                return
            async for event in events:
                if event.device_id == device_id and event.new_status is status:
                    return


async def _run_agent(scope: trio.CancelScope, agent: DeviceAgent, *, task_status: trio.TaskStatus[None]) -> None:
    with scope:
        await agent.run(task_status=task_status)


async def _start_control(
    nursery: trio.Nursery, manager: ConstellationDeviceManager, port: int, sse_buffer: int, server: AIPServer | None
) -> tuple[ControlEndpoint, tuple[trio.CancelScope, trio.Event]]:
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[ControlEndpoint]) -> None:
        try:
            with scope:
                await serve_control(
                    manager,
                    port=port,
                    token=CONTROL_TOKEN,
                    sse_buffer=sse_buffer,
                    servers=() if server is None else (server,),
                    task_status=task_status,
                )
        finally:
            stopped.set()

    endpoint: ControlEndpoint = await nursery.start(serve)
    return endpoint, (scope, stopped)


def device(device_id: str, url: str, **fields: object) -> DeviceConfig:
    return DeviceConfig(device_id=device_id, server_url=url, **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def open_rig(
    device_ids: Sequence[str],
    *,
    dormant: Sequence[str] = (),
    max_retries: int = 1,
    settle: bool = True,
    sse_buffer: int = 256,
) -> AsyncIterator[Rig]:
    """Agents for ``device_ids`` (and for ``dormant``, configured with ``auto_connect: false``), a manager driving
    them all, its control server; with ``settle``, every auto-connect device is IDLE or FAILED on entry."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, port=0, token=AIP_TOKEN))
        aip_url = f"{server.url}?token={AIP_TOKEN}"
        async with ConstellationDeviceManager(
            task_name="ctl", reconnect_delay=0.05, backoff_cap=0.2, heartbeat_interval=30.0
        ) as manager:
            endpoint, control = await _start_control(nursery, manager, 0, sse_buffer, server)
            rig = Rig(manager, endpoint, aip_url, nursery, control=control, sse_buffer=sse_buffer, server=server)
            for device_id in (*device_ids, *dormant):
                await rig.start_agent(device_id)
            for device_id in device_ids:
                manager.add_device(device(device_id, aip_url, max_retries=max_retries, capabilities=("configured",)))
            for device_id in dormant:
                manager.add_device(device(device_id, aip_url, max_retries=max_retries, auto_connect=False))
            if settle:
                await manager.wait_until_settled()
            yield rig
        nursery.cancel_scope.cancel()
