"""Small helpers shared by the benchmark scripts: golden frames, markdown tables, ``--out FILE`` JSON.

Benchmark scripts are run straight from a checkout (``python benchmarks/bench_x.py``), where Python puts
``benchmarks/`` on ``sys.path`` but not the repository root. Importing this module adds the root, so the scripts
can ``import galaxy_trio`` without the package being installed. Import it before ``galaxy_trio``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_ROOT",
    "Frame",
    "add_out_argument",
    "environment",
    "frames_dir",
    "load_frame",
    "markdown_table",
    "write_json",
]

#: The repository checkout this script lives in (``<repo>/benchmarks/_common.py``).
REPO_ROOT = Path(__file__).resolve().parent.parent

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def frames_dir() -> Path:
    """The golden AIP frames, which live beside the checkout in ``<repo>/../shared/aip/frames``.

    Raises FileNotFoundError naming the path looked at, so a missing checkout of the shared tree is obvious.
    """
    path = REPO_ROOT.parent / "shared" / "aip" / "frames"
    if not path.is_dir():
        raise FileNotFoundError(f"golden AIP frames not found at {path}")
    return path


@dataclass(frozen=True, slots=True)
class Frame:
    """One recorded frame: where it came from, its direction and its exact text."""

    scenario: str
    step: int
    direction: str  # "C->S" (a ClientMessage) or "S->C" (a ServerMessage)
    raw: str

    @property
    def source(self) -> str:
        """``scenario.jsonl#step``, the way PROTOCOL.md cites frames."""
        return f"{self.scenario}.jsonl#{self.step}"

    @property
    def size(self) -> int:
        """Size on the wire in bytes (UTF-8), which is what a WebSocket text frame carries."""
        return len(self.raw.encode())


def load_frame(scenario: str, step: int, *, directory: Path | None = None) -> Frame:
    """The frame recorded at ``step`` of ``<scenario>.jsonl``; KeyError if the file has no such step."""
    path = (directory or frames_dir()) / f"{scenario}.jsonl"
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["step"] == step:
                return Frame(scenario, step, record["dir"], record["raw"])
    raise KeyError(f"{path} has no step {step}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-style markdown table; the first column is left-aligned, the others (figures) right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def render(row: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths))
    return "\n".join([render(cells[0]), rule + "|", *(render(row) for row in cells[1:])])


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--out FILE`` option every benchmark script offers."""
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")


def environment() -> dict[str, str]:
    """What the figures depend on, recorded next to them."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": platform.processor() or "unknown",
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating parent directories (``benchmarks/results/`` is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
