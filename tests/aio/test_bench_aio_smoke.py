"""benchmarks/bench_aio.py runs end to end with a tiny fleet and writes well-formed figures (never timed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_aio_prints_both_apis_and_writes_their_figures(tmp_path: Path) -> None:
    out = tmp_path / "aio.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_aio.py", "--devices", "3", "--rounds", "1", "--single", "2", "--tasks", "3",
         "--logs", str(tmp_path), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| 3 devices to IDLE (median) " in done.stdout and "aio / trio" in done.stdout
    figures = json.loads(out.read_text(encoding="utf-8"))["figures"]
    assert set(figures) == {"trio", "aio"}
    for api in figures.values():
        assert set(api) == {"one_device_median_s", "fleet_median_s", "task_median_s", "task_p95_s"}
        assert all(math.isfinite(v) and v > 0 for v in api.values())
