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
    assert lines[-3:] == ["event: laptop disconnected", "event: desktop disconnected", "closed"]
    assert lines.index("event: laptop idle") < lines.index("laptop True")
    assert "event: laptop busy" in lines
