"""Errors of fleet mode. Task refusals keep the manager's own types; these are about the shared registry."""

from __future__ import annotations

from ..errors import GalaxyTrioError

__all__ = ["FleetError", "FleetMismatch", "RegistryUnavailable"]


class FleetError(GalaxyTrioError):
    """Something about the fleet as a whole went wrong."""


class RegistryUnavailable(FleetError):
    """The shared registry (Redis) did not answer, or answered with an error; the message says which and why.

    It never carries a password: registries name themselves by their redacted URL.
    """


class FleetMismatch(FleetError):
    """This member cannot join the fleet as configured (e.g. its task_name differs from the fleet's)."""
