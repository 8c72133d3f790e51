"""Local mode: the whole fleet on this machine, in this process — AIP servers and device agents included.

``python -m galaxy_trio run config/devices.yaml`` works on a fresh machine because of this module: for every
distinct loopback ``server_url`` it starts an AIP server, then one device agent per device, all sharing a token
generated for this run, and hands the manager device configs that carry that token. Only loopback ``ws://...:PORT/ws``
URLs are served (one spelling of an address per port); anything else is refused before anything starts, by the
rules of :mod:`galaxy_trio.config.rules` (so ``check`` says the same), and a port already in use is a clear error.
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import msgspec
import trio

from ._nursery import open_service_nursery
from .agent import DeviceAgent
from .config import DeviceConfig
from .config.rules import Endpoint, local_mode_problem, spelling_problems
from .errors import GalaxyTrioError
from .redact import url_with_token
from .server import AIPServer, serve_aip

__all__ = ["LocalFleet", "LocalModeError", "open_local_fleet"]

logger = logging.getLogger("galaxy_trio.local")


class LocalModeError(GalaxyTrioError):
    """Local mode cannot serve this config (a non-loopback or wss:// URL, a port already in use…)."""


@dataclass
class LocalFleet:
    """What :func:`open_local_fleet` started: the servers, the agents, and the device configs to connect with."""

    devices: tuple[DeviceConfig, ...]
    servers: dict[tuple[str, int], AIPServer] = field(default_factory=dict)
    agents: dict[str, DeviceAgent] = field(default_factory=dict)


def _check_servable(devices: Sequence[DeviceConfig]) -> None:
    """Refuse what local mode cannot serve, with the rules (and words) ``check`` and ``run`` use for a file."""
    problems = [
        f"device {device.device_id!r}: {message}"
        for device in devices
        if (message := local_mode_problem(device.server_url)) is not None
    ]
    endpoints = [Endpoint(device.device_id, device.host, device.port) for device in devices]
    problems += [f"device {devices[index].device_id!r}: {text}" for index, text in spelling_problems(endpoints).items()]
    if problems:
        raise LocalModeError("local mode cannot serve this fleet:\n  " + "\n  ".join(problems))


@asynccontextmanager
async def open_local_fleet(devices: Iterable[DeviceConfig], *, token: str | None = None) -> AsyncIterator[LocalFleet]:
    """Start servers and agents for ``devices``; stop them all on exit. See the module docstring."""
    devices = tuple(devices)
    _check_servable(devices)
    token = token or secrets.token_urlsafe(24)
    fleet = LocalFleet(
        devices=tuple(
            msgspec.structs.replace(device, server_url=url_with_token(device.server_url, token), token_env=None)
            for device in devices
        )
    )
    endpoints: dict[tuple[str, int], list[str]] = {}
    for device in devices:
        endpoints.setdefault((device.host, device.port), []).append(device.device_id)
    async with open_service_nursery() as nursery:
        for (host, port), device_ids in endpoints.items():
            try:
                server: AIPServer = await nursery.start(partial(serve_aip, host=host, port=port, token=token))
            except (OSError, BaseExceptionGroup) as raised:
                exc = _os_error(raised)
                if exc is None:
                    raise
                if exc.errno != errno.EADDRINUSE:
                    raise LocalModeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                raise LocalModeError(
                    f"port {port} on {host} is already in use, so local mode cannot start the AIP server for "
                    f"{', '.join(device_ids)}; stop what listens there, or change the port in the config"
                ) from None
            fleet.servers[(host, port)] = server
            logger.info("local AIP server on ws://%s:%d/ws for %s", host, port, ", ".join(device_ids))
        async with trio.open_nursery() as starting:
            for device in fleet.devices:
                starting.start_soon(_start_agent, nursery, fleet, device)
        yield fleet


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, possibly inside the server's nursery's exception group."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _os_error(exc.exceptions[0])
    return None


async def _start_agent(nursery: trio.Nursery, fleet: LocalFleet, device: DeviceConfig) -> None:
    agent = DeviceAgent(device.server_url, device.device_id)
    await nursery.start(agent.run)
    fleet.agents[device.device_id] = agent
