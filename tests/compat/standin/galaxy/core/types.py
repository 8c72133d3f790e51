"""Stand-in for UFO's galaxy.core.types: ExecutionResult (dataclass)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class ExecutionResult:
    task_id: str
    status: Any
    result: Any | None = None
    error: Exception | str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None
