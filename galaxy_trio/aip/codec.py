"""Encoding and decoding of AIP frames.

One encoder and one decoder per message kind are built at import and reused: building a msgspec decoder is far
more expensive than using one. Every failure to decode (bad JSON, a wrong type, a missing required field, an unknown
enum value, a binary payload) raises :class:`AIPDecodeError`, whose message names the offending field path, so
callers handle one exception type whatever went wrong.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final

import msgspec

from .messages import ClientMessage, ServerMessage

__all__ = [
    "AIPDecodeError",
    "decode_client_message",
    "decode_server_message",
    "encode",
    "encode_text",
    "json_error",
    "new_id",
    "utc_timestamp",
]

_encoder: Final = msgspec.json.Encoder()
_client_decoder: Final = msgspec.json.Decoder(ClientMessage)
_server_decoder: Final = msgspec.json.Decoder(ServerMessage)

#: How much of a bad frame an error message may quote; enough to recognise it, never a whole payload.
_EXCERPT = 80


class AIPDecodeError(ValueError):
    """A frame that is not a valid AIP message.

    ``path`` is the JSON path of the offending field (``$.client_id``, ``$.action_results[0].status``) or ``$``
    when the frame as a whole is wrong (not JSON, not an object, binary, nested too deeply).
    """

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.path = path


def _raise_decode_error(kind: str, exc: msgspec.MsgspecError) -> AIPDecodeError:
    text = str(exc)
    path = "$"
    if isinstance(exc, msgspec.ValidationError) and " - at `" in text:
        text, _, tail = text.rpartition(" - at `")
        path = tail.rstrip("`")
    if len(text) > _EXCERPT * 2:
        text = text[: _EXCERPT * 2] + "…"
    return AIPDecodeError(f"invalid {kind} at {path}: {text}", path)


def _too_deep(kind: str) -> AIPDecodeError:
    # msgspec signals nesting deeper than the interpreter's recursion limit with RecursionError, not a
    # MsgspecError: without this, one frame of 1,000 nested arrays would escape every reader's error handling.
    return AIPDecodeError(f"invalid {kind} at $: JSON nested too deeply")


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Decode a client→server frame, leniently as UFO does (unknown keys ignored, defaults filled)."""
    try:
        return _client_decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise _raise_decode_error("ClientMessage", exc) from None
    except RecursionError:
        raise _too_deep("ClientMessage") from None


def decode_server_message(frame: str | bytes) -> ServerMessage:
    """Decode a server→client frame, leniently as UFO does (unknown keys ignored, defaults filled)."""
    try:
        return _server_decoder.decode(frame)
    except msgspec.MsgspecError as exc:
        raise _raise_decode_error("ServerMessage", exc) from None
    except RecursionError:
        raise _too_deep("ServerMessage") from None


def encode(message: ClientMessage | ServerMessage) -> bytes:
    """Encode compactly, every field present in wire order, exactly as UFO's serializer does."""
    return _encoder.encode(message)


def encode_text(message: ClientMessage | ServerMessage) -> str:
    """Encode for a WebSocket text frame (AIP never uses binary frames)."""
    return _encoder.encode(message).decode()


def json_error(value: object) -> str | None:
    """Why ``value`` cannot go on the wire as JSON, or None when it can.

    Every failure counts: an unsupported type, a non-string key, and a value that contains itself (msgspec then
    raises RecursionError, not an EncodeError) — a payload is checked before a frame is built, never while.
    """
    try:
        _encoder.encode(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" if isinstance(exc, RecursionError) else str(exc)
    return None


def new_id() -> str:
    """A fresh id in UFO's format: ``str(uuid4())``, 36 lower-case characters."""
    return str(uuid.uuid4())


def utc_timestamp() -> str:
    """The current time as UFO writes it: ``isoformat()`` of a UTC-aware datetime (``…+00:00``)."""
    return datetime.now(UTC).isoformat()
