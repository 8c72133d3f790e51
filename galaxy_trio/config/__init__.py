"""Phase 1: loading and validating ``devices.yaml`` into frozen, always-valid settings.

The package has three parts, each a module:

- :mod:`.rules`: the field rules, pure functions from a value to what is wrong with it, plus the rules for
  running a config (local mode's servable URLs, a set ``token_env``); :class:`ConfigProblem`, :class:`ConfigError`.
- :mod:`.model`: the msgspec Structs (:class:`ManagerSettings`, :class:`DeviceConfig`, :class:`GalaxyConfig`),
  which apply the rules in ``__post_init__`` however they are built: the one validation path.
- :mod:`.loading`: the bounded YAML loader (:func:`load_config`, :func:`parse_config`), which maps every problem to
  its file and line; :mod:`.constellation` reads UFO Galaxy's ``constellation.yaml``.
"""

from __future__ import annotations

from .constellation import load_constellation
from .loading import MAX_ALIAS_NODES, MAX_CONFIG_BYTES, RunChecks, Setting, load_config, parse_config
from .model import DeviceConfig, GalaxyConfig, ManagerSettings
from .rules import ConfigError, ConfigProblem

__all__ = [
    "MAX_ALIAS_NODES",
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "ConfigProblem",
    "DeviceConfig",
    "GalaxyConfig",
    "ManagerSettings",
    "RunChecks",
    "Setting",
    "load_config",
    "load_constellation",
    "parse_config",
]
