"""AIP, the JSON-over-WebSocket protocol of Microsoft UFO: messages, codec and frame builders.

The bottom layer of galaxy_trio: it imports nothing else of the package and does no I/O.
"""

from . import builders
from .codec import (
    AIPDecodeError,
    decode_client_message,
    decode_server_message,
    encode,
    encode_text,
    json_error,
    new_id,
    utc_timestamp,
)
from .messages import (
    ClientMessage,
    ClientMessageType,
    ClientType,
    Command,
    Result,
    ResultStatus,
    ServerMessage,
    ServerMessageType,
    TaskStatus,
    ToolType,
)

__all__ = [
    "AIPDecodeError",
    "ClientMessage",
    "ClientMessageType",
    "ClientType",
    "Command",
    "Result",
    "ResultStatus",
    "ServerMessage",
    "ServerMessageType",
    "TaskStatus",
    "ToolType",
    "builders",
    "decode_client_message",
    "decode_server_message",
    "encode",
    "encode_text",
    "json_error",
    "new_id",
    "utc_timestamp",
]
