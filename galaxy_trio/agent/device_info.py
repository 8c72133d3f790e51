"""The device's ``system_info``: what it tells the server about itself when it registers (PROTOCOL.md §5.3).

Telemetry must never stop a device from registering: the registration-flow design says collection "cannot fail",
it degrades. So every probe (platform, OS version, CPUs, memory, hostname, address) runs on its own, and a probe
that raises costs only its own field, which takes the documented minimal value (``"unknown"``, ``0``, ``0.0``)
and is logged. If assembling the record itself goes wrong, the whole minimal record is returned instead.

The probes are plain callables gathered in :class:`SystemProbes`, so tests (and unusual hosts) can replace any of
them without monkeypatching psutil.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import platform as _platform
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import psutil

__all__ = [
    "SCHEMA_VERSION",
    "DeviceInfoProvider",
    "SystemProbes",
    "detect_ip_address",
    "minimal_system_info",
    "supported_features",
]

logger = logging.getLogger("galaxy_trio.agent")

SCHEMA_VERSION: Final = "1.0"
UNKNOWN: Final = "unknown"

#: Features every computer advertises, in UFO's order; the platform's app family follows them.
_COMPUTER_FEATURES: Final = ("gui", "cli", "browser", "file_system", "office")
_APP_FEATURE: Final = {"windows": "windows_apps", "linux": "linux_apps", "darwin": "macos_apps"}

_GIB: Final = 1024**3

_T = TypeVar("_T")


def _platform_name() -> str:
    name = _platform.system().lower()
    if not name:
        raise RuntimeError("platform.system() returned an empty name")
    return name


def _memory_total_bytes() -> int:
    return int(psutil.virtual_memory().total)


def _cpu_count() -> int:
    count = os.cpu_count()
    if count is None:
        raise RuntimeError("os.cpu_count() could not determine the number of CPUs")
    return count


def detect_ip_address() -> str:
    """The first usable IPv4 address of an interface that is up, found without sending any packet.

    UFO "connects" a UDP socket to a public address to learn its route; that needs a route to the internet and is
    meaningless on an isolated host. Reading the interface table is local and instant. Global and private
    addresses are preferred to link-local ones (169.254/16); with neither, the loopback address is the honest
    answer.
    """
    stats = psutil.net_if_stats()
    link_local: str | None = None
    for name, addresses in psutil.net_if_addrs().items():
        nic = stats.get(name)
        if nic is None or not nic.isup:
            continue
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.IPv4Address(address.address)
            if ip.is_loopback or ip.is_unspecified:
                continue
            if ip.is_link_local:
                link_local = link_local or str(ip)
                continue
            return str(ip)
    return link_local or "127.0.0.1"


@dataclasses.dataclass(frozen=True, slots=True)
class SystemProbes:
    """One callable per measured field. Replace any of them (``dataclasses.replace``) to test or to override."""

    platform: Callable[[], str] = _platform_name
    os_version: Callable[[], str] = _platform.version
    cpu_count: Callable[[], int] = _cpu_count
    memory_total_bytes: Callable[[], int] = _memory_total_bytes
    hostname: Callable[[], str] = socket.gethostname
    ip_address: Callable[[], str] = detect_ip_address


def supported_features(platform: str) -> list[str]:
    """UFO's feature list for a platform: the computer features plus the platform's app family.

    An ``"unknown"`` platform advertises nothing: claiming a GUI or an office suite on a host we could not even
    identify would send tasks there that it probably cannot run.
    """
    if platform == UNKNOWN:
        return []
    features = list(_COMPUTER_FEATURES)
    app_feature = _APP_FEATURE.get(platform)
    if app_feature is not None:
        features.append(app_feature)
    return features


def minimal_system_info(device_id: str, custom_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record sent when collection failed as a whole: the registration-flow design's minimal info."""
    return {
        "device_id": device_id,
        "platform": UNKNOWN,
        "os_version": UNKNOWN,
        "cpu_count": 0,
        "memory_total_gb": 0.0,
        "hostname": UNKNOWN,
        "ip_address": UNKNOWN,
        "supported_features": [],
        "platform_type": UNKNOWN,
        "schema_version": SCHEMA_VERSION,
        "custom_metadata": _copy_metadata(custom_metadata),
    }


def _copy_metadata(custom_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A private copy (the caller may mutate theirs); ``{}`` when there is none or it cannot even be copied."""
    if custom_metadata is None:
        return {}
    try:
        return dict(custom_metadata)
    except Exception as exc:
        logger.warning("custom_metadata cannot be read (%s: %s); reporting {}", type(exc).__name__, exc)
        return {}


class DeviceInfoProvider:
    """Collects a fresh ``system_info`` record on each call (a reconnect re-registers with current values).

    ``platform`` forces the reported platform (and with it the feature list and the agent type a UFO server picks
    for this device, §7.3); by default it is detected.
    """

    __slots__ = ("_platform", "_probes")

    def __init__(self, *, probes: SystemProbes | None = None, platform: str | None = None) -> None:
        self._probes = probes or SystemProbes()
        self._platform = platform.lower() if platform else None

    @property
    def probes(self) -> SystemProbes:
        return self._probes

    def collect(self, device_id: str, *, custom_metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``system_info`` with the keys in PROTOCOL.md §5.3 order. Never raises (except on cancellation)."""
        try:
            return self._collect(device_id, custom_metadata)
        except Exception:
            logger.exception("collecting system info for device %r failed; registering with minimal info", device_id)
            return minimal_system_info(device_id, custom_metadata)

    def _collect(self, device_id: str, custom_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        probes = self._probes
        platform = self._platform or _probe("platform", probes.platform, str, UNKNOWN).lower()
        memory_bytes = _probe("memory_total_gb", probes.memory_total_bytes, int, 0)
        return {
            "device_id": device_id,
            "platform": platform,
            "os_version": _probe("os_version", probes.os_version, str, UNKNOWN),
            "cpu_count": _probe("cpu_count", probes.cpu_count, int, 0),
            "memory_total_gb": round(memory_bytes / _GIB, 2) if memory_bytes > 0 else 0.0,
            "hostname": _probe("hostname", probes.hostname, str, UNKNOWN),
            "ip_address": _probe("ip_address", probes.ip_address, str, UNKNOWN),
            "supported_features": supported_features(platform),
            "platform_type": UNKNOWN if platform == UNKNOWN else "computer",
            "schema_version": SCHEMA_VERSION,
            "custom_metadata": _copy_metadata(custom_metadata),
        }


def _probe(field: str, probe: Callable[[], _T], kind: type[_T], fallback: _T) -> _T:
    """Run one probe; on failure or a wrong-typed answer, log which field degraded and why, and use ``fallback``."""
    try:
        value = probe()
    except Exception as exc:
        logger.warning(
            "system info field %r unavailable (%s: %s); reporting %r", field, type(exc).__name__, exc, fallback
        )
        return fallback
    # bool is an int subclass but never a valid count or size.
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        logger.warning("system info field %r: probe returned %r; reporting %r", field, value, fallback)
        return fallback
    return value
