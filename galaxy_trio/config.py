"""Phase 1: loading and validating ``devices.yaml`` into frozen, always-valid settings.

A fleet is only as healthy as its configuration, so a bad file loads *nothing* and reports *every* problem at
once, each with the file, the 1-based line of the offending key or value, the device and the dotted field name:
fixing a config one error per run is what makes people hate config files.

How: the YAML is composed into a node tree (PyYAML's C parser when available) so every value keeps its source
line; each section is then checked field by field, strictly (a string where an int is expected is an error,
unknown keys are errors), and only a fully valid file is turned into :class:`GalaxyConfig`. The same per-field
checks run in the Structs' ``__post_init__``, so settings built in code are held to the same rules.

Tokens: a ``server_url`` may carry ``?token=...``; it is shown only through :func:`~galaxy_trio.redact.redact_url`
(reprs, :attr:`DeviceConfig.display_url`, error messages) and only :meth:`DeviceConfig.resolve_url` returns the
real connect URL, adding the token from ``token_env`` when the URL carries none.
"""

from __future__ import annotations

import difflib
import gc
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from galaxy_trio.errors import GalaxyTrioError
from galaxy_trio.redact import redact_url, url_token, url_with_token

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DeviceConfig",
    "GalaxyConfig",
    "ManagerSettings",
    "load_config",
    "parse_config",
]

_STRING_SOURCE = "<string>"
# Set while the loader builds Structs from values it has already checked (and located by line): the Structs'
# __post_init__ then skips its second, identical check, a tenth of a large fleet's load time.
_PRECHECKED: ContextVar[bool] = ContextVar("galaxy_trio_config_prechecked", default=False)
_ENVIRON = os.environ  # bound here because DeviceConfig's ``os`` field shadows the module in its class body
_YamlLoader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- problems and the error that carries them ------------------------------------------------------------------

_INDEX_LABEL = re.compile(r"devices\[\d+\]")


class ConfigProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a configuration; ``str()`` gives ``file:line: device 'x': field: message``.

    ``device`` is the device's id, or ``devices[i]`` when the entry has no usable id; ``field`` is dotted from the
    top of the file (``devices[1].server_url``, ``manager.heartbeat_interval``). Messages never contain a token.
    """

    message: str
    file: str | None = None
    line: int | None = None
    device: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        field = self.field
        if self.device is not None:
            parts.append(self.device if _INDEX_LABEL.fullmatch(self.device) else f"device {self.device!r}")
            # Inside a device, the field reads best relative to it: "server_url", not "devices[3].server_url".
            if field is not None and field.startswith("devices["):
                _, _, field = field.partition("].")
        if field:
            parts.append(field)
        parts.append(self.message)
        return ": ".join(parts)


class ConfigError(GalaxyTrioError):
    """The configuration is unusable; ``problems`` lists every reason, ``str()`` shows one per line."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)


# --- field rules, shared by the YAML loader and the Structs' __post_init__ -----------------------------------


def _positive_seconds(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    if value <= 0:
        return f"must be a positive number of seconds, got {value}"
    return None


def _non_negative_seconds(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    if value < 0:
        return f"must be >= 0 seconds (0 disables it), got {value}"
    return None


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value}"


def _identifier(value: str) -> str | None:
    """Task names and device ids: they form client ids ``<task_name>@<device_id>``, so no '@'."""
    if not value:
        return "must not be empty"
    if "@" in value:
        return f"must not contain '@' (it joins client ids '<task_name>@<device_id>'), got {value!r}"
    if value != value.strip():
        return f"must not start or end with whitespace, got {value!r}"
    return None


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _non_empty_items(value: tuple[str, ...]) -> str | None:
    return "entries must not be empty" if any(not item for item in value) else None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str | None:
    if _ENV_NAME.fullmatch(value):
        return None
    return f"must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got {value!r}"


_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def _server_url(url: str) -> str | None:
    """Why a ``server_url`` cannot be connected to, or None. Never quotes the URL itself (it may hold a token)."""
    if _URL_FORBIDDEN.search(url):
        return "must not contain whitespace or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("ws", "wss"):
        if not parts.scheme:
            return "must be a ws:// or wss:// URL, got no scheme"
        return f"scheme must be ws or wss, got {parts.scheme!r}"
    if "@" in parts.netloc:
        return "must not carry credentials before the host; put the token in ?token= or use token_env"
    if not parts.hostname:
        return "has no host"
    _, bracket, after_host = parts.netloc.rpartition("]")
    port_text = after_host if bracket else parts.netloc
    if ":" in port_text:
        port_text = port_text.rpartition(":")[2]
        if not port_text.isascii() or not port_text.isdigit():
            return f"invalid port {port_text!r}"
        if not 1 <= int(port_text) <= 65535:
            return f"port must be between 1 and 65535, got {int(port_text)}"
    if not parts.path.startswith("/"):
        return "has no path (e.g. ws://host:port/ws)"
    if parts.fragment or url.endswith("#"):
        return "must not have a #fragment"
    if "token=" in parts.query and url_token(url) == "":
        return "has an empty ?token= parameter"
    return None


class _Rule(NamedTuple):
    """How one field is typed and checked. ``kind`` is one of the keys of :data:`_KIND_NAMES`."""

    kind: str
    check: Callable[[Any], str | None] | None = None
    required: bool = False


_KIND_NAMES = {
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "opt_str": "a string",
    "opt_float": "a number",
    "opt_int": "an integer",
    "str_tuple": "a list of strings",
    "mapping": "a mapping",
}

_MANAGER_RULES: dict[str, _Rule] = {
    "task_name": _Rule("str", _identifier),
    "heartbeat_interval": _Rule("float", _positive_seconds),
    "heartbeat_timeout": _Rule("float", _positive_seconds),
    "reconnect_delay": _Rule("float", _positive_seconds),
    "backoff_cap": _Rule("float", _positive_seconds),
    "connect_timeout": _Rule("float", _positive_seconds),
    "register_timeout": _Rule("float", _positive_seconds),
    "telemetry_timeout": _Rule("float", _positive_seconds),
    "task_timeout": _Rule("float", _positive_seconds),
    "task_queue_size": _Rule("int", _at_least_one),
    "event_buffer": _Rule("int", _at_least_one),
    "failed_retry_interval": _Rule("opt_float", _non_negative_seconds),
    "max_concurrent_tasks": _Rule("opt_int", _at_least_one),
}

_DEVICE_RULES: dict[str, _Rule] = {
    "device_id": _Rule("str", _identifier, required=True),
    "server_url": _Rule("str", _server_url, required=True),
    "os": _Rule("opt_str"),
    "capabilities": _Rule("str_tuple", _non_empty_items),
    "metadata": _Rule("mapping"),
    "max_retries": _Rule("int", _at_least_one),
    "auto_connect": _Rule("bool"),
    "token_env": _Rule("opt_str", _env_name),
    "ca_file": _Rule("opt_str", _non_empty),
}

_TOP_RULES: dict[str, _Rule] = {
    "local": _Rule("bool"),
    "manager": _Rule("mapping"),
    "devices": _Rule("mapping", required=True),  # only its name is used: the loader walks this list itself
}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _type_problem(kind: str, value: object) -> str | None:
    """Strict type check: no string-to-number, no bool-as-int, no number-as-string."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind in ("int", "opt_int"):
        ok = (value is None and kind == "opt_int") or (isinstance(value, int) and not isinstance(value, bool))
    elif kind in ("float", "opt_float"):
        ok = (value is None and kind == "opt_float") or (isinstance(value, int | float) and not isinstance(value, bool))
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "opt_str":
        ok = value is None or isinstance(value, str)
    elif kind == "str_tuple":
        ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
    else:  # mapping
        ok = isinstance(value, dict) and all(isinstance(key, str) for key in value)
        if isinstance(value, dict) and not ok:
            return "keys must be strings"
    return None if ok else f"expected {_KIND_NAMES[kind]}, got {_type_name(value)}"


def _field_problem(rule: _Rule, value: object) -> str | None:
    problem = _type_problem(rule.kind, value)
    if problem is None and rule.check is not None and value is not None:
        problem = rule.check(value)
    return problem


def _backoff_problem(reconnect_delay: float, backoff_cap: float) -> str | None:
    if backoff_cap < reconnect_delay:
        return f"must be >= reconnect_delay ({reconnect_delay}), got {backoff_cap}"
    return None


def _ca_file_problem(server_url: str, ca_file: str | None) -> str | None:
    # A CA bundle on a ws:// URL means someone expects TLS that will never happen: refuse rather than ignore.
    if ca_file is not None and not server_url.lower().startswith("wss:"):
        return "is only used with wss:// URLs, but server_url is not wss://"
    return None


def _struct_problems(struct: msgspec.Struct, rules: dict[str, _Rule], device: str | None = None) -> list[ConfigProblem]:
    """Problems of a Struct built in code (the loader already checked its own values, with lines).

    Also normalises what typing allows but the rules do not: an int duration becomes a float, a list a tuple.
    """
    problems = []
    for name, rule in rules.items():
        value = getattr(struct, name)
        if rule.kind == "str_tuple" and isinstance(value, list):
            value = tuple(value)
            msgspec.structs.force_setattr(struct, name, value)
        message = _field_problem(rule, value)
        if message is not None:
            problems.append(ConfigProblem(message=message, device=device, field=name))
        elif rule.kind in ("float", "opt_float") and isinstance(value, int):
            msgspec.structs.force_setattr(struct, name, float(value))
    return problems


# --- the settings -----------------------------------------------------------------------------------------------


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
        if _PRECHECKED.get():
            return
        problems = _struct_problems(self, _MANAGER_RULES)
        if not problems:
            message = _backoff_problem(self.reconnect_delay, self.backoff_cap)
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
        if _PRECHECKED.get():
            return
        label = self.device_id if isinstance(self.device_id, str) and self.device_id else None
        problems = _struct_problems(self, _DEVICE_RULES, label)
        if not problems:
            message = _ca_file_problem(self.server_url, self.ca_file)
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
        host = self.host
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def resolve_url(self, environ: Mapping[str, str] = _ENVIRON) -> str:
        """The URL to connect to: ``server_url`` if it carries ``?token=``, else with ``token_env``'s token added.

        Raises :class:`ConfigError` naming the device and the variable (never a value) when ``token_env`` is
        unset or empty. The result holds the token: never log it, log :attr:`display_url`.
        """
        if self.token_env is None or url_token(self.server_url) is not None:
            return self.server_url
        token = environ.get(self.token_env)
        if not token:
            state = "is not set" if token is None else "is empty"
            message = f"environment variable {self.token_env!r} {state}; it must hold this device's token"
            raise ConfigError([ConfigProblem(message=message, device=self.device_id, field="token_env")])
        return url_with_token(self.server_url, token)

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
    source: str = _STRING_SOURCE

    def __post_init__(self) -> None:
        if _PRECHECKED.get():
            return
        if isinstance(self.devices, list):
            msgspec.structs.force_setattr(self, "devices", tuple(self.devices))
        problems: list[ConfigProblem] = []
        if not isinstance(self.local, bool):
            problems.append(ConfigProblem(message=_type_problem("bool", self.local) or "", field="local"))
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
            elif device.device_id in seen:
                problems.append(
                    ConfigProblem(
                        message=f"duplicate device_id {device.device_id!r}",
                        device=device.device_id,
                        field=f"devices[{index}].device_id",
                    )
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


# --- loading ----------------------------------------------------------------------------------------------------

_DEFAULT_MANAGER = ManagerSettings()


def load_config(path: str | os.PathLike[str]) -> GalaxyConfig:
    """Load and validate a ``devices.yaml``; relative ``ca_file`` paths are taken from the file's directory.

    Raises :class:`ConfigError` listing every problem (missing or unreadable file, not UTF-8 text, YAML syntax,
    wrong types, unknown keys, invalid values); nothing is loaded from a bad file.
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(message="no such file", file=source)]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([ConfigProblem(message=f"cannot read file: {reason}", file=source)]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); is this a binary file?"
        raise ConfigError([ConfigProblem(message=message, file=source, line=line)]) from None
    return parse_config(text, source=source, base_dir=Path(source).absolute().parent)


def parse_config(
    text: str, *, source: str = _STRING_SOURCE, base_dir: str | os.PathLike[str] | None = None
) -> GalaxyConfig:
    """Validate YAML ``text`` (``source`` names it in problems).

    A relative ``ca_file`` is joined to ``base_dir`` and must exist there; with ``base_dir=None`` it is kept as
    written (relative to the working directory) and not checked.
    """
    return _Loader(source, None if base_dir is None else Path(base_dir)).load(text)


# YAML 1.1 allows these characters in a stream; anything else means a binary or corrupted file.
_NON_YAML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader:
    """One load: walks the composed node tree, collecting problems; builds the Structs only when there are none."""

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        self.yaml: yaml.SafeLoader | yaml.CSafeLoader | None = None

    def problem(self, line: int | None, message: str, *, field: str | None = None, device: str | None = None) -> None:
        self.problems.append(ConfigProblem(message=message, file=self.source, line=line, device=device, field=field))

    def fail(self) -> ConfigError:
        return ConfigError(sorted(self.problems, key=lambda p: p.line or 0))

    def load(self, text: str) -> GalaxyConfig:
        bad_char = _NON_YAML_CHAR.search(text)
        if bad_char is not None:
            line = text.count("\n", 0, bad_char.start()) + 1
            message = f"contains the non-text character U+{ord(bad_char.group()):04X}; is this a binary file?"
            self.problem(line, message)
            raise self.fail()
        self.yaml = _YamlLoader(text)
        gc_was_enabled = gc.isenabled()
        # The node tree is a few objects per scalar: left on, the cyclic GC rescans the growing tree over and
        # over and takes ~75% of the load time of a large fleet. Nothing here makes cycles worth collecting.
        gc.disable()
        try:
            try:
                root = self.yaml.get_single_node()
            except yaml.YAMLError as exc:
                error_line, error = _yaml_error(exc)
                if error_line is not None:  # libyaml puts end-of-stream errors one line past the end
                    error_line = min(error_line, text.count("\n") + 1)
                self.problem(error_line, error)
                raise self.fail() from None
            prechecked = _PRECHECKED.set(True)
            try:
                config = self.top(root)
            finally:
                _PRECHECKED.reset(prechecked)
        finally:
            self.yaml.dispose()
            if gc_was_enabled:
                gc.enable()
        if config is None:
            raise self.fail()
        return config

    # -- sections --

    def top(self, root: Node | None) -> GalaxyConfig | None:
        if root is None or (_is_null(root) and not root.value):  # nothing, or only "---"
            self.problem(None, "file is empty; expected a mapping with a 'devices' list")
            return None
        fields = self.mapping_fields(root, "top level", _TOP_RULES, None, None)
        if fields is None:
            return None
        local = self.value(fields, "local", _TOP_RULES["local"], "local", None, None)
        manager = self.manager(fields.get("manager"))
        devices = self.devices(fields.get("devices"), root)
        if self.problems:
            return None
        assert devices is not None and manager is not None
        return GalaxyConfig(
            devices=devices,
            manager=manager,
            local=bool(local),
            source=self.source,
        )

    def manager(self, entry: tuple[Node, Node] | None) -> ManagerSettings | None:
        if entry is None:
            return _DEFAULT_MANAGER
        key, node = entry
        if _is_null(node):
            return _DEFAULT_MANAGER
        fields = self.mapping_fields(node, "manager", _MANAGER_RULES, "manager", None)
        if fields is None:
            return None
        values: dict[str, Any] = {}
        before = len(self.problems)
        for name, rule in _MANAGER_RULES.items():
            value = self.value(fields, name, rule, f"manager.{name}", None, None)
            if value is not None:
                values[name] = value
        invalid = fields.keys() - values.keys()
        if not invalid & {"reconnect_delay", "backoff_cap"}:
            delay = values.get("reconnect_delay", _DEFAULT_MANAGER.reconnect_delay)
            cap = values.get("backoff_cap", _DEFAULT_MANAGER.backoff_cap)
            message = _backoff_problem(delay, cap)
            if message is not None:
                where = fields.get("backoff_cap") or fields.get("reconnect_delay") or (key, node)
                self.problem(_line(where[1]), message, field="manager.backoff_cap")
        if len(self.problems) != before:
            return None
        return ManagerSettings(**values)

    def devices(self, entry: tuple[Node, Node] | None, root: Node) -> tuple[DeviceConfig, ...] | None:
        if entry is None:
            self.problem(_line(root), "required field missing; list the devices to manage", field="devices")
            return None
        _, node = entry
        if not isinstance(node, SequenceNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"expected a list of devices, got {got}", field="devices")
            return None
        if not node.value:
            self.problem(_line(node), "must list at least one device", field="devices")
            return None
        devices: list[DeviceConfig] = []
        first_seen: dict[str, tuple[int, int]] = {}
        for index, item in enumerate(node.value):
            device = self.device(index, item, first_seen)
            if device is not None:
                devices.append(device)
        return tuple(devices) if len(devices) == len(node.value) else None

    def device(self, index: int, node: Node, first_seen: dict[str, tuple[int, int]]) -> DeviceConfig | None:
        path = f"devices[{index}]"
        if not isinstance(node, MappingNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"each device must be a mapping, got {got}", field=path, device=path)
            return None
        label: str = path
        for key, value_node in node.value:
            # Name the device by its id as early as possible, so every problem of this entry says which one.
            if key.value == "device_id" and isinstance(value_node, ScalarNode) and value_node.tag == _STR_TAG:
                if value_node.value:
                    label = value_node.value
        fields = self.mapping_fields(node, path, _DEVICE_RULES, path, label)
        if fields is None:
            return None
        before = len(self.problems)
        values: dict[str, Any] = {}
        owner_line = _line(node)
        for name, rule in _DEVICE_RULES.items():
            value = self.value(fields, name, rule, f"{path}.{name}", label, owner_line)
            if value is not None:
                values[name] = value
        device_id = values.get("device_id")
        if device_id is not None:  # a valid id: check it is unique even if other fields are wrong
            id_line = _line(fields["device_id"][1])
            if device_id in first_seen:
                other_index, other_line = first_seen[device_id]
                message = (
                    f"duplicate device_id {device_id!r}: already used by devices[{other_index}] at line {other_line}"
                )
                self.problem(id_line, message, field=f"{path}.device_id", device=label)
            else:
                first_seen[device_id] = (index, id_line)
        if len(self.problems) != before:
            return None
        ca_file = values.get("ca_file")
        ca_problem = _ca_file_problem(values["server_url"], ca_file)
        if ca_problem is not None:
            self.problem(_line(fields["ca_file"][1]), ca_problem, field=f"{path}.ca_file", device=label)
            return None
        if ca_file is not None and self.base_dir is not None:
            resolved = self.base_dir / ca_file
            if not resolved.is_file():
                message = f"no such file: {resolved}"
                self.problem(_line(fields["ca_file"][1]), message, field=f"{path}.ca_file", device=label)
                return None
            values["ca_file"] = str(resolved)
        return DeviceConfig(**values)

    # -- helpers --

    def mapping_fields(
        self, node: Node, what: str, rules: dict[str, _Rule], path: str | None, device: str | None
    ) -> dict[str, tuple[Node, Node]] | None:
        """``{key: (key_node, value_node)}`` of a mapping, reporting non-mappings, duplicate and unknown keys."""
        if not isinstance(node, MappingNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"{what} must be a mapping, got {got}", field=path, device=device)
            return None
        prefix = f"{path}." if path else ""
        own_keys: dict[str, Node] = {}
        has_merge = False
        for key, _ in node.value:
            if key.tag == _STR_TAG and isinstance(key, ScalarNode):
                first = own_keys.setdefault(key.value, key)
                if first is not key:
                    message = f"key given twice (first at line {_line(first)})"
                    self.problem(_line(key), message, field=prefix + key.value, device=device)
            elif key.tag == _MERGE_TAG:
                has_merge = True
        if has_merge:
            assert self.yaml is not None
            try:
                self.yaml.flatten_mapping(node)  # resolve YAML merge keys (<<: *defaults)
            except yaml.YAMLError as exc:
                self.problem(*_yaml_error(exc), field=path, device=device)
                return None
        fields: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _STR_TAG):
                self.problem(_line(key), f"keys must be field names, got {_node_kind(key)}", device=device, field=path)
            elif key.value not in rules:
                if rules is _TOP_RULES and key.value.startswith("x-"):
                    continue  # a place for YAML anchors (x-defaults: &defaults ...), as in docker compose files
                self.problem(_line(key), _unknown_field(key.value, rules), field=prefix + key.value, device=device)
            else:
                fields[key.value] = (key, value)  # later keys win, as in YAML merges
        return fields

    def value(
        self,
        fields: dict[str, tuple[Node, Node]],
        name: str,
        rule: _Rule,
        path: str,
        device: str | None,
        owner_line: int | None,
    ) -> Any:
        """The checked value of one field, or None when absent (use the default) or invalid (problem recorded)."""
        entry = fields.get(name)
        if entry is None:
            if rule.required:
                self.problem(owner_line, "required field missing", field=path, device=device)
            return None
        node = entry[1]
        if _is_null(node) and rule.kind.startswith("opt_"):
            return None
        if rule.kind == "str_tuple" and isinstance(node, SequenceNode):
            value: Any = self.string_list(node, path, device)
            if value is None:
                return None
        else:
            value = self.construct(node, path, device)
            if value is _INVALID:
                return None
        message = _field_problem(rule, value)
        if message is not None:
            self.problem(_line(node), message, field=path, device=device)
            return None
        if rule.kind in ("float", "opt_float"):
            return float(value)
        return value

    def string_list(self, node: SequenceNode, path: str, device: str | None) -> tuple[str, ...] | None:
        items: list[str] = []
        ok = True
        for index, item in enumerate(node.value):
            value = self.construct(item, f"{path}[{index}]", device)
            if value is _INVALID:
                ok = False
            elif not isinstance(value, str):
                message = f"expected a string, got {_type_name(value)}"
                self.problem(_line(item), message, field=f"{path}[{index}]", device=device)
                ok = False
            else:
                items.append(value)
        return tuple(items) if ok else None

    def construct(self, node: Node, path: str, device: str | None) -> Any:
        if isinstance(node, ScalarNode) and node.tag == _STR_TAG:
            return node.value  # the common case, without the constructor's bookkeeping
        assert self.yaml is not None
        try:
            return self.yaml.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # e.g. an unknown !tag, or a timestamp like 2025-13-45 that the constructor rejects with ValueError.
            if isinstance(exc, yaml.YAMLError):
                self.problem(*_yaml_error(exc), field=path, device=device)
            else:
                self.problem(_line(node), f"invalid value: {exc}", field=path, device=device)
            return _INVALID


_INVALID: Any = object()


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = str(node.tag).rpartition(":")[2] if str(node.tag).startswith("tag:yaml.org,2002:") else str(node.tag)
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}.get(kind, kind)


def _unknown_field(name: str, rules: dict[str, _Rule]) -> str:
    guess = difflib.get_close_matches(name, list(rules), n=1)
    if guess:
        return f"unknown field {name!r} (did you mean {guess[0]!r}?)"
    extension = " (or x-... for YAML anchors)" if rules is _TOP_RULES else ""
    return f"unknown field {name!r}; expected one of: {', '.join(rules)}{extension}"


def _yaml_error(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """Line and text of a YAML error, built from its parts: ``str(exc)`` may quote the source line (and a token)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else int(mark.line) + 1
        text = "; ".join(part for part in (exc.context, exc.problem) if part)
        return line, f"invalid YAML: {text or 'syntax error'}"
    return None, f"invalid YAML: {type(exc).__name__}"
