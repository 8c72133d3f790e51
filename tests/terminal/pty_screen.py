"""Run the real command line in a pseudo-terminal of a given size and read what a person would see.

The child's output goes through pyte, a terminal emulator: tests assert the screen (and the lines scrolled off
it), not the escape sequences that drew them.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyte

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Screen:
    lines: list[str]  # the visible screen, right-stripped
    scrollback: list[str]  # lines scrolled off the top, oldest first
    status: int

    def text(self) -> str:
        return "\n".join(self.lines)


def run_in_terminal(args: list[str], *, columns: int, rows: int, deadline: float = 60.0) -> Screen:
    """``python -m galaxy_trio ARGS`` on a ``columns`` x ``rows`` terminal, until it exits."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = str(REPO)
    child = subprocess.Popen(
        [sys.executable, "-m", "galaxy_trio", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    end = time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            stream.feed(data)
        status = child.wait(timeout=max(end - time.monotonic(), 1.0))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(leader)
    scrollback = ["".join(line[x].data for x in range(columns)).rstrip() for line in screen.history.top]
    return Screen([line.rstrip() for line in screen.display], scrollback, status)
