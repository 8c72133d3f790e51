"""Stand-in for UFO's galaxy.core.events: EventType, DeviceEvent, and the global bus (publish_event awaits every
observer's on_event)."""

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Any


class EventType(Enum):
    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    DEVICE_CONNECTED = "device_connected"
    DEVICE_DISCONNECTED = "device_disconnected"
    DEVICE_STATUS_CHANGED = "device_status_changed"


@dataclass
class Event:
    event_type: EventType
    source_id: str
    timestamp: float
    data: dict[str, Any]


@dataclass
class DeviceEvent(Event):
    device_id: str
    device_status: str
    device_info: dict[str, Any]
    all_devices: dict[str, dict[str, Any]]


class EventBus:
    def __init__(self) -> None:
        self.observers: list[Any] = []

    def subscribe(self, observer: Any, event_types: Any = None) -> None:
        self.observers.append(observer)

    def unsubscribe(self, observer: Any) -> None:
        self.observers.remove(observer)

    async def publish_event(self, event: Event) -> None:
        await asyncio.gather(*(o.on_event(event) for o in self.observers), return_exceptions=True)


_event_bus = EventBus()


def get_event_bus() -> EventBus:
    return _event_bus
