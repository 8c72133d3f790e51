"""Failure reasons, as the manager words them, sorted into a few classes for metrics (free of I/O).

Prometheus labels must have few values: the full reason stays in the device's ``failure_reason`` and in the
events; the metric counts the class.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STOP_REASONS", "reason_class"]

#: Reasons for a DISCONNECTED that is a request, not a failure.
STOP_REASONS: Final = frozenset({"disconnected by request", "manager closed"})

_CLASSES: Final = (
    ("timeout", ("timed out", "timeout")),
    ("auth", ("HTTP 401", "HTTP 403")),
    ("not_found", ("HTTP 404",)),
    ("duplicate", ("already registered",)),
    ("device_offline", ("is not connected",)),
    ("refused", ("refused", "all attempts to connect")),
    ("rejected", ("reject",)),
    ("heartbeat", ("heartbeat",)),
    ("tls", ("certificate", "SSL", "TLS")),
)


def reason_class(reason: str | None) -> str:
    """The class of a failure reason (``timeout``, ``auth``, ``refused``, ``device_offline``…, else ``other``).

    A give-up verdict ("gave up after N …; last: R") is classed by its last attempt's reason R.
    """
    if not reason:
        return "other"
    _, sep, last = reason.partition("; last: ")
    text = last if sep else reason
    for name, needles in _CLASSES:
        if any(needle in text for needle in needles):
            return name
    if "closed" in text or "lost" in text or "reset" in text:
        return "link_lost"
    return "other"
