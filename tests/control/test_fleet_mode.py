"""Fleet mode: the control server of one member routes tasks to the owner and names every device's owner."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import httpx
import trio

from galaxy_trio import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.agent import DeviceAgent
from galaxy_trio.control import ControlEndpoint, serve_control
from galaxy_trio.fleet import FleetMember, MemoryRegistry, RegistryUnavailable, open_fleet_member
from galaxy_trio.server import serve_aip

from .rig import AIP_TOKEN, CONTROL_TOKEN, device

IDS = [f"f{n}" for n in range(4)]
ECHO = json.dumps({"tool_name": "echo", "parameters": {"text": "routed"}})


@asynccontextmanager
async def _two_members() -> AsyncIterator[tuple[FleetMember, FleetMember, ControlEndpoint]]:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        server = await nursery.start(partial(serve_aip, port=0, token=AIP_TOKEN))
        url = f"{server.url}?token={AIP_TOKEN}"
        for device_id in IDS:
            await nursery.start(DeviceAgent(url, device_id).run)
        configs = [device(i, url, max_retries=3) for i in IDS]
        registry = MemoryRegistry()
        members = []
        for name in ("a", "b"):
            manager = await stack.enter_async_context(ConstellationDeviceManager(task_name="fleetctl"))
            members.append(
                await stack.enter_async_context(
                    open_fleet_member(manager, registry, configs, member_id=name, lease_ttl=2.0, join_grace=0.1)
                )
            )
        a, b = members
        while sorted(a.owned + b.owned) != IDS or not a.owned or not b.owned:
            with trio.move_on_after(0.5):
                await a.wait_for_change()
        for member in (a, b):
            for device_id in member.owned:
                await member.manager.wait_for_device(device_id)
            await member.publish_now()
        endpoint = await nursery.start(partial(serve_control, a.manager, port=0, token=CONTROL_TOKEN, fleet=a))
        yield a, b, endpoint
        nursery.cancel_scope.cancel()


async def test_devices_name_their_owner_and_tasks_reach_another_members_device() -> None:
    async with _two_members() as (a, b, endpoint):
        headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
        async with httpx.AsyncClient(base_url=endpoint.url, headers=headers, timeout=30) as client:
            rows = {row["device_id"]: row for row in (await client.get("/api/devices")).json()}
            assert {i: rows[i]["owner"] for i in IDS} == {i: ("a" if a.owns(i) else "b") for i in IDS}
            assert {row["status"] for row in rows.values()} == {"idle"}  # b's devices: as b reported them
            theirs = b.owned[0]
            local = a.manager.get_device_info(theirs)
            assert local is not None and local.status is DeviceStatus.DISCONNECTED  # a does not drive it
            one = (await client.get(f"/api/devices/{theirs}")).json()
            assert one["owner"] == "b" and one["status"] == "idle"

            result = await client.post("/api/tasks", json={"device_id": theirs, "task_id": "r1", "request": ECHO})
            assert result.status_code == 200
            body = result.json()
            assert body["status"] == "completed" and body["device_id"] == theirs
            assert body["result"] == [{"request": ECHO, "result": "routed"}]

            later = await client.post("/api/tasks?wait=false", json={"device_id": theirs, "request": ECHO})
            assert later.status_code == 202
            done = await client.get(f"/api/tasks/{later.json()['task_id']}?wait=true")
            assert done.status_code == 200 and done.json()["status"] == "completed"

            refused = await client.post(f"/api/devices/{theirs}/disconnect")
            assert refused.status_code == 409 and "not driven by this fleet member" in refused.json()["error"]
            mine = a.owned[0]
            assert (await client.post(f"/api/devices/{mine}/disconnect")).status_code == 200


class _MemberWithoutRegistry:
    """A fleet member whose registry is down: it owns ``mine`` and cannot read the fleet."""

    def __init__(self, manager: ConstellationDeviceManager, mine: set[str], hang: bool) -> None:
        self.member_id = "lonely"
        self.manager = manager
        self._mine = mine
        self._hang = hang

    def owns(self, device_id: str) -> bool:
        return device_id in self._mine

    async def assign_task_to_device(self, *args: object) -> object:
        raise RegistryUnavailable("registry down")

    async def read_fleet(self) -> object:
        if self._hang:
            await trio.sleep_forever()
        raise RegistryUnavailable("registry down")


async def test_an_unreachable_registry_leaves_this_members_view_and_refuses_routed_tasks() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_aip, port=0, token=AIP_TOKEN))
        url = f"{server.url}?token={AIP_TOKEN}"
        await nursery.start(DeviceAgent(url, "solo").run)
        async with ConstellationDeviceManager(task_name="lonely") as manager:
            assert await manager.register_device("solo", url)
            manager.add_device(device("elsewhere", url, auto_connect=False))
            for hang in (False, True):
                member = _MemberWithoutRegistry(manager, {"solo"}, hang)
                endpoint = await nursery.start(
                    partial(serve_control, manager, port=0, token=CONTROL_TOKEN, fleet=member)  # type: ignore[arg-type]
                )
                headers = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
                async with httpx.AsyncClient(base_url=endpoint.url, headers=headers, timeout=30) as client:
                    rows = {r["device_id"]: r for r in (await client.get("/api/devices")).json()}
                    assert rows["solo"]["owner"] == "lonely" and rows["solo"]["status"] == "idle"
                    assert rows["elsewhere"]["owner"] is None
                    task = await client.post("/api/tasks", json={"device_id": "elsewhere", "request": ECHO})
                    assert task.status_code == 409 and "not routed: registry down" in task.json()["error"]
        nursery.cancel_scope.cancel()
