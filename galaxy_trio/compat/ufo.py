"""A drop-in for UFO Galaxy's ``ConstellationDeviceManager``, run on galaxy_trio through :mod:`galaxy_trio.aio`.

UFO Galaxy is asyncio; this class has the constructor, methods and return shapes that UFO's Galaxy calls on its
device manager, so swapping one import puts galaxy_trio's manager under it::

    from galaxy_trio.compat.ufo import ConstellationDeviceManager  # was: from galaxy.client.device_manager import …

When UFO's ``galaxy`` package is importable, the facade returns UFO's own types — ``DeviceStatus`` and
``AgentProfile`` from ``galaxy.client.components.types``, ``ExecutionResult`` from ``galaxy.core.types`` — since UFO
compares statuses by enum identity, and publishes UFO's ``DeviceEvent`` on ``galaxy.core.events.get_event_bus()``
for every status change (FAILED included, which UFO itself never publishes), so UFO's web UI stays live. Without
UFO it returns galaxy_trio's own types and an :class:`ExecutionResult` of its own with UFO's fields.

Where UFO's manager is wrong this one is right: after a disconnect mid-task the device is DISCONNECTED and
reconnecting (UFO resets it to IDLE), ``max_retries`` is honoured, ``task_data`` reaches the device, a cancelled
caller's queued task leaves the queue, and heartbeats detect a dead link.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import trio

from .. import aio
from ..aip import TaskStatus
from ..config import ConfigError, DeviceConfig
from ..manager import AgentProfile, DeviceEvent, DeviceStatus, EventKind, TaskRefused, TaskResult, UnknownDevice
from ..manager.profile import CONNECTED_STATUSES

__all__ = ["ConstellationDeviceManager", "DeviceRegistry", "ExecutionResult", "UfoTypes"]

logger = logging.getLogger("galaxy_trio.compat.ufo")


class ExecutionResult(msgspec.Struct, kw_only=True):
    """UFO's ``ExecutionResult`` fields, used when UFO's ``galaxy`` package is not importable."""

    task_id: str
    status: TaskStatus
    result: Any = None
    error: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def execution_time(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None

    @property
    def is_successful(self) -> bool:
        return self.status == TaskStatus.COMPLETED and self.error is None


@dataclass(frozen=True)
class UfoTypes:
    """The types the facade hands out: UFO's own when its ``galaxy`` package is importable, else galaxy_trio's."""

    device_status: Any
    agent_profile: Any
    execution_result: Any
    task_status: Any
    device_event: Any = None
    event_type: Any = None
    event_bus: Callable[[], Any] | None = None

    @property
    def from_ufo(self) -> bool:
        return self.event_bus is not None

    @classmethod
    def find(cls) -> UfoTypes:
        try:
            components = importlib.import_module("galaxy.client.components.types")
            core = importlib.import_module("galaxy.core.types")
            events = importlib.import_module("galaxy.core.events")
        except ImportError:
            return cls(DeviceStatus, AgentProfile, ExecutionResult, TaskStatus)
        try:  # UFO's Galaxy puts aip.messages.TaskStatus in its results; same values as ours
            task_status: Any = importlib.import_module("aip.messages").TaskStatus
        except (ImportError, AttributeError):
            task_status = TaskStatus
        return cls(
            device_status=components.DeviceStatus,
            agent_profile=components.AgentProfile,
            execution_result=core.ExecutionResult,
            task_status=task_status,
            device_event=events.DeviceEvent,
            event_type=events.EventType,
            event_bus=events.get_event_bus,
        )


class DeviceRegistry:
    """What UFO's code calls on ``device_manager.device_registry``: lookups, and registration without connecting."""

    def __init__(self, owner: ConstellationDeviceManager) -> None:
        self._owner = owner
        #: Registered here and not yet handed to the manager (that happens at ``connect_device``).
        self.staged: dict[str, DeviceConfig] = {}

    def register_device(
        self,
        device_id: str,
        server_url: str,
        os: str | None = None,
        capabilities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
    ) -> Any:
        """Record a device (DISCONNECTED) without connecting it; ``connect_device`` brings it up. Raises
        ``ValueError`` for a bad entry or a duplicate id, as UFO's registry does."""
        if device_id in self.staged or self._owner.native_profile(device_id) is not None:
            raise ValueError(f"device {device_id!r} is already registered")
        try:
            config = DeviceConfig(
                device_id=device_id,
                server_url=server_url,
                os=os,
                capabilities=tuple(capabilities or ()),
                metadata=dict(metadata or {}),
                max_retries=max_retries,
                auto_connect=False,
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        self.staged[device_id] = config
        return self.get_device(device_id)

    def is_device_registered(self, device_id: str) -> bool:
        return device_id in self.staged or self._owner.native_profile(device_id) is not None

    def get_device(self, device_id: str) -> Any:
        return self._owner.get_device_info(device_id)

    def get_all_devices(self, connected: bool = False) -> dict[str, Any]:
        return self._owner.get_all_devices(connected=connected)

    def get_connected_devices(self) -> list[str]:
        return self._owner.get_connected_devices()

    def is_device_busy(self, device_id: str) -> bool:
        profile = self._owner.native_profile(device_id)
        return profile is not None and profile.status is DeviceStatus.BUSY

    def get_current_task(self, device_id: str) -> str | None:
        profile = self._owner.native_profile(device_id)
        return None if profile is None else profile.current_task_id

    def get_device_capabilities(self, device_id: str) -> dict[str, Any]:
        return self._owner.get_device_capabilities(device_id)

    def get_device_system_info(self, device_id: str) -> dict[str, Any] | None:
        return self._owner.get_device_system_info(device_id)


class ConstellationDeviceManager:
    """UFO Galaxy's device manager API on galaxy_trio (see the module docstring).

    Built without a running loop, as UFO builds it; the galaxy_trio manager starts with the first coroutine call
    and stops at :meth:`shutdown`.
    """

    def __init__(self, task_name: str = "test_task", heartbeat_interval: float = 30.0, reconnect_delay: float = 5.0):
        self.task_name = task_name
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_delay = reconnect_delay
        self.types = UfoTypes.find()
        self.device_registry = DeviceRegistry(self)
        self._stack: AsyncExitStack | None = None
        self._manager: aio.AioManager | None = None
        self._forwarder: aio.EventForwarder | None = None
        self._submitted: dict[str, dict[str, None]] = {}  # device id -> ids of tasks asked for and not finished
        self._closed = False

    # --- lifetime ----------------------------------------------------------------------------------------------

    async def _open(self) -> aio.AioManager:
        if self._closed:
            raise RuntimeError("this ConstellationDeviceManager was shut down")
        if self._manager is None:
            stack = AsyncExitStack()
            manager = await stack.enter_async_context(
                aio.open_manager(
                    self.task_name,
                    heartbeat_interval=self.heartbeat_interval,
                    reconnect_delay=self.reconnect_delay,
                    cancel_on_crash=False,
                )
            )
            self._stack, self._manager = stack, manager
            if self.types.from_ufo:
                self._forwarder = manager.forward_events(self._publish)
        return self._manager

    async def shutdown(self) -> None:
        """Close every link (bounded, as the trio manager does), publish the last status events, and stop."""
        self._closed = True
        if self._stack is not None:
            await self._stack.aclose()
        if self._forwarder is not None:
            await self._forwarder.aclose()  # ends by itself: the closed manager ended its event stream

    # --- registration and links --------------------------------------------------------------------------------

    async def register_device(
        self,
        device_id: str,
        server_url: str,
        os: str | None = None,
        capabilities: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        auto_connect: bool = True,
        max_retries: int = 5,
    ) -> bool:
        """Register (and, with ``auto_connect``, connect) a device; ``True`` when registered and, if connecting,
        IDLE. A bad entry or a duplicate id is logged and gives ``False``, as in UFO."""
        try:
            self.device_registry.register_device(device_id, server_url, os, capabilities, metadata, max_retries)
        except ValueError as exc:
            logger.error("cannot register device %s: %s", device_id, exc)
            return False
        if not auto_connect:
            return True
        return await self.connect_device(device_id)

    async def connect_device(self, device_id: str, is_reconnection: bool = False) -> bool:
        """Connect a registered device (the way back from FAILED) and wait until it settles; ``True`` if IDLE.

        ``is_reconnection`` is accepted for UFO's callers; galaxy_trio counts attempts per connection streak."""
        manager = await self._open()
        staged = self.device_registry.staged.pop(device_id, None)
        if staged is not None:
            await manager.add_device(staged)
        profile = manager.get_device_info(device_id)
        if profile is None:
            logger.error("device %s is not registered", device_id)
            return False
        if profile.status in (DeviceStatus.IDLE, DeviceStatus.BUSY):
            return True
        return await manager.connect_device(device_id)

    async def disconnect_device(self, device_id: str) -> None:
        """Close the device's link and stop reconnecting it."""
        manager = await self._open()
        if self.device_registry.staged.pop(device_id, None) is not None:
            return
        try:
            await manager.disconnect_device(device_id)
        except UnknownDevice:
            logger.error("device %s is not registered", device_id)

    async def ensure_devices_connected(self) -> dict[str, bool]:
        """Connect every registered device that has no live link; ``{device_id: connected}``."""
        results: dict[str, bool] = {}
        for device_id in list(self._all_profiles()):
            profile = self.native_profile(device_id)
            if profile is not None and profile.status in CONNECTED_STATUSES:
                results[device_id] = True
            else:
                results[device_id] = await self.connect_device(device_id)
        return results

    # --- tasks -------------------------------------------------------------------------------------------------

    async def assign_task_to_device(
        self,
        task_id: str,
        device_id: str,
        task_description: str,
        task_data: dict[str, Any] | None = None,
        timeout: float = 300.0,  # noqa: ASYNC109 — UFO's signature; applied as a trio deadline inside
    ) -> Any:
        """Run a task and return an ``ExecutionResult``; a failure is a FAILED result, never an exception, except
        ``ValueError`` for a device that is unknown or not being connected (as UFO raises). ``task_data`` goes to
        the device; ``timeout`` bounds queue time plus run time, and a cancelled caller's queued task leaves the
        queue."""
        manager = await self._open()
        if manager.get_device_info(device_id) is None:
            raise ValueError(f"Device {device_id} is not registered")
        submitted = self._submitted.setdefault(device_id, {})
        submitted[task_id] = None
        started = datetime.now(UTC)
        try:
            outcome = await manager.run_trio(
                _within,
                timeout,
                manager.trio_manager.assign_task_to_device,
                task_id,
                device_id,
                task_description,
                task_data,
            )
        except TaskRefused as exc:
            raise ValueError(f"Device {device_id} cannot take task {task_id}: {exc}") from exc
        finally:
            submitted.pop(task_id, None)
        if outcome is None:
            return self._result(
                task_id,
                TaskStatus.FAILED,
                f"Task execution timed out after {timeout} seconds",
                {"error_type": "timeout", "device_id": device_id, "task_id": task_id},
                {"device_id": device_id, "timeout": timeout, "error_category": "timeout_error"},
                started,
                datetime.now(UTC),
            )
        return self._from_task_result(outcome, started)

    def _from_task_result(self, outcome: TaskResult, started: datetime) -> Any:
        timings = outcome.timings
        start = datetime.fromtimestamp(timings.started_at, UTC) if timings and timings.started_at else started
        end = datetime.fromtimestamp(timings.finished_at, UTC) if timings else datetime.now(UTC)
        metadata: dict[str, Any] = {"device_id": outcome.device_id}
        if outcome.error_type is not None:
            metadata["error_category"] = str(outcome.error_type)
            if outcome.error_type == "device_disconnection":
                metadata["disconnected"] = True
        if timings is not None:
            metadata["timings"] = msgspec.structs.asdict(timings)
        status = TaskStatus.COMPLETED if outcome.ok else TaskStatus.FAILED
        result = outcome.result
        if not outcome.ok and result is None:
            result = {"error_type": outcome.error_type, "message": outcome.error, "device_id": outcome.device_id}
        return self._result(outcome.task_id, status, outcome.error, result, metadata, start, end)

    def _result(
        self,
        task_id: str,
        status: TaskStatus,
        error: str | None,
        result: Any,
        metadata: dict[str, Any],
        start: datetime,
        end: datetime,
    ) -> Any:
        return self.types.execution_result(
            task_id=task_id,
            status=self.types.task_status(status.value),
            result=result,
            error=error,
            metadata=metadata,
            start_time=start,
            end_time=end,
        )

    # --- queries -----------------------------------------------------------------------------------------------

    def native_profile(self, device_id: str) -> AgentProfile | None:
        """The device's profile as galaxy_trio's own ``AgentProfile`` snapshot (whatever UFO types are in use)."""
        if self._manager is not None:
            profile = self._manager.get_device_info(device_id)
            if profile is not None:
                return profile
        staged = self.device_registry.staged.get(device_id)
        if staged is None:
            return None
        return AgentProfile(
            device_id=staged.device_id,
            server_url=staged.display_url,
            os=staged.os,
            capabilities=list(staged.capabilities),
            metadata=dict(staged.metadata),
            max_retries=staged.max_retries,
        )

    def _all_profiles(self) -> dict[str, AgentProfile]:
        profiles = {} if self._manager is None else self._manager.get_all_devices()
        for device_id in self.device_registry.staged:
            staged = self.native_profile(device_id)
            if staged is not None:
                profiles[device_id] = staged
        return profiles

    def _convert(self, profile: AgentProfile) -> Any:
        if not self.types.from_ufo:
            return profile
        fields: dict[str, Any] = {
            "device_id": profile.device_id,
            "server_url": profile.server_url,
            "os": profile.os,
            "capabilities": profile.capabilities,
            "metadata": profile.metadata,
            "status": self.types.device_status(profile.status.value),
            "last_heartbeat": profile.last_heartbeat,
            "connection_attempts": profile.connection_attempts,
            "max_retries": profile.max_retries,
            "current_task_id": profile.current_task_id,
        }
        known = getattr(self.types.agent_profile, "__dataclass_fields__", fields)
        return self.types.agent_profile(**{key: value for key, value in fields.items() if key in known})

    def get_device_info(self, device_id: str) -> Any:
        """The device's profile (a snapshot, UFO's ``AgentProfile`` when UFO is installed), or ``None``."""
        profile = self.native_profile(device_id)
        return None if profile is None else self._convert(profile)

    def get_all_devices(self, connected: bool = False) -> dict[str, Any]:
        profiles = self._all_profiles()
        return {
            device_id: self._convert(profile)
            for device_id, profile in profiles.items()
            if not connected or profile.status in CONNECTED_STATUSES
        }

    def get_connected_devices(self) -> list[str]:
        return [] if self._manager is None else self._manager.get_connected_devices()

    def get_device_capabilities(self, device_id: str) -> dict[str, Any]:
        profile = self.native_profile(device_id)
        if profile is None:
            return {}
        return {"capabilities": profile.capabilities, "metadata": profile.metadata, "os": profile.os}

    def get_device_system_info(self, device_id: str) -> dict[str, Any] | None:
        profile = self.native_profile(device_id)
        if profile is None:
            return None
        system_info = profile.metadata.get("system_info")
        return dict(system_info) if isinstance(system_info, dict) else None

    def get_device_status(self, device_id: str) -> dict[str, Any]:
        profile = self.native_profile(device_id)
        if profile is None:
            return {"error": f"Device {device_id} not found"}
        queue = self.get_task_queue_status(device_id)
        return {
            **_device_data(profile),
            "queued_tasks": queue["queue_size"],
            "queued_task_ids": queue["queued_task_ids"],
        }

    def get_task_queue_status(self, device_id: str) -> dict[str, Any]:
        """The device's task queue as UFO reports it (tasks asked for through this facade)."""
        profile = self.native_profile(device_id)
        current = None if profile is None else profile.current_task_id
        pending = list(self._submitted.get(device_id, {}))
        queued = [task_id for task_id in pending if task_id != current]
        return {
            "device_id": device_id,
            "is_busy": profile is not None and profile.status is DeviceStatus.BUSY,
            "current_task_id": current,
            "queue_size": len(queued),
            "queued_task_ids": queued,
            "pending_task_ids": pending,
        }

    # --- UFO's event bus ---------------------------------------------------------------------------------------

    async def _publish(self, event: DeviceEvent) -> None:
        if event.kind is not EventKind.STATUS or event.new_status is None:
            return
        kinds = self.types.event_type
        if event.new_status is DeviceStatus.IDLE and event.old_status is not DeviceStatus.BUSY:
            kind = kinds.DEVICE_CONNECTED
        elif event.new_status is DeviceStatus.DISCONNECTED:
            kind = kinds.DEVICE_DISCONNECTED
        else:
            kind = kinds.DEVICE_STATUS_CHANGED
        profile = self.native_profile(event.device_id)
        device_info = _device_data(profile) if profile is not None else {"device_id": event.device_id}
        device_info["status"] = event.new_status.value  # the status this event is about, not a later one
        snapshot = {device_id: _device_data(p) for device_id, p in self._all_profiles().items()}
        assert self.types.event_bus is not None and self.types.device_event is not None
        ufo_event = self.types.device_event(
            event_type=kind,
            source_id=f"device_manager.{event.device_id}",
            timestamp=time.time(),
            data={"event_name": kind.value, "device_count": len(snapshot), "reason": event.reason},
            device_id=event.device_id,
            device_status=event.new_status.value,
            device_info=device_info,
            all_devices=snapshot,
        )
        await self.types.event_bus().publish_event(ufo_event)


def _device_data(profile: AgentProfile) -> dict[str, Any]:
    """A device as UFO's events and ``get_device_status`` show it (JSON-shaped)."""
    return {
        "device_id": profile.device_id,
        "status": profile.status.value,
        "os": profile.os,
        "server_url": profile.server_url,
        "capabilities": list(profile.capabilities),
        "metadata": profile.metadata,
        "last_heartbeat": profile.last_heartbeat.isoformat() if profile.last_heartbeat else None,
        "connection_attempts": profile.connection_attempts,
        "max_retries": profile.max_retries,
        "current_task_id": profile.current_task_id,
        "failure_reason": profile.failure_reason,
    }


async def _within(seconds: float, async_fn: Callable[..., Any], *args: Any) -> Any:
    """``await async_fn(*args)`` under a trio deadline (UFO's ``timeout=`` parameter); ``None`` if it ran out."""
    with trio.move_on_after(seconds):
        return await async_fn(*args)
    return None
