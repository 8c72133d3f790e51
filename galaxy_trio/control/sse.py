"""Server-Sent Events framing (the ``text/event-stream`` format), free of I/O."""

from __future__ import annotations

__all__ = ["comment", "frame"]


def frame(event: str, data: bytes, event_id: int | None = None) -> bytes:
    """One SSE message. ``data`` is one line of JSON (msgspec never emits a raw newline), so one ``data:`` field."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("SSE data must be a single line")
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps idle connections (and proxies) from timing out."""
    return f": {text}\n\n".encode()
