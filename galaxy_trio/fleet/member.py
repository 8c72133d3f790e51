"""FleetMember: one manager's seat in the fleet — ``open_fleet_member`` wires the keeper, driver, publisher, router.

The member sits on top of a running :class:`~galaxy_trio.manager.ConstellationDeviceManager` and uses only its
public API: it registers the fleet's devices with ``auto_connect=False`` (nobody connects a device it does not
own), connects and disconnects them as leases come and go, and reads the manager's events to publish state.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import msgspec
import trio

from .._nursery import open_service_nursery
from ..backoff import Backoff
from ..config import DeviceConfig
from ..manager import ConstellationDeviceManager, EventKind, EventSubscription, TaskResult
from ..transport import CLOSE_GRACE
from .driver import ManagerDriver
from .errors import FleetMismatch, RegistryUnavailable
from .events import FleetEventHub, FleetSubscription
from .keeper import LeaseKeeper
from .lease import LeaseTiming
from .memory import MemoryRegistry
from .publisher import ProfilePublisher
from .registry import FleetRegistry, FleetSnapshot
from .routing import TaskRouter

__all__ = ["FleetMember", "open_fleet_member"]

logger = logging.getLogger("galaxy_trio.fleet")

_MEMBER_ID: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
#: Bound on the registry calls made while leaving (release, leave, close the mailbox); shielded.
_LEAVE_GRACE: Final = 2.0


class FleetMember:
    """A manager's membership in a fleet. Create it with :func:`open_fleet_member`."""

    def __init__(
        self,
        manager: ConstellationDeviceManager,
        registry: FleetRegistry,
        member_id: str,
        device_ids: Sequence[str],
        timing: LeaseTiming,
        keeper: LeaseKeeper,
        router: TaskRouter,
        publisher: ProfilePublisher,
        pump: _EventPump,
        hub: FleetEventHub,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.member_id = member_id
        self.device_ids: tuple[str, ...] = tuple(device_ids)
        self.timing = timing
        self._keeper = keeper
        self._router = router
        self._publisher = publisher
        self._pump = pump
        self._hub = hub

    # --- state -------------------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while the registry does not answer: devices are then kept only until their leases run out."""
        return self._keeper.degraded

    @property
    def last_registry_error(self) -> str | None:
        return self._keeper.last_error

    @property
    def owned(self) -> list[str]:
        """The devices this member holds a valid lease for (by its own clock), in acquisition order."""
        now = trio.current_time()
        return [d for d in self._keeper.held() if self._keeper.book.is_valid(d, now)]

    @property
    def live_members(self) -> list[str]:
        """Member ids seen live at the last successful tick (this one included)."""
        return list(self._keeper.live_members)

    def owns(self, device_id: str) -> bool:
        return self._keeper.owns(device_id)

    def subscribe(self, buffer: int | None = None) -> FleetSubscription:
        """Fleet events of this member (leases acquired, lost, expired, released; degraded, recovered)."""
        return self._hub.subscribe(buffer)

    async def wait_for_change(self) -> None:
        """Wait for the next change of this member's leases or health."""
        await self._keeper.wait_changed()

    # --- fleet-wide operations ---------------------------------------------------------------------------------

    async def assign_task_to_device(
        self,
        task_id: str,
        device_id: str,
        task_description: str,
        task_data: dict[str, Any] | None = None,
    ) -> TaskResult:
        """Run one task on any device of the fleet — locally if this member owns it, else through its owner.

        Same result type and refusals as :meth:`ConstellationDeviceManager.assign_task_to_device`; an unknown
        device raises :class:`~galaxy_trio.manager.UnknownDevice` listing the fleet's devices. Raises
        :class:`~galaxy_trio.fleet.RegistryUnavailable` if the registry is needed (remote device) and unreachable.
        """
        return await self._router.assign(task_id, device_id, task_description, task_data)

    async def publish_now(self) -> None:
        """Return once every state change of this member's devices so far is written to the registry.

        State is published in the background as it changes; call this before reading the fleet when the read must
        include this member's latest changes. Bound it with your cancel scope (it waits through registry outages).
        """
        await self._pump.wait_drained()
        await self._publisher.flush()

    async def read_fleet(self) -> FleetSnapshot:
        """Every device of the fleet with its owner and last reported state, and the live members."""
        return await self.registry.read_fleet()

    def __repr__(self) -> str:
        state = "degraded" if self.degraded else "ok"
        return f"<FleetMember {self.member_id} {state}: owns {len(self._keeper.held())} of {len(self.device_ids)}>"


def default_member_id() -> str:
    """``<host>-<pid>-<random>``: unique per process start, readable in the fleet table."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@asynccontextmanager
async def open_fleet_member(
    manager: ConstellationDeviceManager,
    registry: str | FleetRegistry | None,
    devices: Sequence[DeviceConfig],
    *,
    member_id: str | None = None,
    lease_ttl: float = 10.0,
    renew_interval: float | None = None,
    safety_margin: float | None = None,
    join_grace: float | None = None,
    namespace: str = "galaxy",
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[FleetMember]:
    """Join a fleet with a running manager; leave it (handing every device back) when the block ends.

    ``registry`` is a Redis URL (``redis://host:port/db``), a registry object (e.g. one :class:`MemoryRegistry`
    shared by members in one process), or ``None`` for a private in-memory registry (this member owns all).
    ``devices`` are the fleet's devices (one shared config): every member must list the devices it may drive and
    use the same ``task_name`` — the client_id ``<task_name>@<device_id>`` is then the same whoever drives a device,
    and the server's duplicate-client_id rule refuses a second driver. ``lease_ttl`` is how long an unrenewed
    lease lives (renewed every ``ttl/3`` by default; see :class:`LeaseTiming`). ``join_grace`` (default: one renew
    interval; none with a private registry) lets members started together see each other before taking devices.

    Raises :class:`FleetMismatch` if the fleet's task_name differs from the manager's, and
    :class:`RegistryUnavailable` if the registry does not answer when joining.
    """
    timing = LeaseTiming.from_ttl(lease_ttl, renew_interval=renew_interval, safety_margin=safety_margin)
    member_id = member_id or default_member_id()
    device_ids = _checked_ids(member_id, devices)
    registry_retry = Backoff(timing.renew_interval / 4, timing.ttl)
    async with AsyncExitStack() as stack:
        if registry is None and join_grace is None:
            join_grace = 0.0  # a private registry: nobody else can join, nothing to wait for
        store = await _open_store(stack, registry, namespace=namespace, timing=timing, member_id=member_id)
        await _join(store, manager, devices, environ=environ, member_id=member_id)
        hub = FleetEventHub()
        driver = ManagerDriver(manager, device_ids, _reconnect_backoff(manager))
        keeper = LeaseKeeper(
            store,
            member_id,
            manager.task_name,
            device_ids,
            driver,
            timing,
            hub=hub,
            join_grace=join_grace,
            retry_backoff=registry_retry,
        )
        publisher = ProfilePublisher(
            store,
            member_id,
            manager,
            keeper.owns,
            held=keeper.held,
            refresh_interval=timing.renew_interval,
            retry=registry_retry,
        )
        router = TaskRouter(
            store,
            member_id,
            manager,
            keeper.owns,
            device_ids,
            recheck_interval=timing.renew_interval,
            retry=registry_retry,
        )
        subscription = manager.subscribe(max(1024, 8 * len(device_ids)))
        pump = _EventPump(subscription, driver, publisher)
        member = FleetMember(manager, store, member_id, device_ids, timing, keeper, router, publisher, pump, hub)
        try:
            async with open_service_nursery() as nursery:
                nursery.start_soon(pump.run, name=f"fleet-events:{member_id}")
                await nursery.start(driver.run)
                await nursery.start(router.run)
                nursery.start_soon(publisher.run, name=f"fleet-publisher:{member_id}")
                keeper_scope = trio.CancelScope()
                await nursery.start(_run_in, keeper_scope, keeper)
                logger.info(
                    "member %s joined the fleet on %s (%d devices, lease ttl %gs)",
                    member_id,
                    store.display_name,
                    len(device_ids),
                    timing.ttl,
                )
                try:
                    yield member
                finally:
                    keeper_scope.cancel()
                    await keeper.close(grace=CLOSE_GRACE + 1.0)
                    with trio.CancelScope(shield=True), trio.move_on_after(_LEAVE_GRACE):
                        try:
                            await store.close_mailbox(member_id)
                        except RegistryUnavailable as exc:
                            logger.info("member %s: mailbox not deleted (%s); it expires", member_id, exc)
        finally:
            subscription.close()
            hub.close()
            logger.info("member %s left the fleet", member_id)


def _checked_ids(member_id: str, devices: Sequence[DeviceConfig]) -> list[str]:
    """The fleet's device ids, refused with a clear error if the member id is malformed or an id is listed twice."""
    if not _MEMBER_ID.fullmatch(member_id):
        raise ValueError(f"member_id must be 1-128 characters of [A-Za-z0-9_.:@-], got {member_id!r}")
    device_ids = [config.device_id for config in devices]
    duplicates = sorted(d for d, count in Counter(device_ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"devices listed twice: {', '.join(duplicates)}")
    return device_ids


def _reconnect_backoff(manager: ConstellationDeviceManager) -> Backoff:
    settings = manager.settings
    return Backoff(settings.reconnect_delay, max(settings.backoff_cap, settings.reconnect_delay))


async def _open_store(
    stack: AsyncExitStack, registry: str | FleetRegistry | None, *, namespace: str, timing: LeaseTiming, member_id: str
) -> FleetRegistry:
    """The registry to join: a private in-memory one, a Redis one opened on ``stack`` (closed with it), or the one
    given."""
    if registry is None:
        return MemoryRegistry()
    if isinstance(registry, str):
        from .redis import open_redis_registry

        return await stack.enter_async_context(
            open_redis_registry(
                registry, namespace=namespace, request_timeout=timing.renew_interval, client_name=member_id
            )
        )
    return registry


async def _join(
    store: FleetRegistry,
    manager: ConstellationDeviceManager,
    devices: Sequence[DeviceConfig],
    *,
    environ: Mapping[str, str] | None,
    member_id: str,
) -> None:
    """Join the fleet (one task_name for all members), add its devices to the manager unconnected (the lease keeper
    connects the ones this member owns) and open this member's mailbox."""
    fleet_task_name = await store.join_fleet(manager.task_name, [config.device_id for config in devices])
    if fleet_task_name != manager.task_name:
        raise FleetMismatch(
            f"the fleet on {store.display_name} uses task_name {fleet_task_name!r} but this manager uses "
            f"{manager.task_name!r}; every member must share one task_name so that a device has one client_id"
        )
    env = None if environ is None else dict(environ)  # one snapshot for every device
    for config in devices:
        manager.add_device(msgspec.structs.replace(config, auto_connect=False), environ=env)
    await store.open_mailbox(member_id)


async def _run_in(
    scope: trio.CancelScope, keeper: LeaseKeeper, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with scope:
        await keeper.run(task_status=task_status)


class _EventPump:
    """The manager's events → retries of FAILED owned devices, and the registry's copy of their state."""

    def __init__(self, subscription: EventSubscription, driver: ManagerDriver, publisher: ProfilePublisher) -> None:
        self.subscription = subscription
        self.driver = driver
        self.publisher = publisher
        self._drained = trio.Event()

    async def wait_drained(self) -> None:
        """Return once every event the manager has emitted so far has been handed on."""
        while self.subscription.channel.statistics().current_buffer_used:
            await self._drained.wait()

    async def run(self) -> None:
        dropped = 0
        async for event in self.subscription:
            if event.kind is EventKind.STATUS and event.new_status is not None:
                self.driver.note_status(event.device_id, event.new_status)
            self.publisher.note(event)
            if self.subscription.dropped != dropped:
                # Events were lost to a full buffer: re-derive what they would have told us from the profiles.
                dropped = self.subscription.dropped
                for device_id, profile in self.publisher.manager.get_all_devices().items():
                    self.driver.note_status(device_id, profile.status)
                    if self.publisher.owns(device_id):
                        self.publisher.mark(device_id)
            if not self.subscription.channel.statistics().current_buffer_used:
                self._drained.set()
                self._drained = trio.Event()
