"""The README's library example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_library_example_reaches_idle_and_runs_a_task(tmp_path: Path) -> None:
    example = next(block for block in _python_blocks() if "trio.run(main)" in block)  # the trio example
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("True idle ['web_browsing', 'office_applications', ")
    assert second.startswith("completed [{'request': ") and "'result': 'hello'" in second
