"""The README's "From asyncio" program runs as written: two devices IDLE, a task, events to the end, clean exit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_asyncio_example_registers_runs_a_task_streams_events_and_exits() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    (example,) = [block for block in blocks if "asyncio.run(main())" in block]
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "laptop True" in lines and "desktop True" in lines
    assert "completed hello" in lines
    assert lines[-1] == "closed"  # the two links close concurrently: their events come in either order
    assert sorted(lines[-3:-1]) == ["event: desktop disconnected", "event: laptop disconnected"]
    # The watcher prints from a task of its own, so its lines interleave with main's in scheduling order.
    assert {"event: laptop idle", "event: desktop idle", "event: laptop busy"} <= set(lines)
