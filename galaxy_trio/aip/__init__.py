"""AIP, the JSON-over-WebSocket protocol of Microsoft UFO: messages, codec, frame builders and close codes.

The bottom layer of galaxy_trio: it imports nothing else of the package and does no I/O.
"""

from . import builders
from .close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
)
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
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
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
