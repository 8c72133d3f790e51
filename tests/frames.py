"""The recorded UFO frames in ``shared/aip/frames/``, for tests.

In CI the repository is a clean clone with ``shared/`` beside it, as it is for developers: ``<repo>/../shared``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

FRAMES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "aip" / "frames"


@cache
def load(scenario: str) -> tuple[dict[str, Any], ...]:
    """Every line of ``<scenario>.jsonl`` as a dict (keys: step, from, to, dir, conn, raw, note…)."""
    path = FRAMES_DIR / f"{scenario}.jsonl"
    with path.open(encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


def raw(scenario: str, step: int) -> str:
    """The exact text payload of one recorded frame."""
    for frame in load(scenario):
        if frame["step"] == step:
            return str(frame["raw"])
    raise KeyError(f"{scenario}.jsonl has no step {step}")


def all_frames() -> list[dict[str, Any]]:
    return [frame for path in sorted(FRAMES_DIR.glob("*.jsonl")) for frame in load(path.stem)]
