"""ManagerDriver: turns the keeper's decisions into the manager's connect/disconnect calls, one device at a time.

Each device the member may own gets a *follower* task that moves the manager toward what the keeper wants: up
(``connect_device``, and again with backoff if the device ends FAILED while still owned — after a takeover the
server may still hold the previous owner's registration for a moment and refuse ours as a duplicate) or down
(``disconnect_device``). One follower per device serialises the calls, so a quick "stop, start" can never run in
the wrong order; a stop cancels a connection attempt in flight at once.
"""

from __future__ import annotations

import logging

import trio

from ..backoff import Backoff
from ..manager import ConstellationDeviceManager, DeviceStatus

__all__ = ["ManagerDriver"]

logger = logging.getLogger("galaxy_trio.fleet")


class _Follower:
    __slots__ = ("attempt", "changed", "failed", "want")

    def __init__(self) -> None:
        self.want = False
        self.changed = trio.Event()
        self.attempt: trio.CancelScope | None = None
        self.failed = trio.Event()

    def wake(self) -> None:
        self.changed.set()


class ManagerDriver:
    """The :class:`~galaxy_trio.fleet.keeper.DeviceDriver` of a real manager. ``run`` holds the followers."""

    def __init__(self, manager: ConstellationDeviceManager, device_ids: list[str], retry: Backoff) -> None:
        self.manager = manager
        self.retry = retry
        self._followers = {device_id: _Follower() for device_id in device_ids}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for device_id, follower in self._followers.items():
                nursery.start_soon(self._follow, device_id, follower, name=f"fleet-follower:{device_id}")
            task_status.started()

    def start(self, device_id: str) -> None:
        follower = self._followers[device_id]
        follower.want = True
        follower.wake()

    def stop(self, device_id: str, reason: str) -> None:
        follower = self._followers[device_id]
        if follower.want:
            logger.info("device %s: dropping (%s)", device_id, reason)
        follower.want = False
        if follower.attempt is not None:
            follower.attempt.cancel()
        follower.wake()

    async def wait_stopped(self, device_id: str) -> None:
        # Ask the manager directly rather than waiting for the follower: this also works while leaving, when the
        # followers may already be cancelled. ``disconnect_device`` is idempotent and returns once the link is
        # closed (the manager bounds a close handshake that gets no answer).
        await self.manager.disconnect_device(device_id)

    def is_busy(self, device_id: str) -> bool:
        profile = self.manager.get_device_info(device_id)
        return profile is not None and profile.status is DeviceStatus.BUSY

    def note_status(self, device_id: str, status: DeviceStatus) -> None:
        """Fed from the manager's events: a FAILED device that is still wanted gets retried."""
        follower = self._followers.get(device_id)
        if follower is not None and status is DeviceStatus.FAILED:
            follower.failed.set()

    async def _follow(self, device_id: str, follower: _Follower) -> None:
        failures = 0
        while True:
            if not follower.want:
                failures = 0
                await self.manager.disconnect_device(device_id)
                follower.changed = trio.Event()  # reset before looking at ``want``: no wake-up can be lost
                if not follower.want:
                    await follower.changed.wait()
                continue
            follower.failed = trio.Event()
            with trio.CancelScope() as attempt:
                follower.attempt = attempt
                if failures:
                    await trio.sleep(self.retry.delay(failures))
                if await self.manager.connect_device(device_id):
                    failures = 0
                    await follower.failed.wait()  # IDLE; the manager keeps it up until it gives up (FAILED)
                failures += 1
                profile = self.manager.get_device_info(device_id)
                logger.warning(
                    "device %s: failed while owned (%s); retrying",
                    device_id,
                    profile.failure_reason if profile is not None else "unknown",
                )
            follower.attempt = None
