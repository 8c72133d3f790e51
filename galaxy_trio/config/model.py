"""The settings as frozen msgspec Structs: :class:`ManagerSettings`, :class:`DeviceConfig`, :class:`GalaxyConfig`.

Each Struct checks itself in ``__post_init__`` with the rules of :mod:`.rules`, however it is built (in code, by
``msgspec.convert``, by ``msgspec.structs.replace`` or by the YAML loader): there is one validation path, so an
instance is always valid. The loader adds only what a Struct cannot know, the file and line of each value.

Tokens: a ``server_url`` may carry ``?token=...``; it is shown only through :func:`~galaxy_trio.redact.redact_url`
(reprs, :attr:`DeviceConfig.display_url`, error messages) and only :meth:`DeviceConfig.resolve_url` returns the
real connect URL, adding the token from ``token_env`` when the URL carries none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from galaxy_trio.redact import redact_url, url_token, url_with_token

from .rules import (
    DEVICE_RULES,
    MANAGER_RULES,
    ConfigError,
    ConfigProblem,
    Rule,
    backoff_problem,
    ca_file_problem,
    duplicate_id_problem,
    field_problem,
    is_loopback_host,
    token_env_problem,
    type_problem,
)

__all__ = ["DeviceConfig", "GalaxyConfig", "ManagerSettings"]

STRING_SOURCE = "<string>"
_ENVIRON = os.environ  # bound here because DeviceConfig's ``os`` field shadows the module in its class body


def _struct_problems(struct: msgspec.Struct, rules: dict[str, Rule], device: str | None = None) -> list[ConfigProblem]:
    """Every field rule applied to ``struct``; ``field`` of each problem is the bare field name.

    Also normalises what typing allows but the rules do not: an int duration becomes a float, a list a tuple.
    """
    problems = []
    for name, rule in rules.items():
        value = getattr(struct, name)
        if rule.kind == "str_tuple" and isinstance(value, list):
            value = tuple(value)
            msgspec.structs.force_setattr(struct, name, value)
        message = field_problem(rule, value)
        if message is not None:
            problems.append(ConfigProblem(message=message, device=device, field=name))
        elif rule.kind in ("float", "opt_float") and isinstance(value, int):
            msgspec.structs.force_setattr(struct, name, float(value))
    return problems


class ManagerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The device manager's knobs; durations are seconds. Every field has a default."""

    task_name: str = "galaxy_trio"
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 10.0
    reconnect_delay: float = 1.0
    backoff_cap: float = 30.0
    connect_timeout: float = 10.0
    register_timeout: float = 10.0
    telemetry_timeout: float = 5.0
    task_timeout: float = 300.0
    task_queue_size: int = 16
    event_buffer: int = 1024
    #: None: FAILED devices stay FAILED (the library's default); 0: never re-probe; > 0: re-try every that many s.
    failed_retry_interval: float | None = None
    #: A limit on tasks running at once across the whole manager; None: no limit.
    max_concurrent_tasks: int | None = None

    def __post_init__(self) -> None:
        problems = _struct_problems(self, MANAGER_RULES)
        if not {p.field for p in problems} & {"reconnect_delay", "backoff_cap"}:
            message = backoff_problem(self.reconnect_delay, self.backoff_cap)
            if message is not None:
                problems.append(ConfigProblem(message=message, field="backoff_cap"))
        if problems:
            raise ConfigError(problems)


class DeviceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One device entry. ``server_url`` may hold a token: show :attr:`display_url`, connect to :meth:`resolve_url`."""

    device_id: str
    server_url: str
    os: str | None = None
    capabilities: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    max_retries: int = 5
    auto_connect: bool = True
    token_env: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        label = self.device_id if isinstance(self.device_id, str) and self.device_id else None
        problems = _struct_problems(self, DEVICE_RULES, label)
        if not {p.field for p in problems} & {"server_url", "ca_file"}:
            message = ca_file_problem(self.server_url, self.ca_file)
            if message is not None:
                problems.append(ConfigProblem(message=message, device=label, field="ca_file"))
        if problems:
            raise ConfigError(problems)

    @property
    def display_url(self) -> str:
        """``server_url`` with any token replaced by ``***``: the only form fit for logs and messages."""
        return redact_url(self.server_url)

    @property
    def host(self) -> str:
        """The server's host name or address (IPv6 without brackets)."""
        return urlsplit(self.server_url).hostname or ""

    @property
    def port(self) -> int:
        """The server's port; 80 for ws:// and 443 for wss:// when the URL names none."""
        parts = urlsplit(self.server_url)
        return parts.port or (443 if parts.scheme == "wss" else 80)

    @property
    def is_loopback(self) -> bool:
        """Whether the server is on this machine (``localhost`` or a loopback address): local mode serves those."""
        return is_loopback_host(self.host)

    def resolve_url(self, environ: Mapping[str, str] = _ENVIRON) -> str:
        """The URL to connect to: ``server_url`` if it carries ``?token=``, else with ``token_env``'s token added.

        Raises :class:`ConfigError` naming the device and the variable (never a value) when ``token_env`` is
        unset or empty. The result holds the token: never log it, log :attr:`display_url`.
        """
        if self.token_env is None or url_token(self.server_url) is not None:
            return self.server_url
        message = token_env_problem(self.token_env, environ)
        if message is not None:
            raise ConfigError([ConfigProblem(message=message, device=self.device_id, field="token_env")])
        return url_with_token(self.server_url, environ[self.token_env])

    def _redacted_fields(self) -> Iterator[tuple[str, Any]]:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            yield name, (redact_url(value) if name == "server_url" else value)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._redacted_fields())
        return f"DeviceConfig({inner})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # msgspec's default would show the raw server_url to rich's pretty printer.
        return list(self._redacted_fields())


class GalaxyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole ``devices.yaml``: at least one device, device ids unique. ``source`` is the file (or ``<string>``).

    Its repr shows devices through :meth:`DeviceConfig.__repr__`, so tokens stay redacted there too.
    """

    devices: tuple[DeviceConfig, ...]
    local: bool = False
    manager: ManagerSettings = msgspec.field(default_factory=ManagerSettings)
    source: str = STRING_SOURCE

    def __post_init__(self) -> None:
        if isinstance(self.devices, list):
            msgspec.structs.force_setattr(self, "devices", tuple(self.devices))
        problems: list[ConfigProblem] = []
        if not isinstance(self.local, bool):
            problems.append(ConfigProblem(message=type_problem("bool", self.local) or "", field="local"))
        if not isinstance(self.manager, ManagerSettings):
            message = f"expected ManagerSettings, got {type(self.manager).__name__}"
            problems.append(ConfigProblem(message=message, field="manager"))
        if not self.devices:
            problems.append(ConfigProblem(message="must list at least one device", field="devices"))
        seen: set[str] = set()
        for index, device in enumerate(self.devices):
            if not isinstance(device, DeviceConfig):
                message = f"expected DeviceConfig, got {type(device).__name__}"
                problems.append(ConfigProblem(message=message, field=f"devices[{index}]"))
                continue  # it has no device_id to compare
            if device.device_id in seen:
                first = next(
                    i
                    for i, other in enumerate(self.devices)
                    if isinstance(other, DeviceConfig) and other.device_id == device.device_id
                )
                message = duplicate_id_problem(device.device_id, first)
                problems.append(
                    ConfigProblem(message=message, device=device.device_id, field=f"devices[{index}].device_id")
                )
            seen.add(device.device_id)
        if problems:
            raise ConfigError([msgspec.structs.replace(p, file=self.source) for p in problems])

    def device(self, device_id: str) -> DeviceConfig:
        """The device with this id; ``KeyError`` if there is none."""
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)
