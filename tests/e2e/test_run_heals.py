"""``run`` is a supervisor: a device that comes back after spending its retry budget is IDLE again, same process.

Real time and real processes (``python -m galaxy_trio run`` in a subprocess, our AIP server and agent in this
one), with the re-probe interval set to 1 s so that the test takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from galaxy_trio.agent import DeviceAgent
from galaxy_trio.server import serve_aip

from ..net import free_port

TOKEN = "heal-token"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


class _Lines:
    """The lines a subprocess writes to a pipe, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, fragment: str) -> str:
        """The next line containing ``fragment`` (lines before it are kept in :attr:`seen`)."""
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                self.seen.append(line)
                if fragment in line:
                    return line
            chunk = await self._stream.receive_some()
            if not chunk:
                raise AssertionError(f"the process ended before {fragment!r}; it wrote:\n" + "\n".join(self.seen))
            self._buffer += chunk


async def test_run_brings_a_device_back_after_its_retry_budget_is_spent(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "devices.yaml"
    config.write_text(
        "manager:\n  failed_retry_interval: 1\n  reconnect_delay: 0.1\n  backoff_cap: 0.2\n"
        f"devices:\n  - device_id: box\n    server_url: ws://127.0.0.1:{port}/ws\n"
        "    token_env: GALAXY_TRIO_HEAL_TOKEN\n    max_retries: 2\n",
        encoding="utf-8",
    )
    env = {**os.environ, "GALAXY_TRIO_HEAL_TOKEN": TOKEN}
    command = [sys.executable, "-m", "galaxy_trio", "run", str(config)]
    async with trio.open_nursery() as nursery:
        run = partial(trio.run_process, command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
        process: trio.Process = await nursery.start(partial(run, check=False))
        assert process.stderr is not None
        lines = _Lines(process.stderr)
        with trio.fail_after(60):
            # Nothing listens yet: the retry budget is spent and the device is FAILED, then re-probed, still down.
            await lines.until("connecting -> failed (gave up after 2 consecutive failed attempts")
            await lines.until("connecting -> failed (still failing when re-probed (every 1s)")
            # The device comes back (a reboot): our AIP server on that port, and the device's agent.
            await nursery.start(partial(serve_aip, host="127.0.0.1", port=port, token=TOKEN))
            await nursery.start(DeviceAgent(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", "box").run)
            idle = await lines.until("-> idle")
        assert "device box: registering -> idle" in idle
        assert process.returncode is None  # the same `run`, never restarted
        nursery.cancel_scope.cancel()
    assert TOKEN not in "\n".join(lines.seen)
