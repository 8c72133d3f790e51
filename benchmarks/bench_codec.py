"""How fast galaxy_trio's AIP codec decodes and encodes real frames, against UFO's pydantic v2 models.

Usage: ``python benchmarks/bench_codec.py [--iterations N] [--repeats R] [--warmup W] [--out FILE]``

Every AIP frame a peer sends or receives goes through one decode or one encode, so the codec's cost is paid per
message, per device. UFO does this with pydantic v2 (``model_validate_json`` / ``model_dump_json``); we use
msgspec Structs. The target is a codec at least 5x faster than pydantic v2 on every frame, for both directions.
UFO's own measurement on the 683-byte device REGISTER is decode 5.8 µs, encode 4.5 µs.

Method (as ``timeit`` does it): each measurement calls one function ``iterations`` times in a tight loop timed with
``time.perf_counter_ns`` with the garbage collector off, after a warm-up; this is repeated ``repeats`` times and
the median per-call time is reported. Both implementations are timed in the same process and the same run, each
repeat alternating which goes first, so drift on a noisy machine hits both alike. Frames are decoded from ``str``,
as a WebSocket text frame arrives; ``encode`` returns ``bytes`` and ``model_dump_json`` a ``str``, so the
``str``-returning ``encode_text`` (what ``Link.send`` uses) is timed too.

Each frame with a free-form payload (``metadata`` of a client frame, ``result`` of a server frame) is also timed
in two halves: the typed envelope (payload set to null) and the payload alone (decoded untyped by msgspec,
``TypeAdapter(Any)`` by pydantic). Both libraries build the same plain dicts and strings from a payload, so its
share of a frame bounds the ratio the whole frame can reach (``split`` in the JSON).

Before timing, both implementations must round-trip every frame byte-identically (PROTOCOL §3). If galaxy_trio's
codec does not, the script stops with exit status 1; if pydantic does not, the mismatch is printed and marked in the
table and JSON, and the pydantic figures are still given. Timings never affect the exit status.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import msgspec
import pydantic
import pydantic_models

from galaxy_trio.aip import (
    ClientMessage,
    ServerMessage,
    decode_client_message,
    decode_server_message,
    encode,
    encode_text,
)

#: The goal: galaxy_trio at least this many times faster than pydantic v2, on every frame, both directions.
TARGET_RATIO = 5.0
#: UFO's figures for the device REGISTER (683 bytes) with pydantic v2, in µs per operation.
UFO_REFERENCE = {"frame": "device REGISTER", "bytes": 683, "decode_us": 5.8, "encode_us": 4.5}


@dataclass(frozen=True, slots=True)
class Case:
    """A frame to benchmark: a short name for the table and where it was recorded."""

    name: str
    scenario: str
    step: int


CASES = (
    Case("device REGISTER", "device_registration", 1),  # the real UFO device client's, 683 bytes
    Case("constellation REGISTER", "constellation_registration", 1),
    Case("DEVICE_INFO response", "device_info", 4),
    Case("TASK", "task_roundtrip", 3),
    Case("TASK_END", "task_roundtrip", 11),
)

Op = Callable[[Any], object]
Decoder = Callable[[str], ClientMessage | ServerMessage]


class RoundTripError(Exception):
    """galaxy_trio's codec did not give a golden frame back byte for byte: timing it would measure a broken codec."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """One frame with the callables and arguments for both implementations, checked to round-trip."""

    case: Case
    frame: _common.Frame
    ours_decode: Decoder
    ours_message: ClientMessage | ServerMessage
    theirs_decode: Op
    theirs_encode: Op
    theirs_model: pydantic.BaseModel
    theirs_mismatch: str | None  # why pydantic's re-encoding differs from the frame, or None if identical


def _first_difference(expected: str, got: str) -> str:
    index = next(
        (i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got))
    )
    return (
        f"{len(got)} chars instead of {len(expected)}; first difference at char {index}: "
        f"expected {expected[index : index + 40]!r}, got {got[index : index + 40]!r}"
    )


def prepare(case: Case, frames: Path) -> Prepared:
    """Load a frame and check both round trips. Raises RoundTripError if galaxy_trio's codec is not byte-exact."""
    frame = _common.load_frame(case.scenario, case.step, directory=frames)
    if frame.direction == "C->S":
        ours_decode: Decoder = decode_client_message
        model_type: type[pydantic.BaseModel] = pydantic_models.ClientMessage
    else:
        ours_decode = decode_server_message
        model_type = pydantic_models.ServerMessage

    message = ours_decode(frame.raw)
    if encode(message) != frame.raw.encode() or encode_text(message) != frame.raw:
        raise RoundTripError(f"galaxy_trio's codec does not re-encode {frame.source} byte-identically")

    model = model_type.model_validate_json(frame.raw)
    dumped = model.model_dump_json()
    mismatch = None if dumped == frame.raw else _first_difference(frame.raw, dumped)
    return Prepared(
        case=case,
        frame=frame,
        ours_decode=ours_decode,
        ours_message=message,
        theirs_decode=model_type.model_validate_json,
        theirs_encode=model_type.model_dump_json,
        theirs_model=model,
        theirs_mismatch=mismatch,
    )


def _loop_ns(op: Op, arg: object, iterations: int) -> int:
    """Wall time of ``iterations`` calls of ``op(arg)``, with as little loop overhead as Python allows."""
    loop = itertools.repeat(None, iterations)
    start = time.perf_counter_ns()
    for _ in loop:
        op(arg)
    return time.perf_counter_ns() - start


def compare(contenders: Sequence[tuple[Op, object]], *, iterations: int, repeats: int, warmup: int) -> list[float]:
    """Median µs per call for each ``(op, arg)``, timed in alternating order within each repeat."""
    samples: list[list[float]] = [[] for _ in contenders]
    gc_was_enabled = gc.isenabled()
    try:
        for op, arg in contenders:
            _loop_ns(op, arg, warmup)
        gc.disable()
        for repeat in range(repeats):
            order = range(len(contenders)) if repeat % 2 == 0 else reversed(range(len(contenders)))
            for index in order:
                op, arg = contenders[index]
                samples[index].append(_loop_ns(op, arg, iterations) / iterations / 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [statistics.median(runs) for runs in samples]


def measure(prepared: Prepared, *, iterations: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Decode and encode figures for one frame, in the shape written to ``--out``."""
    raw = prepared.frame.raw
    ours_dec, theirs_dec = compare(
        [(prepared.ours_decode, raw), (prepared.theirs_decode, raw)],
        iterations=iterations,
        repeats=repeats,
        warmup=warmup,
    )
    ours_enc, ours_enc_text, theirs_enc = compare(
        [
            (encode, prepared.ours_message),
            (encode_text, prepared.ours_message),
            (prepared.theirs_encode, prepared.theirs_model),
        ],
        iterations=iterations,
        repeats=repeats,
        warmup=warmup,
    )
    return {
        "frame": prepared.case.name,
        "source": prepared.frame.source,
        "bytes": prepared.frame.size,
        "roundtrip_identical": {"galaxy_trio": True, "pydantic": prepared.theirs_mismatch is None},
        "pydantic_mismatch": prepared.theirs_mismatch,
        "decode_us": {"galaxy_trio": ours_dec, "pydantic": theirs_dec},
        "decode_ratio": theirs_dec / ours_dec,
        "encode_us": {"galaxy_trio": ours_enc, "pydantic": theirs_enc},
        "encode_ratio": theirs_enc / ours_enc,
        "encode_text_us": {"galaxy_trio": ours_enc_text, "pydantic": theirs_enc},
        "encode_text_ratio": theirs_enc / ours_enc_text,
    }


#: The free-form JSON field of each direction (``dict[str, Any]`` / ``Any`` in both schemas).
PAYLOAD_FIELD = {"C->S": "metadata", "S->C": "result"}
_any_decoder = msgspec.json.Decoder()
_any_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)


def split_frame(prepared: Prepared) -> tuple[str, str] | None:
    """The frame with its free-form payload set to null, and the payload alone; None if it has no payload."""
    document = json.loads(prepared.frame.raw)
    field = PAYLOAD_FIELD[prepared.frame.direction]
    if document.get(field) is None:
        return None
    payload = json.dumps(document[field], separators=(",", ":"), ensure_ascii=False)
    document[field] = None
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False), payload


def measure_split(prepared: Prepared, *, iterations: int, repeats: int, warmup: int) -> dict[str, Any] | None:
    """Decode times of the typed envelope alone and of the free-form payload alone, for both libraries.

    Both libraries turn the payload into the same plain dicts, lists and strings; how much of a frame is payload
    bounds the ratio a whole frame can reach.
    """
    parts = split_frame(prepared)
    if parts is None:
        return None
    envelope, payload = parts
    ours_envelope, theirs_envelope, ours_payload, theirs_payload = compare(
        [
            (prepared.ours_decode, envelope),
            (prepared.theirs_decode, envelope),
            (_any_decoder.decode, payload),
            (_any_adapter.validate_json, payload),
        ],
        iterations=iterations,
        repeats=repeats,
        warmup=warmup,
    )
    return {
        "payload_field": PAYLOAD_FIELD[prepared.frame.direction],
        "payload_bytes": len(payload.encode()),
        "envelope_decode_us": {"galaxy_trio": ours_envelope, "pydantic": theirs_envelope},
        "envelope_decode_ratio": theirs_envelope / ours_envelope,
        "payload_decode_us": {"galaxy_trio": ours_payload, "pydantic": theirs_payload},
        "payload_decode_ratio": theirs_payload / ours_payload,
    }


def _geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Geometric-mean ratios and which (frame, direction) pairs miss the target."""
    decode = [row["decode_ratio"] for row in rows]
    encode_ = [row["encode_ratio"] for row in rows]
    misses = [
        f"{row['frame']} {op} ({row[f'{op}_ratio']:.1f}x)"
        for row in rows
        for op in ("decode", "encode")
        if row[f"{op}_ratio"] < TARGET_RATIO
    ]
    return {
        "geomean_ratio": _geomean([*decode, *encode_]),
        "geomean_decode_ratio": _geomean(decode),
        "geomean_encode_ratio": _geomean(encode_),
        "min_ratio": min([*decode, *encode_]),
        "target_ratio": TARGET_RATIO,
        "meets_target": not misses,
        "misses": misses,
    }


def _us(value: float) -> str:
    return f"{value:.3f}"


def render(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The markdown table and the lines around it."""
    table = _common.markdown_table(
        [
            "frame",
            "bytes",
            "decode µs ours",
            "decode µs pydantic",
            "ratio",
            "encode µs ours",
            "encode µs pydantic",
            "ratio",
        ],
        [
            [
                row["frame"] + ("" if row["pydantic_mismatch"] is None else " (*)"),
                row["bytes"],
                _us(row["decode_us"]["galaxy_trio"]),
                _us(row["decode_us"]["pydantic"]),
                f"{row['decode_ratio']:.1f}x",
                _us(row["encode_us"]["galaxy_trio"]),
                _us(row["encode_us"]["pydantic"]),
                f"{row['encode_ratio']:.1f}x",
            ]
            for row in rows
        ],
    )
    lines = [table, ""]
    for row in rows:
        if row["pydantic_mismatch"] is not None:
            lines.append(
                f"(*) pydantic does NOT re-encode {row['source']} byte-identically: {row['pydantic_mismatch']}"
            )
    lines.append(
        "encode_text (str, as Link.send uses) µs ours: "
        + ", ".join(
            f"{row['frame']} {_us(row['encode_text_us']['galaxy_trio'])} ({row['encode_text_ratio']:.1f}x)"
            for row in rows
        )
    )
    register = next((row for row in rows if row["frame"] == UFO_REFERENCE["frame"]), None)
    if register is not None:
        lines.append(
            f"UFO reference, pydantic v2 on the {UFO_REFERENCE['bytes']}-byte device REGISTER: decode "
            f"{UFO_REFERENCE['decode_us']} µs, encode {UFO_REFERENCE['encode_us']} µs; pydantic on this machine: "
            f"decode {_us(register['decode_us']['pydantic'])} µs, encode {_us(register['encode_us']['pydantic'])} µs"
        )
    split_rows = [row for row in rows if row.get("split")]
    if split_rows:
        lines.append(
            "Decode split (envelope = the frame with its payload field null; payload = that field's JSON alone): "
            + "; ".join(
                f"{row['frame']}: envelope {row['split']['envelope_decode_ratio']:.1f}x, "
                f"{row['split']['payload_field']} ({row['split']['payload_bytes']} B) "
                f"{row['split']['payload_decode_ratio']:.1f}x"
                for row in split_rows
            )
        )
    verdict = "met" if summary["meets_target"] else "MISSED on " + "; ".join(summary["misses"])
    lines.append(
        f"Summary: geometric-mean ratio pydantic/galaxy_trio {summary['geomean_ratio']:.1f}x "
        f"(decode {summary['geomean_decode_ratio']:.1f}x, encode {summary['geomean_encode_ratio']:.1f}x, "
        f"lowest {summary['min_ratio']:.1f}x); target >= {TARGET_RATIO:g}x on every frame and direction: {verdict}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=10_000, metavar="N", help="calls per timed loop")
    parser.add_argument("--repeats", type=int, default=7, metavar="R", help="timed loops per measurement (median)")
    parser.add_argument("--warmup", type=int, default=None, metavar="W", help="untimed calls first (default N/10)")
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.repeats < 1:
        parser.error("--iterations and --repeats must be at least 1")
    if args.warmup is None:
        args.warmup = max(1, args.iterations // 10)
    elif args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    frames = _common.frames_dir()
    try:
        prepared = [prepare(case, frames) for case in CASES]
    except RoundTripError as exc:
        print(f"FAIL: {exc}; figures would be meaningless", file=sys.stderr)
        return 1

    rows = [measure(p, iterations=args.iterations, repeats=args.repeats, warmup=args.warmup) for p in prepared]
    for row, frame in zip(rows, prepared, strict=True):
        row["split"] = measure_split(frame, iterations=args.iterations, repeats=args.repeats, warmup=args.warmup)
    summary = summarise(rows)
    print(
        f"AIP codec: galaxy_trio (msgspec {msgspec.__version__}) vs pydantic {pydantic.VERSION}, "
        f"median of {args.repeats} x {args.iterations} calls, µs per call\n"
    )
    print(render(rows, summary))

    if args.out is not None:
        _common.write_json(
            args.out,
            {
                "benchmark": "codec",
                "environment": {**_common.environment(), "msgspec": msgspec.__version__, "pydantic": pydantic.VERSION},
                "iterations": args.iterations,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "ufo_reference": UFO_REFERENCE,
                "frames": rows,
                **summary,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
