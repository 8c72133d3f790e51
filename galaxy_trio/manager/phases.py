"""The phases of one connection attempt and the time each may take.

A device's attempt walks phases 2–5 of the flow document, each in its own module::

    Phase.CONNECT   → connect.py    open the WebSocket               (``connect_timeout``)
    Phase.REGISTER  → register.py   REGISTER, wait for the verdict   (``register_timeout``)
    Phase.TELEMETRY → telemetry.py  DEVICE_INFO, merge it            (``telemetry_timeout``; degrades gracefully)
    Phase.ACTIVE    → activate.py   IDLE, heartbeats until the link ends (no bound: it lasts as long as the link)

Phase 1, the config entry, happens once before any attempt (``galaxy_trio.config``). The runner in
``device_manager.py`` enters each phase through :func:`phase_timeouts`' table, under a cancel scope of that
phase's bound; an attempt ends in a frozen :class:`~galaxy_trio.aip.client_protocol.Outcome`, never a tuple.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from types import MappingProxyType

from ..aip.client_protocol import Outcome
from ..config import ManagerSettings

__all__ = ["Phase", "phase_timeouts", "timed_out"]


class Phase(enum.StrEnum):
    """Where a connection attempt stands. The values are the names used in events and :class:`DeviceState`."""

    CONNECT = "connect"
    REGISTER = "register"
    TELEMETRY = "telemetry"
    ACTIVE = "active"


def phase_timeouts(settings: ManagerSettings) -> Mapping[Phase, float]:
    """How long each phase may take under ``settings`` (read once per manager, not per attempt)."""
    return MappingProxyType(
        {
            Phase.CONNECT: settings.connect_timeout,
            Phase.REGISTER: settings.register_timeout,
            Phase.TELEMETRY: settings.telemetry_timeout,
            Phase.ACTIVE: math.inf,
        }
    )


def timed_out(phase: Phase, timeouts: Mapping[Phase, float]) -> Outcome:
    """The outcome of an attempt whose ``phase`` ran out of time: retryable (the next attempt may be faster)."""
    return Outcome(f"{phase.value} timed out after {timeouts[phase]:g}s")
