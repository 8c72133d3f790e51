"""UFO Galaxy's runtime file, ``config/galaxy/constellation.yaml``, as the settings of a run.

UFO reads these upper-case keys (its ``config/galaxy/constellation.yaml``); each maps to one of ours:

==========================  ================================================================================
``CONSTELLATION_ID``        ``task_name`` (client ids are ``<task_name>@<device_id>``)
``HEARTBEAT_INTERVAL``      ``heartbeat_interval``
``RECONNECT_DELAY``         ``reconnect_delay`` (our backoff's base: the first retry waits up to this long)
``MAX_CONCURRENT_TASKS``    ``max_concurrent_tasks`` (enforced across the manager, which UFO does not do)
``DEVICE_INFO``             the devices file; a relative path is taken from the *current directory*, as UFO
                            does (it opens the path as given, and is run from its repository's root)
``MAX_STEP``, ``LOG_TO_MARKDOWN``  UFO's session settings: accepted and not used (no sessions here)
==========================  ================================================================================

A setting given both here and in the devices file is an error naming both places, as everywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from .loading import MAX_CONFIG_BYTES, ConfigWalker, RunChecks, Setting, load_config, read_text
from .model import GalaxyConfig
from .rules import ConfigError, Rule, non_empty, type_name

__all__ = ["CONSTELLATION_KEYS", "load_constellation"]

#: UFO's key -> our manager setting.
CONSTELLATION_KEYS: dict[str, str] = {
    "CONSTELLATION_ID": "task_name",
    "HEARTBEAT_INTERVAL": "heartbeat_interval",
    "RECONNECT_DELAY": "reconnect_delay",
    "MAX_CONCURRENT_TASKS": "max_concurrent_tasks",
}
#: UFO keys of the same file that configure its LLM sessions, which galaxy_trio does not run.
IGNORED_KEYS = ("MAX_STEP", "LOG_TO_MARKDOWN")

_RULES: dict[str, Rule] = {
    **{key: Rule("any") for key in CONSTELLATION_KEYS},
    "DEVICE_INFO": Rule("str", non_empty),
    **{key: Rule("any") for key in IGNORED_KEYS},
}


def load_constellation(
    path: str | os.PathLike[str],
    devices: str | os.PathLike[str] | None = None,
    *,
    run: RunChecks | None = None,
    cwd: str | os.PathLike[str] | None = None,
    max_bytes: int = MAX_CONFIG_BYTES,
) -> GalaxyConfig:
    """Load UFO's ``constellation.yaml`` and the devices file it names (or ``devices``, when given).

    ``DEVICE_INFO`` relative to ``cwd`` (default: the current directory). Every problem of both files is
    reported at once, each naming its file and line.
    """
    source = os.fspath(path)
    loader = ConfigWalker(source, None)
    root = loader.compose(read_text(source, max_bytes), max_bytes)
    try:
        fields = None
        if root is None or (getattr(root, "tag", "").endswith(":null") and not root.value):
            loader.problem(None, "file is empty; expected UFO's constellation settings (DEVICE_INFO, ...)")
        else:
            fields = loader.mapping_fields(root, "top level", _RULES, None, None)
        settings: dict[str, Setting] = {}
        device_info: str | None = None
        for key, (_, node) in (fields or {}).items():
            value = loader.construct_value(node, _RULES[key], key, None)
            if key in CONSTELLATION_KEYS and value is not None:
                settings[CONSTELLATION_KEYS[key]] = Setting(value, source, node.start_mark.line + 1, key)
            elif key == "DEVICE_INFO":
                device_info = _device_info(loader, value, node.start_mark.line + 1)
    finally:
        loader.yaml.dispose()
    if devices is None and device_info is None and fields is not None and "DEVICE_INFO" not in fields:
        loader.problem(None, "DEVICE_INFO is missing: it names the devices file (e.g. config/galaxy/devices.yaml)")
    target = os.fspath(devices) if devices is not None else device_info
    if target is not None and devices is None:
        base = Path.cwd() if cwd is None else Path(cwd)
        if cwd is not None:
            target = str(base / target)
        if not (base / target).is_file():
            line = fields["DEVICE_INFO"][1].start_mark.line + 1 if fields else None
            message = (
                f"no such file: {base / target}; a relative DEVICE_INFO is taken from the current directory, as UFO"
                " does (run from UFO's root, give an absolute path, or pass the devices file as CONFIG)"
            )
            loader.problem(line, message, field="DEVICE_INFO")
            target = None
    problems = list(loader.problems)
    if target is not None:
        try:
            config = load_config(target, run=run, settings=settings, max_bytes=max_bytes)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            if not problems:
                return config
    raise ConfigError(sorted(problems, key=lambda p: (p.file != source, p.line or 0)))


def _device_info(loader: ConfigWalker, value: object, line: int) -> str | None:
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else type_name(value)
        loader.problem(line, f"expected the path of the devices file, got {got}", field="DEVICE_INFO")
        return None
    return value
