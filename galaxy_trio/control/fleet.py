"""What the control plane needs of a fleet member (``galaxy_trio.fleet.FleetMember``) in fleet mode.

A Protocol, so that the control plane does not import the fleet package (and its Redis client) unless used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..manager import TaskResult

if TYPE_CHECKING:
    from ..fleet.registry import FleetSnapshot

__all__ = ["FleetControl"]


class FleetControl(Protocol):
    """The member whose manager the control server serves: it routes tasks and knows the owners."""

    @property
    def member_id(self) -> str: ...

    def owns(self, device_id: str) -> bool: ...

    async def assign_task_to_device(
        self, task_id: str, device_id: str, task_description: str, task_data: dict[str, Any] | None = None
    ) -> TaskResult: ...

    async def read_fleet(self) -> FleetSnapshot: ...
