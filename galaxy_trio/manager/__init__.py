"""The constellation side: ConstellationDeviceManager and the five phases it drives.

Phase by file: 1 ``galaxy_trio/config/`` (YAML → DeviceConfig), 2 ``connect.py``, 3 ``register.py``,
4 ``telemetry.py``, 5 ``activate.py``; ``device_manager.py`` runs them per device, ``tasks.py`` runs tasks,
``state.py`` is the :class:`DeviceState` snapshot.
"""

from .device_manager import ConstellationDeviceManager, DeviceAlreadyRegistered, UnknownDevice
from .events import DeviceEvent, EventKind, EventSubscription
from .profile import AgentProfile, DeviceStatus, IllegalTransition
from .register import RegistrationRejected
from .state import DeviceState
from .tasks import DeviceNotConnected, DuplicateTaskId, TaskQueueFull, TaskRefused, TaskResult, TaskTimings
from .telemetry import merge_system_info

__all__ = [
    "AgentProfile",
    "ConstellationDeviceManager",
    "DeviceAlreadyRegistered",
    "DeviceEvent",
    "DeviceNotConnected",
    "DeviceState",
    "DeviceStatus",
    "DuplicateTaskId",
    "EventKind",
    "EventSubscription",
    "IllegalTransition",
    "RegistrationRejected",
    "TaskQueueFull",
    "TaskRefused",
    "TaskResult",
    "TaskTimings",
    "UnknownDevice",
    "merge_system_info",
]
