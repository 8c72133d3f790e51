"""benchmarks/bench_control.py runs end to end on a tiny fleet and prints every set-up's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_control_prints_and_writes_the_three_setups(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--devices", "20", "--clients", "3", "--repeat", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_control.py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "20 devices to IDLE; 3 stalled SSE clients; 1 rounds" in done.stdout
    for setup in ("| bare ", "| control ", "| control + stalled clients "):
        assert setup in done.stdout
    data = json.loads(out.read_text())
    summary = data["summary"]
    assert all(s["all_idle"] and s["median_s"] > 0 for s in summary.values())
    assert summary["control + stalled clients"]["dropped_median"] > 0
    assert summary["control"]["dropped_median"] == 0
