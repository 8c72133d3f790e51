"""The field rules: pure functions from a value to what is wrong with it (``None`` when nothing is).

Everything that decides whether a setting is valid lives here, once: the Structs of :mod:`.model` call these
rules in their ``__post_init__`` (the one validation path, whoever builds them), and the YAML loader of
:mod:`.loading` only maps the problems they report back to lines. The rules for *running* a config (local mode's
servable URLs, a set ``token_env``) are here too, so that ``check`` and ``run`` refuse with the same words.

No YAML, no I/O: a rule sees values, never a file. Messages never quote a URL (it may hold a token).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec

from galaxy_trio.errors import GalaxyTrioError
from galaxy_trio.redact import redact_url, url_token

__all__ = ["ConfigError", "ConfigProblem"]

_INDEX_LABEL = re.compile(r"devices\[\d+\]")


class ConfigProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a configuration; ``str()`` gives ``file:line: device 'x': field: message``.

    ``device`` is the device's id, or ``devices[i]`` when the entry has no usable id; ``field`` is dotted from the
    top of the file (``devices[1].server_url``, ``manager.heartbeat_interval``). ``column`` (1-based) is set for
    YAML syntax errors, where the line alone does not say where to look. Messages never contain a token.
    """

    message: str
    file: str | None = None
    line: int | None = None
    device: str | None = None
    field: str | None = None
    column: int | None = None

    def __str__(self) -> str:
        parts: list[str] = []
        where = "" if self.line is None else str(self.line)
        if where and self.column is not None:
            where = f"{where}:{self.column}"
        if self.file is not None:
            parts.append(f"{self.file}:{where}" if where else self.file)
        elif where:
            parts.append(f"line {where}")
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


# --- one value at a time ----------------------------------------------------------------------------------------


def positive_seconds(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    if value <= 0:
        return f"must be a positive number of seconds, got {value}"
    return None


def non_negative_seconds(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number of seconds, got {value}"
    if value < 0:
        return f"must be >= 0 seconds (0 disables it), got {value}"
    return None


def at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value}"


def identifier(value: str) -> str | None:
    """Task names and device ids: they form client ids ``<task_name>@<device_id>``, so no '@'."""
    if not value:
        return "must not be empty"
    if "@" in value:
        return f"must not contain '@' (it joins client ids '<task_name>@<device_id>'), got {value!r}"
    if value != value.strip():
        return f"must not start or end with whitespace, got {value!r}"
    return None


def non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def non_empty_items(value: tuple[str, ...]) -> str | None:
    return "entries must not be empty" if any(not item for item in value) else None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_name(value: str) -> str | None:
    if _ENV_NAME.fullmatch(value):
        return None
    return f"must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got {value!r}"


_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def server_url(url: str) -> str | None:
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
    # The port as urlsplit reads it (all after the first ']' of an IPv6 host, then after the first ':'): a port
    # it cannot read would raise out of DeviceConfig.port, after the file was accepted.
    _, bracket, after_host = parts.netloc.partition("]")
    port_text = after_host if bracket else parts.netloc
    if ":" in port_text:
        port_text = port_text.partition(":")[2]
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


# --- rules by field -------------------------------------------------------------------------------------------


class Rule(NamedTuple):
    """How one field is typed and checked. ``kind`` is one of the keys of :data:`KIND_NAMES`."""

    kind: str
    check: Callable[[Any], str | None] | None = None
    required: bool = False


KIND_NAMES = {
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

MANAGER_RULES: dict[str, Rule] = {
    "task_name": Rule("str", identifier),
    "heartbeat_interval": Rule("float", positive_seconds),
    "heartbeat_timeout": Rule("float", positive_seconds),
    "reconnect_delay": Rule("float", positive_seconds),
    "backoff_cap": Rule("float", positive_seconds),
    "connect_timeout": Rule("float", positive_seconds),
    "register_timeout": Rule("float", positive_seconds),
    "telemetry_timeout": Rule("float", positive_seconds),
    "task_timeout": Rule("float", positive_seconds),
    "task_queue_size": Rule("int", at_least_one),
    "event_buffer": Rule("int", at_least_one),
    "failed_retry_interval": Rule("opt_float", non_negative_seconds),
    "max_concurrent_tasks": Rule("opt_int", at_least_one),
}

DEVICE_RULES: dict[str, Rule] = {
    "device_id": Rule("str", identifier, required=True),
    "server_url": Rule("str", server_url, required=True),
    "os": Rule("opt_str"),
    "capabilities": Rule("str_tuple", non_empty_items),
    "metadata": Rule("mapping"),
    "max_retries": Rule("int", at_least_one),
    "auto_connect": Rule("bool"),
    "token_env": Rule("opt_str", env_name),
    "ca_file": Rule("opt_str", non_empty),
}

#: UFO Galaxy's ``devices.yaml`` may set these at the top level, beside ``devices:`` (its
#: ``ConstellationConfig.from_yaml`` reads them there); each is the manager setting of the same name.
UFO_TOP_LEVEL_SETTINGS: tuple[str, ...] = ("task_name", "heartbeat_interval", "reconnect_delay", "max_concurrent_tasks")

TOP_RULES: dict[str, Rule] = {
    "local": Rule("bool"),
    "manager": Rule("mapping"),
    "devices": Rule("mapping", required=True),  # only its name is used: the loader walks this list itself
    **{name: MANAGER_RULES[name] for name in UFO_TOP_LEVEL_SETTINGS},
}


def type_name(value: object) -> str:
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


def type_problem(kind: str, value: object) -> str | None:
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
    return None if ok else f"expected {KIND_NAMES[kind]}, got {type_name(value)}"


def field_problem(rule: Rule, value: object) -> str | None:
    problem = type_problem(rule.kind, value)
    if problem is None and rule.check is not None and value is not None:
        problem = rule.check(value)
    return problem


def backoff_problem(reconnect_delay: float, backoff_cap: float) -> str | None:
    if backoff_cap < reconnect_delay:
        return f"must be >= reconnect_delay ({reconnect_delay}), got {backoff_cap}"
    return None


def ca_file_problem(url: str, ca_file: str | None) -> str | None:
    # A CA bundle on a ws:// URL means someone expects TLS that will never happen: refuse rather than ignore.
    if ca_file is not None and not url.lower().startswith("wss:"):
        return "is only used with wss:// URLs, but server_url is not wss://"
    return None


def duplicate_id_problem(device_id: str, first_index: int, first_line: int | None = None) -> str:
    where = f" at line {first_line}" if first_line is not None else ""
    return f"duplicate device_id {device_id!r}: already used by devices[{first_index}]{where}"


# --- what running a config needs beyond a valid file -----------------------------------------------------------

#: The only path local mode's servers answer on (as galaxy_trio's and UFO's servers do).
LOCAL_PATH = "/ws"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: the hosts local mode can serve."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_mode_problem(url: str) -> str | None:
    """Why local mode cannot serve ``url`` (a valid ``server_url``), or None."""
    parts = urlsplit(url)
    if not is_loopback_host(parts.hostname or ""):
        return (
            f"{redact_url(url)} is not a loopback address; local mode only starts servers on this machine"
            " (localhost, 127.0.0.1, ::1): run without --local and without 'local: true' to connect to servers"
            " that already run"
        )
    if parts.scheme != "ws":
        return f"local mode serves plain ws://, not {parts.scheme}://"
    if parts.path != LOCAL_PATH:
        return (
            f"local mode serves AIP on the path {LOCAL_PATH} only, got {parts.path!r}; the device agent would"
            f" be refused with HTTP 404 for ever: use ws://HOST:PORT{LOCAL_PATH}"
        )
    return None


def _addresses(host: str) -> frozenset[str]:
    """The loopback addresses a host spelling stands for (``localhost`` is both 127.0.0.1 and ::1)."""
    if host.lower() == "localhost":
        return frozenset({"127.0.0.1", "::1"})
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        return frozenset({host.lower()})


class Endpoint(NamedTuple):
    """Where one device's server listens, as written: for :func:`spelling_problems`."""

    device_id: str
    host: str
    port: int


def spelling_problems(endpoints: Iterable[Endpoint]) -> dict[int, str]:
    """Local mode: devices whose servers would be one listener written two ways (``127.0.0.1`` / ``localhost``).

    Local mode starts one server per distinct host and port as written; two spellings of one address on one
    port would make the second server fail with "address already in use". Returns ``{index: message}`` for each
    endpoint (by position) that clashes with an earlier one.
    """
    first: dict[tuple[int, str], Endpoint] = {}
    problems: dict[int, str] = {}
    for index, endpoint in enumerate(endpoints):
        clash = None
        for address in _addresses(endpoint.host):
            other = first.get((endpoint.port, address))
            if other is not None and other.host != endpoint.host:
                clash = other
                break
        if clash is not None:
            problems[index] = (
                f"host {endpoint.host!r} and {clash.host!r} (device {clash.device_id!r}) are the same address on"
                f" port {endpoint.port}; local mode starts one server per host and port as written, so spell the"
                " host the same way for both"
            )
            continue
        for address in _addresses(endpoint.host):
            first.setdefault((endpoint.port, address), endpoint)
    return problems


def token_env_problem(token_env: str, environ: Mapping[str, str]) -> str | None:
    """Why ``token_env`` cannot give a token now (unset or empty), or None. Never shows the value."""
    token = environ.get(token_env)
    if token:
        return None
    state = "is not set" if token is None else "is empty"
    return f"environment variable {token_env!r} {state}; it must hold this device's token"
