"""Test doubles for the fleet: a driver that records what the keeper tells it, a registry that can be cut."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from galaxy_trio.fleet import FleetRegistry, RegistryUnavailable


class Driving:
    """Who drives which device right now, across every driver of a test: a second driver is a failed test."""

    def __init__(self) -> None:
        self.by: dict[str, str] = {}
        self.overlaps: list[tuple[float, str, str, str]] = []

    def start(self, device_id: str, member: str) -> None:
        other = self.by.get(device_id)
        if other is not None and other != member:
            self.overlaps.append((trio.current_time(), device_id, other, member))
        self.by[device_id] = member

    def stop(self, device_id: str, member: str) -> None:
        if self.by.get(device_id) == member:
            del self.by[device_id]


class RecordingDriver:
    """A DeviceDriver that logs ``(time, "start"|"stop", device, reason)`` and can mark devices busy."""

    def __init__(self, member: str, driving: Driving | None = None) -> None:
        self.member = member
        self.driving = driving if driving is not None else Driving()
        self.running: set[str] = set()
        self.busy: set[str] = set()
        self.log: list[tuple[float, str, str, str | None]] = []

    def start(self, device_id: str) -> None:
        self.running.add(device_id)
        self.driving.start(device_id, self.member)
        self.log.append((trio.current_time(), "start", device_id, None))

    def stop(self, device_id: str, reason: str) -> None:
        if device_id in self.running:
            self.running.discard(device_id)
            self.driving.stop(device_id, self.member)
        self.log.append((trio.current_time(), "stop", device_id, reason))

    async def wait_stopped(self, device_id: str) -> None:
        await trio.lowlevel.checkpoint()

    def is_busy(self, device_id: str) -> bool:
        return device_id in self.busy

    def die(self) -> None:
        """The process died: its connections are gone (without the keeper saying anything)."""
        for device_id in list(self.running):
            self.driving.stop(device_id, self.member)
        self.running.clear()

    def times(self, action: str, device_id: str | None = None) -> list[float]:
        return [t for t, a, d, _ in self.log if a == action and (device_id is None or d == device_id)]


class FlakyRegistry:
    """Wraps a registry; ``mode`` ``"down"`` fails every call at once, ``"hang"`` never answers. Records calls."""

    def __init__(self, inner: FleetRegistry) -> None:
        self.inner = inner
        self.mode: str | None = None
        self.calls: list[tuple[float, str, tuple[Any, ...]]] = []

    @property
    def display_name(self) -> str:
        return "flaky " + self.inner.display_name

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((trio.current_time(), name, args))
            if self.mode == "down":
                await trio.lowlevel.checkpoint()
                raise RegistryUnavailable(f"{self.display_name}: {name} failed: connection refused")
            if self.mode == "hang":
                await trio.sleep_forever()
            return await method(*args, **kwargs)

        return call

    def calls_of(self, name: str) -> list[tuple[float, tuple[Any, ...]]]:
        return [(t, args) for t, n, args in self.calls if n == name]
