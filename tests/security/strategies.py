"""Hypothesis strategies for bad AIP input, grown from UFO's recorded frames.

A :class:`Payload` is one WebSocket frame a hostile or broken peer could send: random text or JSON, a recorded
frame mutated (keys dropped or renamed, values of the wrong type, enum values that do not exist, nested shapes
broken, the JSON truncated, garbage inserted, a key duplicated), a valid frame with a ~900 KB string, a frame nested
thousands of levels deep, a binary frame, or a frame over the 1 MiB bound. Large payloads are built from a few
drawn numbers, so Hypothesis stores and shrinks small choices, never megabytes.
"""

from __future__ import annotations

import json
from typing import Any, Final

from hypothesis import strategies as st

from galaxy_trio.aip import AIPDecodeError, ClientMessage, ServerMessage, decode_client_message, decode_server_message
from galaxy_trio.transport import DEFAULT_MAX_FRAME

from .. import frames

__all__ = [
    "CLIENT_FRAMES",
    "KINDS",
    "MAX_FRAME",
    "SERVER_FRAMES",
    "Payload",
    "bad_frames",
    "deeply_nested",
    "json_values",
]

#: The bound every peer applies to one incoming frame. trio-websocket counts a text frame in characters.
MAX_FRAME: Final = DEFAULT_MAX_FRAME

CLIENT_FRAMES: Final = tuple(str(f["raw"]) for f in frames.all_frames() if f["dir"] == "C->S")
SERVER_FRAMES: Final = tuple(str(f["raw"]) for f in frames.all_frames() if f["dir"] == "S->C")

_ENUM_KEYS: Final = ("type", "status", "client_type")
#: Values that look like AIP enum values but are not (wrong case, the other side's types, Python member names).
_WRONG_ENUMS: Final = (
    "REGISTER",
    "Heartbeat",
    "OK",
    "task-end",
    "command",
    "device_info",
    "ClientMessageType.TASK",
    "server",
    "",
    " ok",
)
KINDS: Final = ("random text", "random JSON", "mutated", "huge string", "deep nesting", "binary", "oversized")
_TEXT_FIELDS: Final = ("client_id", "session_id", "task_name", "request", "error", "target_id", "request_id")


class Payload:
    """One frame to send: ``str`` goes out as a text frame, ``bytes`` as a binary frame. ``kind`` is one of
    :data:`KINDS`; ``label`` says more (which mutations, which field, how deep)."""

    __slots__ = ("data", "kind", "label")

    def __init__(self, kind: str, data: str | bytes, label: str) -> None:
        self.kind = kind
        self.data = data
        self.label = label

    @property
    def binary(self) -> bool:
        return isinstance(self.data, bytes)

    @property
    def oversized(self) -> bool:
        return len(self.data) > MAX_FRAME

    def __repr__(self) -> str:  # Hypothesis prints failing examples: never a megabyte of them
        head = self.data[:60]
        return f"Payload({self.kind}: {self.label}, {len(self.data)} {'bytes' if self.binary else 'chars'}, {head!r}…)"

    def client_message(self) -> ClientMessage | None:
        """The frame as our server will read it, or None if it is not a valid ClientMessage (or not text)."""
        if isinstance(self.data, bytes) or self.oversized:
            return None
        try:
            return decode_client_message(self.data)
        except AIPDecodeError:
            return None

    def server_message(self) -> ServerMessage | None:
        """The frame as our manager will read it, or None if it is not a valid ServerMessage (or not text)."""
        if isinstance(self.data, bytes) or self.oversized:
            return None
        try:
            return decode_server_message(self.data)
        except AIPDecodeError:
            return None


_finite = st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither NaN nor infinities
_scalars = st.none() | st.booleans() | st.integers() | _finite | st.text(max_size=16)
json_values: Final = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def deeply_nested(depth: int, *, objects: bool) -> str:
    """JSON text nested ``depth`` levels deep: ``[[[…]]]`` or ``{"a":{"a":…1}}``."""
    if objects:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


def _dump(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only, separators=(",", ":"))


def _recorded(draw: st.DrawFn, pool: tuple[str, ...]) -> dict[str, Any]:
    """One recorded frame, parsed. Drawn by index, so a failing example prints a number, not the whole pool."""
    frame: dict[str, Any] = json.loads(pool[draw(st.integers(0, len(pool) - 1))])
    return frame


@st.composite
def _mutated(draw: st.DrawFn, pool: tuple[str, ...]) -> Payload:
    obj = _recorded(draw, pool)
    applied = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("drop", "rename", "retype", "enum", "nested")))
        applied.append(op)
        keys = list(obj)
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if op == "drop":
            del obj[key]
        elif op == "rename":
            obj[draw(st.text(min_size=1, max_size=12))] = obj.pop(key)
        elif op == "retype":
            obj[key] = draw(json_values)
        elif op == "enum":
            obj[draw(st.sampled_from(_ENUM_KEYS))] = draw(st.sampled_from(_WRONG_ENUMS) | st.text(max_size=10))
        else:  # break a nested shape: a Command, a Result, or a free-form object
            nested_key = draw(st.sampled_from(("actions", "action_results", "metadata", "result")))
            obj[nested_key] = draw(
                st.lists(st.dictionaries(st.sampled_from(("tool_name", "tool_type", "status", "call_id")), json_values))
                | json_values
            )
    text = _dump(obj, draw(st.booleans()))
    edit = draw(st.sampled_from(("none", "truncate", "garbage", "duplicate_key")))
    applied.append(edit)
    if edit == "truncate" and len(text) > 1:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif edit == "garbage":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=8)) + text[at:]
    elif edit == "duplicate_key" and text.startswith("{"):
        key = draw(st.sampled_from(_ENUM_KEYS))
        text = "{" + _dump(key, True) + ":" + _dump(draw(json_values), True) + "," + text[1:]
    return Payload("mutated", text, "+".join(applied))


@st.composite
def _huge_string(draw: st.DrawFn, pool: tuple[str, ...]) -> Payload:
    """A recorded frame with one field (or a metadata value) ~900 KB long, still under the frame bound."""
    obj = _recorded(draw, pool)
    size = draw(st.integers(800_000, 1_000_000))
    filler = draw(st.sampled_from('xé"\\\n')) * 1 + "y" * (size - 1)
    key = draw(st.sampled_from((*_TEXT_FIELDS, "metadata")))
    obj[key] = {"blob": filler} if key == "metadata" else filler
    text = _dump(obj, False)
    assert len(text) <= MAX_FRAME
    return Payload("huge string", text, f"in {key}")


@st.composite
def _deep(draw: st.DrawFn, pool: tuple[str, ...]) -> Payload:
    """A recorded frame whose free-form object holds JSON nested hundreds to tens of thousands of levels deep."""
    obj = _recorded(draw, pool)
    depth = draw(st.sampled_from((100, 900, 1000, 5000, 10_000, 50_000)) | st.integers(1, 20_000))
    nested = deeply_nested(depth, objects=draw(st.booleans()))
    key = "metadata" if "metadata" in obj else "result"
    obj[key] = "__NESTED__"
    text = _dump(obj, True).replace('"__NESTED__"', '{"x":' + nested + "}", 1)
    return Payload("deep nesting", text, f"{depth} levels in {key}")


@st.composite
def _binary(draw: st.DrawFn, pool: tuple[str, ...]) -> Payload:
    if draw(st.booleans()):
        return Payload("binary", draw(st.binary(max_size=64)), "random bytes")
    return Payload("binary", _dump(_recorded(draw, pool), False).encode(), "a recorded frame as bytes")


@st.composite
def _oversized(draw: st.DrawFn, pool: tuple[str, ...]) -> Payload:
    extra = draw(st.integers(1, 200_000))
    if draw(st.integers(0, 3)) == 0:
        return Payload("oversized", b"\x00" * (MAX_FRAME + extra), "binary")
    obj = _recorded(draw, pool)
    obj["metadata" if "metadata" in obj else "result"] = {"pad": ""}
    skeleton = _dump(obj, True)
    text = skeleton.replace('"pad":""', '"pad":"' + "z" * (MAX_FRAME + extra - len(skeleton)) + '"', 1)
    assert len(text) == MAX_FRAME + extra
    return Payload("oversized", text, "text")


def _random_text() -> st.SearchStrategy[Payload]:
    return st.text(max_size=300).map(lambda text: Payload("random text", text, "any characters"))


def _random_json() -> st.SearchStrategy[Payload]:
    return json_values.map(lambda value: Payload("random JSON", _dump(value, False), "any value"))


def bad_frames(direction: str, *, with_link_killers: bool = True) -> st.SearchStrategy[Payload]:
    """Frames a hostile peer sends in ``direction`` (``"C->S"`` towards our server, ``"S->C"`` towards our
    manager). ``with_link_killers=False`` leaves out binary and oversized frames (those end the link)."""
    pool = CLIENT_FRAMES if direction == "C->S" else SERVER_FRAMES
    choices = [_random_text(), _random_json(), _mutated(pool), _mutated(pool), _huge_string(pool), _deep(pool)]
    if with_link_killers:
        choices += [_binary(pool), _oversized(pool)]
    return st.one_of(choices)
