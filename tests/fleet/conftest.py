"""Fixtures for the fleet tests: a real redis-server on a free loopback port, a fenced AIP peer, fleet members.

The Redis tests are skipped — with the reason — when ``redis-server`` or the valkey-glide client is missing;
``.ci/redis.sh`` installs the server in CI, and the ``fleet`` extra the client, so there they run.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from galaxy_trio.config import DeviceConfig
from galaxy_trio.fleet import FleetMember, FleetRegistry, open_fleet_member
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus

from ..net import free_port as _free_port
from ..redis_process import INSTALL_HINT, RedisDidNotStart, spawn_redis
from .peers import FencedPeer

TASK_NAME = "fleet"
NO_GLIDE = "the Redis client valkey-glide is not installed: pip install 'galaxy_trio[fleet]'"


@dataclass(frozen=True)
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _ping(port: int) -> bool:
    """A real PING with Redis's own client (redis-cli ships with redis-server)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        return True  # "Ready to accept connections" was already logged; nothing better to ask with
    done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), "PING"], capture_output=True, timeout=5)
    return done.stdout.strip() == b"PONG"


def require_redis() -> str:
    """The redis-server binary; skips the test (saying why) when it or the glide client is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"redis-server is not installed ({INSTALL_HINT})")
    pytest.importorskip("glide", reason=NO_GLIDE)
    return binary


@pytest.fixture
def glide_installed() -> None:
    pytest.importorskip("glide", reason=NO_GLIDE)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = require_redis()
    port = _free_port()
    process = spawn_redis(binary, port, deadline=time.monotonic() + 15)
    assert process.stdout is not None
    try:
        if not _ping(port):
            raise RedisDidNotStart(f"redis-server on port {port} does not answer PING")
        yield RedisServer(port, process)
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def namespace() -> str:
    """A key prefix of its own per test: tests share one server without seeing each other's fleet."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def peer(nursery: trio.Nursery) -> FencedPeer:
    fenced = FencedPeer()
    await nursery.start(fenced.serve)
    return fenced


def status_of(member: FleetMember, device_id: str) -> DeviceStatus:
    """The device's status in this member's manager."""
    profile = member.manager.get_device_info(device_id)
    assert profile is not None, f"{device_id} is not registered with {member.member_id}"
    return profile.status


def device_configs(peer: FencedPeer, count: int) -> list[DeviceConfig]:
    return [
        DeviceConfig(device_id=f"dev-{i:02d}", server_url=peer.url, capabilities=("shell",), metadata={"rack": i % 4})
        for i in range(count)
    ]


@asynccontextmanager
async def fleet_member(
    registry: str | FleetRegistry | None,
    devices: Sequence[DeviceConfig],
    member_id: str,
    *,
    namespace: str = "galaxy",
    lease_ttl: float = 1.5,
    task_name: str = TASK_NAME,
    **manager_settings: Any,
) -> AsyncIterator[FleetMember]:
    settings: dict[str, Any] = {
        "heartbeat_interval": 30.0,
        "heartbeat_timeout": 10.0,
        "reconnect_delay": 0.05,
        "backoff_cap": 0.4,
        "connect_timeout": 5.0,
        "register_timeout": 5.0,
        "telemetry_timeout": 2.0,
    }
    settings.update(manager_settings)
    async with (
        ConstellationDeviceManager(task_name=task_name, **settings) as manager,
        open_fleet_member(
            manager, registry, devices, member_id=member_id, lease_ttl=lease_ttl, namespace=namespace
        ) as member,
    ):
        yield member


class MemberRunner:
    """Runs members in background tasks so a test can start, kill and stop them independently."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.members: dict[str, FleetMember] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.gone: dict[str, trio.Event] = {}

    async def start(
        self, member_id: str, registry: str | FleetRegistry | None, *args: Any, **kwargs: Any
    ) -> FleetMember:
        async def hold(*, task_status: trio.TaskStatus[FleetMember]) -> None:
            self.gone[member_id] = trio.Event()
            try:
                with trio.CancelScope() as scope:
                    self.scopes[member_id] = scope
                    devices: Sequence[DeviceConfig] = args[0]
                    async with fleet_member(registry, devices, member_id, **kwargs) as member:
                        self.members[member_id] = member
                        task_status.started(member)
                        await trio.sleep_forever()
            finally:
                self.gone[member_id].set()

        member: FleetMember = await self.nursery.start(hold)
        return member

    def stop(self, member_id: str) -> None:
        """Cancel the member's scope (it leaves in the background)."""
        self.scopes[member_id].cancel()
        del self.members[member_id]

    async def stop_and_wait(self, member_id: str) -> None:
        self.stop(member_id)
        await self.gone[member_id].wait()


@pytest.fixture
async def runner(peer: FencedPeer) -> AsyncIterator[MemberRunner]:
    # Depends on ``peer`` so that members leave first, while the peer still answers their closing handshakes.
    async with trio.open_nursery() as nursery:
        yield MemberRunner(nursery)
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], peer: FencedPeer, members: Sequence[FleetMember]) -> None:
    """Wait until ``predicate()`` holds, re-checking it on every event of the members, their managers, the peer."""
    send, receive = trio.open_memory_channel[None](math.inf)
    async with trio.open_nursery() as nursery:

        async def forward(subscription: Any) -> None:
            with subscription:
                async for _ in subscription:
                    send.send_nowait(None)

        async def forward_peer() -> None:
            while True:
                await peer.changed.wait()
                send.send_nowait(None)

        async def forward_changes(member: FleetMember) -> None:
            while True:
                await member.wait_for_change()
                send.send_nowait(None)

        for member in members:
            nursery.start_soon(forward, member.manager.subscribe())
            nursery.start_soon(forward, member.subscribe())
            nursery.start_soon(forward_changes, member)
        nursery.start_soon(forward_peer)
        await trio.lowlevel.checkpoint()
        while not predicate():
            await receive.receive()
        nursery.cancel_scope.cancel()
