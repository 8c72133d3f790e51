"""Stand-in for UFO's galaxy.client.components.types: DeviceStatus (Enum) and AgentProfile (dataclass)."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any


class DeviceStatus(Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    REGISTERING = "registering"
    BUSY = "busy"
    IDLE = "idle"


@dataclass
class AgentProfile:
    device_id: str
    server_url: str
    os: str | None = None
    capabilities: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    status: DeviceStatus = DeviceStatus.DISCONNECTED
    last_heartbeat: datetime | None = None
    connection_attempts: int = 0
    max_retries: int = 5
    current_task_id: str | None = None
