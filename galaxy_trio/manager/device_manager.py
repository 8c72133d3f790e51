"""ConstellationDeviceManager: turns configured devices into connected, profiled, task-ready agents.

Each device gets one long-lived runner task in the manager's nursery. The runner loops over connection attempts;
an attempt opens its own nursery (holding the link's one reader) and walks the phases of :mod:`.phases` in the
runner itself, each phase in the module of its name::

    connect.py (phase 2) → register.py (3) → telemetry.py (4) → activate.py (5: IDLE; the runner then sends the
    heartbeats until the link ends)

Each phase runs under a cancel scope of its bound (``connect_timeout``, ``register_timeout``,
``telemetry_timeout``; :func:`.phases.phase_timeouts`), so a stalled handshake or a server that never confirms
REGISTER costs exactly its timeout, and the attempt ends in a frozen :class:`~galaxy_trio.aip.client_protocol.
Outcome` (why, and whether retrying can help) decided by the one client protocol the agent shares. Retryable
outcomes are retried with exponential backoff and full jitter up to ``max_retries`` consecutive attempts; the rest
(HTTP 401/403/404, a duplicate client_id — unless our own lost link may still hold it —, any other rejection) fail
the device at once with the reason. A FAILED device stays FAILED until :meth:`ConstellationDeviceManager.
connect_device`, unless ``failed_retry_interval`` is set (``run`` sets it): then one attempt re-probes it that
often, and a device that comes back is IDLE again.

Task queueing lives in ``tasks.py`` (a lane per device, talking to the device through a small Protocol), the
per-link AIP conversation in ``session.py``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import msgspec
import trio

from .._nursery import open_service_nursery
from ..aip import ServerMessage, builders
from ..aip.client_protocol import Outcome, rejection_outcome
from ..backoff import Backoff
from ..config import ConfigError, ConfigProblem, DeviceConfig, ManagerSettings
from ..errors import GalaxyTrioError, LinkError
from ..transport import CLOSE_GRACE
from .activate import HeartbeatClock, keep_alive
from .connect import classify, client_ssl_context, connect_link
from .events import EventHub, EventKind, EventSubscription
from .phases import Phase, phase_timeouts, timed_out
from .profile import CONNECTED_STATUSES, AgentProfile, DeviceStatus, check_transition
from .register import RegistrationRejected, is_duplicate, register
from .session import ClientSession
from .state import DeviceState, HeartbeatStats
from .tasks import DeviceNotConnected, ErrorType, TaskBook, TaskLane, TaskResult
from .telemetry import fetch_system_info, merge_system_info

__all__ = ["ConstellationDeviceManager", "DeviceAlreadyRegistered", "UnknownDevice"]

logger = logging.getLogger("galaxy_trio.manager")

_SETTLED = frozenset({DeviceStatus.IDLE, DeviceStatus.FAILED})

#: How long after losing an IDLE link a "client_id already registered" refusal is taken for our own stale link and
#: retried: UFO's server drops a dead peer after its 20 s ping + 20 s pong timeout, ours likewise; twice that.
_STALE_HOLDER_GRACE = 90.0


class UnknownDevice(GalaxyTrioError, KeyError):
    """No device with that id is registered; the message lists the ones that are."""

    def __init__(self, device_id: str, known: Iterable[str]) -> None:
        ids = sorted(known)
        listing = ", ".join(repr(i) for i in ids[:20]) + (f" … ({len(ids)} in all)" if len(ids) > 20 else "")
        super().__init__(f"unknown device {device_id!r}; registered devices: {listing or 'none'}")
        self.device_id = device_id

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class DeviceAlreadyRegistered(GalaxyTrioError, ValueError):
    """``register_device`` was called twice for one device id."""


#: How the manager changes a device's status (``ConstellationDeviceManager._set_status``).
_SetStatus = Callable[["_Device", DeviceStatus, "str | None"], None]


class _Device:
    """The manager's private per-device state: the public profile plus what drives it.

    It is also its task lane's :class:`~galaxy_trio.manager.tasks.LaneHost`: the lane reports what its tasks do,
    and the device turns that into status changes and events.
    """

    __slots__ = (
        "_changed",
        "_hub",
        "_set_status",
        "attempt",
        "connect_url",
        "idle_since",
        "lane",
        "last_heartbeat_at",
        "lost_at",
        "phase",
        "phase_since",
        "probing",
        "profile",
        "runner",
        "session",
        "ssl_context",
        "stop_reason",
        "stopping",
        "wake",
        "went_idle",
    )

    def __init__(
        self,
        profile: AgentProfile,
        connect_url: str,
        ssl_context: ssl.SSLContext | None,
        *,
        book: TaskBook,
        hub: EventHub,
        set_status: _SetStatus,
    ) -> None:
        self.profile = profile
        self.connect_url = connect_url  # may hold the token: never log it, never put it in a profile
        self.ssl_context = ssl_context
        self.runner: trio.CancelScope | None = None
        self.session: ClientSession | None = None
        #: Set at the device's next change, then replaced; made only when someone waits (:meth:`next_change`).
        self._changed: trio.Event | None = None
        self._hub = hub
        self._set_status = set_status
        self.lane: TaskLane = book.lane(self)
        self.stopping = False
        self.stop_reason: str | None = None
        #: Whether the current attempt reached IDLE, and when (trio time) the last IDLE link was lost.
        self.went_idle = False
        self.lost_at: float | None = None
        #: For DeviceState (wall clock): the attempt's phase and since when, attempts in the current streak, the
        #: last frame that proved the link alive, and since when the device is IDLE.
        self.phase: Phase | None = None
        self.phase_since = time.time()
        self.attempt = 0
        self.last_heartbeat_at: float | None = None
        self.idle_since: float | None = None
        #: Re-probing a FAILED device (``failed_retry_interval``): one attempt per probe until it is IDLE again.
        self.probing = False
        self.wake: trio.Event | None = None

    def heard_from(self, _frame: ServerMessage) -> None:
        """A heartbeat ack (or a task ack) from the server: the link is alive now."""
        self.profile.last_heartbeat = datetime.now(UTC)
        self.last_heartbeat_at = time.time()

    async def next_change(self) -> None:
        """Wait for the device's next change (status, runner). The Event is made only when someone waits: the
        status changes on the way to IDLE make none when nobody does."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def notify(self) -> None:
        """Wake everyone waiting for a change on this device."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def enter_phase(self, phase: Phase | None) -> None:
        self.phase = phase
        self.phase_since = time.time()

    async def wait_for_reprobe(self, interval: float) -> None:
        """Sleep ``interval`` seconds before the next re-probe of this FAILED device, or until
        :meth:`reconnect_now` (then the next streak has the full retry budget)."""
        wake = self.wake = trio.Event()
        self.probing = True
        try:
            with trio.move_on_after(interval):
                await wake.wait()
        finally:
            self.wake = None
        if wake.is_set():
            self.probing = False

    def reconnect_now(self) -> bool:
        """Cut short a re-probe wait (``connect_device`` on a FAILED device); ``False`` if none is under way."""
        if self.wake is None:
            return False
        self.wake.set()
        return True

    def state(self) -> DeviceState:
        profile = self.profile
        return DeviceState(
            device_id=profile.device_id,
            status=profile.status,
            phase=self.phase,
            attempt=self.attempt,
            phase_since=self.phase_since,
            last_heartbeat_at=self.last_heartbeat_at,
            failure_reason=profile.failure_reason,
            queue_depth=self.lane.queue_depth,
            current_task=self.lane.current_task,
            idle_since=self.idle_since,
        )

    # --- LaneHost: what the task lane reports --------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.profile.device_id

    def task_queued(self, task_id: str) -> None:
        self._hub.emit(EventKind.TASK_QUEUED, self.profile.device_id, task_id=task_id)

    def task_started(self, task_id: str) -> None:
        self.profile.current_task_id = task_id
        self._set_status(self, DeviceStatus.BUSY, f"task {task_id}")
        self._hub.emit(EventKind.TASK_STARTED, self.profile.device_id, task_id=task_id)

    def task_left(self, task_id: str, *, link_alive: bool) -> None:
        profile = self.profile
        if profile.current_task_id == task_id:
            profile.current_task_id = None
        if link_alive and profile.status is DeviceStatus.BUSY:
            self._set_status(self, DeviceStatus.IDLE, f"task {task_id} ended")

    def task_finished(self, task_id: str, error_type: ErrorType | None) -> None:
        self._hub.emit(EventKind.TASK_FINISHED, self.profile.device_id, task_id=task_id, error_type=error_type)

    def __repr__(self) -> str:
        return f"<device {self.profile.device_id} {self.profile.status.value}>"


class ConstellationDeviceManager:
    """Registers devices, keeps them connected and IDLE, and runs tasks on them.

    Use it as an async context manager; it owns a nursery that holds one runner per device::

        async with ConstellationDeviceManager(task_name="office") as manager:
            ok = await manager.register_device("windowsagent", "ws://127.0.0.1:5005/ws?token=…")

    Leaving the context closes every link (each close shielded and bounded) and leaves no task behind.
    """

    def __init__(
        self, task_name: str | None = None, *, settings: ManagerSettings | None = None, **overrides: Any
    ) -> None:
        """``settings`` (default: :class:`ManagerSettings`'s defaults) with any ``overrides`` by field name.

        ``ConstellationDeviceManager(task_name="office", heartbeat_interval=5)`` and
        ``ConstellationDeviceManager(settings=config.manager)`` both work. The result is validated by
        :class:`ManagerSettings` itself, the one place that knows the settings: an unknown name or a bad value
        raises :class:`~galaxy_trio.ConfigError` naming the field.
        """
        if task_name is not None:
            overrides["task_name"] = task_name
        self.settings: ManagerSettings = _settings_with(settings, overrides)
        self.task_name = self.settings.task_name
        self._backoff = Backoff(
            self.settings.reconnect_delay, max(self.settings.backoff_cap, self.settings.reconnect_delay)
        )
        self._timeouts = phase_timeouts(self.settings)
        self._devices: dict[str, _Device] = {}
        self._hub = EventHub(self.settings.event_buffer)
        self.heartbeat_stats = HeartbeatStats()  # heartbeats sent, missed and their round trips, for metrics
        self._heartbeat_clock = HeartbeatClock()  # the waits between every IDLE device's heartbeats
        self._tasks = TaskBook(
            task_name=self.task_name,
            task_queue_size=self.settings.task_queue_size,
            task_timeout=self.settings.task_timeout,
            max_concurrent_tasks=self.settings.max_concurrent_tasks,
        )
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._closed = False

    # --- lifetime ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._nursery is not None or self._closed:
            raise RuntimeError("a ConstellationDeviceManager can be entered only once")
        self._nursery_cm = open_service_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._heartbeat_clock.run, name="heartbeat clock")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._nursery is not None
        self._closed = True
        # First ask every live link to close with a proper closing handshake (their readers still run), then
        # cancel whatever is left: connection attempts, backoff sleeps, a peer that does not answer the close.
        for device in self._devices.values():
            self._stop(device, "manager closed")
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            for device in self._devices.values():
                while device.runner is not None:
                    await device.next_change()
        # Runners never raise, so the nursery exits cleanly once every link is closed (each close is shielded and
        # bounded by CLOSE_GRACE; the heartbeat clock is cancelled with it); the body's own exception, if any,
        # propagates as itself.
        assert self._nursery_cm is not None
        try:
            await self._nursery_cm.__aexit__(exc_type, exc, tb)
        finally:
            for device in self._devices.values():
                if device.profile.status is not DeviceStatus.DISCONNECTED:
                    self._set_status(device, DeviceStatus.DISCONNECTED, "manager closed")
            self._hub.close()
        return False

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None or self._closed:
            raise RuntimeError("use the manager inside 'async with ConstellationDeviceManager(...) as manager:'")
        return self._nursery

    # --- phase 1: registration in the local registry -----------------------------------------------------------

    def add_device(self, config: DeviceConfig, *, environ: dict[str, str] | None = None) -> AgentProfile:
        """Register a device from its config entry; connect it in the background if ``auto_connect``.

        Returns a snapshot of its profile (status DISCONNECTED, or CONNECTING once the runner starts).
        """
        if config.device_id in self._devices:
            raise DeviceAlreadyRegistered(f"device {config.device_id!r} is already registered")
        connect_url = config.resolve_url() if environ is None else config.resolve_url(environ)
        profile = AgentProfile(
            device_id=config.device_id,
            server_url=config.display_url,
            os=config.os,
            capabilities=list(config.capabilities),
            metadata=dict(config.metadata),
            max_retries=config.max_retries,
        )
        device = _Device(
            profile,
            connect_url,
            client_ssl_context(config.ca_file),
            book=self._tasks,
            hub=self._hub,
            set_status=self._set_status,
        )
        self._devices[config.device_id] = device
        logger.info("device %s added (%s)", config.device_id, profile.server_url)  # not yet connected
        if config.auto_connect:
            self._start(device)
        return profile.snapshot()

    def add_devices(self, configs: Iterable[DeviceConfig]) -> None:
        """Register many devices at once; they connect concurrently. Pair with :meth:`wait_until_settled`."""
        for config in configs:
            self.add_device(config)

    async def register_device(
        self,
        device_id: str,
        server_url: str,
        os: str | None = None,
        capabilities: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
        auto_connect: bool = True,
        *,
        token_env: str | None = None,
        ca_file: str | None = None,
    ) -> bool:
        """Register a device (the flow document's signature) and, with ``auto_connect``, bring it up.

        With ``auto_connect`` this waits until the device settles and returns ``True`` if it is IDLE, ``False`` if
        it FAILED. Without it, the device is only recorded (DISCONNECTED) and ``True`` is returned.
        """
        self._require_nursery()
        # Validated exactly as a config file entry would be: a bad value raises ConfigError naming the field.
        config = DeviceConfig(
            device_id=device_id,
            server_url=server_url,
            os=os,
            capabilities=tuple(capabilities or ()),
            metadata=dict(metadata or {}),
            max_retries=max_retries,
            auto_connect=auto_connect,
            token_env=token_env,
            ca_file=ca_file,
        )
        self.add_device(config)
        if not auto_connect:
            return True
        profile = await self.wait_for_device(device_id)
        return profile.status is DeviceStatus.IDLE

    # --- control -----------------------------------------------------------------------------------------------

    async def connect_device(self, device_id: str) -> bool:
        """(Re)start connecting a device — the way out of FAILED — and wait until it settles; ``True`` if IDLE."""
        device = self._get(device_id)
        if device.runner is None:
            device.profile.connection_attempts = 0
            device.attempt = 0
            self._start(device)
        else:
            device.probing = False  # a re-probe under way becomes a streak with the full retry budget
            if device.profile.status is DeviceStatus.FAILED and device.reconnect_now():
                device.profile.connection_attempts = device.attempt = 0
                # CONNECTING at once, so that the wait below does not see the old verdict.
                self._set_status(device, DeviceStatus.CONNECTING)
                device.lane.device_started()
        profile = await self.wait_for_device(device_id)
        return profile.status is DeviceStatus.IDLE

    async def disconnect_device(self, device_id: str) -> bool:
        """Close a device's link and stop reconnecting it; ``True`` if it was running."""
        device = self._get(device_id)
        runner = device.runner
        if runner is None:
            if device.profile.status is DeviceStatus.FAILED:
                self._set_status(device, DeviceStatus.DISCONNECTED, "disconnected by request")
            return False
        self._stop(device, "disconnected by request")
        while device.runner is runner:
            await device.next_change()
        return True

    async def remove_device(self, device_id: str) -> AgentProfile:
        """Disconnect a device (if running) and forget it; returns its last profile. Queued tasks for it fail."""
        device = self._get(device_id)
        # Forgotten first: while its link closes, nobody can connect it again or remove it twice.
        del self._devices[device_id]
        runner = device.runner
        if runner is not None:
            self._stop(device, "disconnected by request")  # the runner ends on its own now, even if we are cancelled
            while device.runner is runner:
                await device.next_change()
        return device.profile.snapshot()

    def client_id(self, device_id: str) -> str:
        """The AIP client id this manager registers for ``device_id``: ``<task_name>@<device_id>``."""
        self._get(device_id)
        return builders.constellation_client_id(self.task_name, device_id)

    async def wait_for_device(self, device_id: str) -> AgentProfile:
        """Wait until the device is IDLE or FAILED (or not running at all) and return a snapshot of its profile."""
        device = self._get(device_id)
        while device.runner is not None and device.profile.status not in _SETTLED:
            await device.next_change()
        return device.profile.snapshot()

    async def wait_until_settled(self, device_ids: Iterable[str] | None = None) -> dict[str, AgentProfile]:
        """Wait until every (given) running device is IDLE or FAILED; return their profiles."""
        ids = list(self._devices) if device_ids is None else list(device_ids)
        for device_id in ids:
            await self.wait_for_device(device_id)
        return {device_id: self._devices[device_id].profile.snapshot() for device_id in ids}

    def subscribe(self, buffer: int | None = None) -> EventSubscription:
        """A new event subscription (status changes, telemetry, missed heartbeats, tasks).

        Use as ``with manager.subscribe() as events: async for event in events: ...``. Its buffer holds
        ``buffer`` (default: the ``event_buffer`` setting) events; past that, events are dropped for this
        subscriber only and counted in ``dropped`` — the manager never waits for a reader.
        """
        return self._hub.subscribe(buffer)

    # --- queries -----------------------------------------------------------------------------------------------

    def get_device_info(self, device_id: str) -> AgentProfile | None:
        """A snapshot of the device's profile, or ``None`` if no such device is registered."""
        device = self._devices.get(device_id)
        return None if device is None else device.profile.snapshot()

    def get_all_devices(self) -> dict[str, AgentProfile]:
        """Snapshots of every registered device's profile, by device id."""
        return {device_id: device.profile.snapshot() for device_id, device in self._devices.items()}

    def get_device_state(self, device_id: str) -> DeviceState:
        """Where the device stands now (status, phase, attempt, queue); raises :class:`UnknownDevice`."""
        return self._get(device_id).state()

    def get_all_device_states(self) -> dict[str, DeviceState]:
        """:meth:`get_device_state` for every registered device, by device id."""
        return {device_id: device.state() for device_id, device in self._devices.items()}

    def get_connected_devices(self) -> list[str]:
        """Ids of the devices with a live link: CONNECTED, IDLE or BUSY."""
        return [i for i, d in self._devices.items() if d.profile.status in CONNECTED_STATUSES]

    # --- tasks (see tasks.py) ----------------------------------------------------------------------------------

    async def assign_task_to_device(
        self,
        task_id: str,
        device_id: str,
        task_description: str,
        task_data: dict[str, Any] | None = None,
    ) -> TaskResult:
        """Run one task on a device and return its result (see :mod:`galaxy_trio.manager.tasks`).

        The task waits in the device's queue, and for a free place under ``max_concurrent_tasks``, inside its time
        bound: the caller's cancel scope, else ``task_timeout``. Refusals raise
        :class:`~galaxy_trio.manager.TaskRefused` (unknown device: :class:`UnknownDevice`).
        """
        device = self._get(device_id)
        if device.runner is None or device.profile.status is DeviceStatus.FAILED:
            profile = device.profile
            registered = ", ".join(sorted(self._devices))
            raise DeviceNotConnected(
                f"device {device_id!r} is {profile.status.value} and not connecting"
                f"{f' ({profile.failure_reason})' if profile.failure_reason else ''}; "
                f"call connect_device() first. Registered devices: {registered}"
            )
        return await device.lane.run(task_id, task_description, task_data)

    # --- internals ---------------------------------------------------------------------------------------------

    def _get(self, device_id: str) -> _Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise UnknownDevice(device_id, self._devices) from None

    def _start(self, device: _Device) -> None:
        nursery = self._require_nursery()
        device.stopping = False
        device.stop_reason = None
        device.runner = trio.CancelScope()
        # CONNECTING at once, so that a waiter started right after this call does not see the old verdict.
        self._set_status(device, DeviceStatus.CONNECTING)
        device.lane.device_started()
        nursery.start_soon(self._run_device, device, device.runner, name=f"device:{device.profile.device_id}")

    def _stop(self, device: _Device, reason: str) -> None:
        """Stop a device's runner: close its live link gracefully, or cancel the attempt or backoff under way."""
        if device.runner is None:
            return
        device.stopping = True
        device.stop_reason = reason
        session = device.session
        if session is not None and not session.ended:
            session.end(reason)
        else:
            device.runner.cancel()

    def _set_status(
        self, device: _Device, new: DeviceStatus, reason: str | None = None, *, quiet: bool = False
    ) -> None:
        """Change a device's status (checked against the allowed transitions), log it and announce it.

        ``quiet`` logs a FAILED at INFO instead of WARNING: a re-probe that fails again is not news."""
        profile = device.profile
        old = profile.status
        if old is new:
            return
        check_transition(profile.device_id, old, new)
        profile.status = new
        device.idle_since = time.time() if new is DeviceStatus.IDLE else None
        if new is DeviceStatus.FAILED:
            profile.failure_reason = reason
        elif new is DeviceStatus.IDLE:
            profile.failure_reason = None
        log = logger.warning if new is DeviceStatus.FAILED and not quiet else logger.info
        log("device %s: %s -> %s%s", profile.device_id, old.value, new.value, f" ({reason})" if reason else "")
        self._hub.emit(EventKind.STATUS, profile.device_id, old_status=old, new_status=new, reason=reason)
        device.notify()

    def _enter_phase(self, device: _Device, phase: Phase) -> trio.CancelScope:
        """Enter ``phase`` of the device's attempt; returns the cancel scope bounding it (use it as ``with``)."""
        device.enter_phase(phase)
        self._hub.emit(EventKind.PHASE, device.profile.device_id, reason=phase.value)
        return trio.move_on_after(self._timeouts[phase])

    async def _run_device(self, device: _Device, runner: trio.CancelScope) -> None:
        """One device's life: streaks of attempts, the verdict, and re-probes of a FAILED device when
        ``failed_retry_interval`` is set; at the end, the device's task lane is told that it stopped, and why.
        Never raises (but Cancelled)."""
        profile = device.profile
        try:
            with runner:
                while (verdict := await self._connect_until_verdict(device)) is not None:
                    self._set_status(device, DeviceStatus.FAILED, verdict.describe(), quiet=device.probing)
                    interval = self.settings.failed_retry_interval
                    if not interval:  # the library's default: FAILED stays until connect_device()
                        return
                    device.lane.device_stopped(verdict.describe())  # tasks waiting for it fail now
                    await device.wait_for_reprobe(interval)
                    profile.connection_attempts = device.attempt = 0
                    device.lane.device_started()
        finally:
            device.runner = None
            device.session = None
            device.probing = False
            if device.stopping and profile.status is not DeviceStatus.DISCONNECTED and not self._closed:
                self._set_status(device, DeviceStatus.DISCONNECTED, "disconnected by request")
            device.notify()
            device.lane.device_stopped(
                profile.failure_reason or device.stop_reason or f"device is {profile.status.value}"
            )

    async def _connect_until_verdict(self, device: _Device) -> Outcome | None:
        """Attempts with backoff until one ends for good: that final outcome, or ``None`` once asked to stop.

        A streak may spend ``max_retries`` consecutive failed attempts; a re-probe of a FAILED device only one
        (until it reaches IDLE again)."""
        profile = device.profile
        while True:
            self._set_status(device, DeviceStatus.CONNECTING)
            profile.connection_attempts += 1
            device.attempt = profile.connection_attempts
            device.went_idle = False
            outcome = self._forgive_own_stale_link(device, await self._attempt(device))
            if device.stopping:
                return None
            if outcome.permanent:
                return outcome
            if device.probing:
                interval = self.settings.failed_retry_interval
                return Outcome(f"still failing when re-probed (every {interval:g}s): {outcome.describe()}", True)
            if profile.connection_attempts >= profile.max_retries:
                streak = profile.connection_attempts
                return Outcome(f"gave up after {streak} consecutive failed attempts; last: {outcome.describe()}", True)
            self._set_status(device, DeviceStatus.DISCONNECTED, outcome.describe())
            await trio.sleep(self._backoff.delay(max(profile.connection_attempts, 1)))

    def _forgive_own_stale_link(self, device: _Device, outcome: Outcome) -> Outcome:
        """A duplicate-id refusal soon after losing an IDLE link is most likely our own previous link, which the
        server has not yet noticed is dead (a partition, a black hole): retryable, and the attempt not counted,
        for as long as a server's keepalive needs to drop such a link."""
        now = trio.current_time()
        if device.went_idle:
            device.lost_at = now
            device.probing = False  # it came back: from now on a full streak, as for any lost link
            return outcome
        if outcome.permanent and is_duplicate(outcome.reason) and device.lost_at is not None:
            if now - device.lost_at < _STALE_HOLDER_GRACE:
                device.profile.connection_attempts -= 1
                device.attempt = device.profile.connection_attempts
                return msgspec.structs.replace(outcome, permanent=False)
        return outcome

    async def _attempt(self, device: _Device) -> Outcome:
        """One connection attempt through phases 2–5, until the link ends, and why it ended."""
        session: ClientSession | None = None
        outcome: Outcome | None = None
        try:
            # Phase 2: the WebSocket. The phase's scope bounds the opening only, not the link's life.
            with self._enter_phase(device, Phase.CONNECT) as connecting:
                link = await connect_link(device.connect_url, ssl_context=device.ssl_context)
            if connecting.cancelled_caught:
                return timed_out(Phase.CONNECT, self._timeouts)
            try:
                self._set_status(device, DeviceStatus.CONNECTED)
                async with trio.open_nursery() as conn:
                    device_id = device.profile.device_id
                    session = device.session = ClientSession(
                        link, conn.cancel_scope, device_id, client_id=self.client_id(device_id)
                    )
                    # The reader need not have run before REGISTER goes out: the reply slot is armed before the send
                    # and the verdict waits in the socket until read (no Nursery.start: a nursery of its own per
                    # attempt).
                    conn.start_soon(session.read_loop)
                    outcome = await self._register_and_serve(device, session)
            finally:
                await link.aclose()  # shielded and bounded by the link itself
        except LinkError as exc:
            # A failure while the link closes never replaces a verdict already reached on it (a rejection, a
            # timeout, why the link ended): a duplicate-id rejection must not turn into a retryable "closed".
            if outcome is None and (session is None or session.end_reason is None):
                outcome = classify(exc)
        finally:
            device.session = None
            device.enter_phase(None)
            if session is not None:
                device.lane.detach(session)
        if outcome is not None:
            return outcome
        return Outcome(session.end_reason if session is not None and session.end_reason else "link closed")

    async def _register_and_serve(self, device: _Device, session: ClientSession) -> Outcome | None:
        """Phases 3–5 on an open link. Returns why the attempt ended, or ``None`` when the link's end says why
        (``session.end_reason``): a session that ends cancels this call with the connection's nursery."""
        try:
            # Phase 3: REGISTER → the server's verdict.
            self._set_status(device, DeviceStatus.REGISTERING)
            with self._enter_phase(device, Phase.REGISTER) as registering:
                await register(session, self.task_name, device.profile.device_id)
            if registering.cancelled_caught:
                outcome = timed_out(Phase.REGISTER, self._timeouts)
                session.end(outcome.reason)
                return outcome
            await self._fetch_telemetry(device, session)
            await self._stay_active(device, session)
        except RegistrationRejected as exc:
            session.end(str(exc))
            return rejection_outcome(exc.reason)
        except LinkError as exc:
            session.end(str(exc))
        return None

    async def _fetch_telemetry(self, device: _Device, session: ClientSession) -> None:
        """Phase 4: the device's system info, merged into its profile. It degrades gracefully: a device that
        cannot say (or is slow to) still goes IDLE with its configured profile."""
        profile = device.profile
        system_info = None
        with self._enter_phase(device, Phase.TELEMETRY) as fetching:
            system_info = await fetch_system_info(session, profile.device_id)
        if system_info is not None:
            merge_system_info(profile, system_info)
            self._hub.emit(EventKind.TELEMETRY, profile.device_id)
        elif not session.ended:
            why = "timed out" if fetching.cancelled_caught else "no system info available"
            logger.info("device %s: telemetry skipped (%s)", profile.device_id, why)

    def _stay_active(self, device: _Device, session: ClientSession) -> Coroutine[Any, Any, None]:
        """Phase 5: IDLE, ready for tasks; returns the keep-alive for the runner itself to await until the link
        ends (one task fewer per device than a heartbeat task, and no frame of this method kept per device)."""
        self._enter_phase(device, Phase.ACTIVE)  # unbounded: the phase lasts as long as the link
        on_missed = self._activate(device, session)
        settings = self.settings
        return keep_alive(
            session,
            self._heartbeat_clock,
            interval=settings.heartbeat_interval,
            reply_window=settings.heartbeat_timeout,
            on_missed=on_missed,
            stats=self.heartbeat_stats,
        )

    def _activate(self, device: _Device, session: ClientSession) -> Callable[[], None]:
        """Phase 5: IDLE, ready for tasks. Returns what to do when a heartbeat goes unanswered."""
        profile = device.profile
        profile.connection_attempts = 0
        device.attempt = 0
        profile.last_heartbeat = datetime.now(UTC)
        device.last_heartbeat_at = time.time()  # the registration confirmation proved the link alive
        device.went_idle = True
        device.lost_at = None
        # Bound methods and a partial, not closures: an idle device keeps them for as long as its link lives.
        session.on_heartbeat = device.heard_from
        self._set_status(device, DeviceStatus.IDLE)
        device.lane.attach(session)
        return functools.partial(self._heartbeat_missed, device)

    def _heartbeat_missed(self, device: _Device) -> None:
        device_id = device.profile.device_id
        window = self.settings.heartbeat_timeout
        logger.warning("device %s: heartbeat missed (no frame within %gs)", device_id, window)
        self._hub.emit(EventKind.HEARTBEAT_MISSED, device_id, reason="no reply to heartbeat")

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for device in self._devices.values():
            counts[device.profile.status.value] = counts.get(device.profile.status.value, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no devices"
        return f"<ConstellationDeviceManager task_name={self.task_name!r}: {summary}>"


def _settings_with(base: ManagerSettings | None, overrides: dict[str, Any]) -> ManagerSettings:
    """``base`` with ``overrides`` applied, validated by the Struct (``__post_init__`` runs on replace)."""
    settings = base if base is not None else ManagerSettings()
    if not overrides:
        return settings
    known = ManagerSettings.__struct_fields__
    unknown = sorted(name for name in overrides if name not in known)
    if unknown:
        problems = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                ConfigProblem(message=f"unknown manager setting; {hint}known: {', '.join(known)}", field=name)
            )
        raise ConfigError(problems)
    return msgspec.structs.replace(settings, **overrides)
