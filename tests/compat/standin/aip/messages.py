"""Stand-in for UFO's aip.messages: TaskStatus (the status of UFO's ExecutionResult)."""

from enum import Enum


class TaskStatus(str, Enum):  # noqa: UP042 — as UFO declares it
    CONTINUE = "continue"
    COMPLETED = "completed"
    FAILED = "failed"
    OK = "ok"
    ERROR = "error"
