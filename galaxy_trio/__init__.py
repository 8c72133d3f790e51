"""galaxy_trio: device-fleet registration and control for multi-device agent systems, on trio.

A rewrite of the device layer of Microsoft UFO's Galaxy, wire-compatible with UFO (AIP). The public API:

- :class:`ConstellationDeviceManager` — registers devices and brings each one through the five phases
  (config → connect → register → telemetry → IDLE), keeps it there, and runs tasks on it;
- :func:`load_config` and the config Structs — phase 1, ``devices.yaml``;
- :mod:`galaxy_trio.server` (``serve_aip``) and :mod:`galaxy_trio.agent` (``DeviceAgent``) — the device side;
- :mod:`galaxy_trio.aip` — the protocol: messages, codec, frame builders.
"""

from .config import ConfigError, ConfigProblem, DeviceConfig, GalaxyConfig, ManagerSettings, load_config, parse_config
from .errors import ConnectFailed, GalaxyTrioError, HandshakeRejected, LinkClosed, LinkError
from .manager import (
    AgentProfile,
    ConstellationDeviceManager,
    DeviceAlreadyRegistered,
    DeviceEvent,
    DeviceNotConnected,
    DeviceState,
    DeviceStatus,
    DuplicateTaskId,
    EventKind,
    EventSubscription,
    IllegalTransition,
    RegistrationRejected,
    TaskQueueFull,
    TaskRefused,
    TaskResult,
    TaskTimings,
    UnknownDevice,
)

__version__ = "0.1.0"

__all__ = [
    "AgentProfile",
    "ConfigError",
    "ConfigProblem",
    "ConnectFailed",
    "ConstellationDeviceManager",
    "DeviceAlreadyRegistered",
    "DeviceConfig",
    "DeviceEvent",
    "DeviceNotConnected",
    "DeviceState",
    "DeviceStatus",
    "DuplicateTaskId",
    "EventKind",
    "EventSubscription",
    "GalaxyConfig",
    "GalaxyTrioError",
    "HandshakeRejected",
    "IllegalTransition",
    "LinkClosed",
    "LinkError",
    "ManagerSettings",
    "RegistrationRejected",
    "TaskQueueFull",
    "TaskRefused",
    "TaskResult",
    "TaskTimings",
    "UnknownDevice",
    "__version__",
    "load_config",
    "parse_config",
]
