"""Smoke test of benchmarks/bench_codec.py: it runs end to end, prints its table and writes well-formed JSON.

It runs the script as a user would (a subprocess from the repository root, tiny iteration counts) and checks the
shape of what comes out, never the timings themselves: machines are too noisy for timing assertions.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic", reason="pydantic is only in the `bench` extra")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "bench_codec.py"
FRAMES = REPO_ROOT.parent / "shared" / "aip" / "frames"

EXPECTED_FRAMES = {
    "device REGISTER": ("device_registration.jsonl#1", 683),
    "constellation REGISTER": ("constellation_registration.jsonl#1", 470),
    "DEVICE_INFO response": ("device_info.jsonl#4", 622),
    "TASK": ("task_roundtrip.jsonl#3", 362),
    "TASK_END": ("task_roundtrip.jsonl#11", 403),
}


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    if not FRAMES.is_dir():
        pytest.skip(f"golden frames not found at {FRAMES}")
    out = tmp_path_factory.mktemp("bench") / "codec.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "20", "--repeats", "3", "--warmup", "5", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(out.read_text(encoding="utf-8"))


def test_prints_markdown_table_with_every_frame(bench_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = bench_run
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("| frame"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "frame",
        "bytes",
        "decode µs ours",
        "decode µs pydantic",
        "ratio",
        "encode µs ours",
        "encode µs pydantic",
        "ratio",
    ]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| frame")]
    assert [row.split("|")[1].strip() for row in rows] == list(EXPECTED_FRAMES)
    for row, (_, size) in zip(rows, EXPECTED_FRAMES.values(), strict=True):
        assert row.split("|")[2].strip() == str(size)
    summary = next(line for line in lines if line.startswith("Summary:"))
    assert "geometric-mean ratio" in summary
    assert "target >= 5x" in summary


def test_writes_json_with_positive_figures(bench_run: tuple[str, dict[str, Any]]) -> None:
    _, data = bench_run
    assert data["benchmark"] == "codec"
    assert (data["iterations"], data["repeats"], data["warmup"]) == (20, 3, 5)
    assert data["target_ratio"] == 5.0
    assert isinstance(data["meets_target"], bool)
    for key in ("geomean_ratio", "geomean_decode_ratio", "geomean_encode_ratio", "min_ratio"):
        assert _positive(data[key]), key

    frames = data["frames"]
    assert isinstance(frames, list)
    assert {frame["frame"]: (frame["source"], frame["bytes"]) for frame in frames} == EXPECTED_FRAMES
    for frame in frames:
        # Both implementations reproduce every golden frame byte for byte (checked by the script before timing).
        assert frame["roundtrip_identical"] == {"galaxy_trio": True, "pydantic": True}
        assert frame["pydantic_mismatch"] is None
        for op in ("decode", "encode", "encode_text"):
            figures = frame[f"{op}_us"]
            assert set(figures) == {"galaxy_trio", "pydantic"}
            assert all(_positive(v) for v in figures.values()), (frame["frame"], op, figures)
            assert frame[f"{op}_ratio"] == pytest.approx(figures["pydantic"] / figures["galaxy_trio"])


def test_rejects_nonsense_arguments() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "--iterations and --repeats must be at least 1" in completed.stderr
