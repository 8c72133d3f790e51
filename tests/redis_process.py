"""A redis-server of our own, for the fleet tests, the fleet soak and the fleet benchmark.

One way to start it, so that all three run the same server the same way: loopback only, no persistence (a restart
comes back *empty*, which is what the soak's "Redis restarted" fault means), logs on stdout at ``notice`` so that
"ready" is a line we read instead of a sleep. Two shapes, because the callers have two:

- :func:`open_redis_process` (trio): an async context manager whose :class:`RedisProcess` is started, killed and
  started again on the same port (the soak), keeps the tail of its log (the benchmark writes it out) and reads that
  log all the time, so the server never blocks on a full pipe;
- :func:`spawn_redis` (blocking): for a session-scoped pytest fixture, which has no trio loop to run in.

A server that does not come up raises :class:`RedisDidNotStart` with the end of what it logged. How long to wait
for it is the caller's: a cancel scope around :meth:`RedisProcess.start`, a deadline for :func:`spawn_redis`.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .net import free_port

__all__ = ["READY", "RedisDidNotStart", "RedisProcess", "open_redis_process", "redis_binary", "spawn_redis"]

#: What redis-server logs (at ``notice``) once it accepts connections.
READY = b"Ready to accept connections"
#: How much of its log a :class:`RedisProcess` keeps: enough for the last start and what followed.
LOG_TAIL = 1 << 20
INSTALL_HINT = "apt-get install -y redis-server, or .ci/redis.sh"


class RedisDidNotStart(RuntimeError):
    """redis-server exited (or was not found) before it said it accepts connections; the message has its log's end."""


def redis_binary() -> str:
    """The redis-server on ``PATH``; raises :class:`RedisDidNotStart` saying how to install it when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisDidNotStart(f"redis-server is not installed ({INSTALL_HINT})")
    return binary


def redis_args(binary: str, port: int, *, maxclients: int | None = None) -> list[str]:
    """The command line: loopback, the given port, no RDB or AOF file, in the foreground, ``notice`` logs."""
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--daemonize", "no", "--loglevel", "notice"]
    if maxclients is not None:
        args += ["--maxclients", str(maxclients)]
    return args


def _did_not_start(port: int, log: bytes | bytearray) -> RedisDidNotStart:
    return RedisDidNotStart(f"redis-server exited on port {port}: {bytes(log[-2000:]).decode(errors='replace')}")


class RedisProcess:
    """One redis-server on a fixed loopback port, started, SIGKILLed and started again at the caller's word.

    Made by :func:`open_redis_process`, which owns the task reading its log and kills the server on exit.
    """

    def __init__(self, binary: str, port: int, maxclients: int | None, nursery: trio.Nursery) -> None:
        self.binary = binary
        self.port = port
        self.maxclients = maxclients
        #: How many times it has come up (a restart counts).
        self.starts = 0
        #: The last :data:`LOG_TAIL` bytes it logged, over every start.
        self.log = bytearray()
        self._nursery = nursery
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def _keep(self, chunk: bytes) -> None:
        self.log += chunk
        del self.log[: max(0, len(self.log) - LOG_TAIL)]

    async def start(self) -> None:
        """Start it and return once it accepts connections (the caller's cancel scope bounds the wait)."""
        if self.process is not None:
            raise RuntimeError(f"redis-server is already running on port {self.port}")
        args = redis_args(self.binary, self.port, maxclients=self.maxclients)
        process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        self.process = process
        this_start = bytearray()
        try:
            while READY not in this_start:
                chunk = await process.stdout.receive_some(65536)
                if not chunk:
                    raise _did_not_start(self.port, this_start)
                this_start += chunk
                self._keep(chunk)
        except BaseException:
            await self.kill()
            raise
        self._nursery.start_soon(self._read_log, process.stdout, name=f"redis-log:{self.port}")
        self.starts += 1

    async def _read_log(self, stdout: trio.abc.ReceiveStream) -> None:
        """Read its output until it ends, so that the server never blocks writing a log line."""
        async with stdout:
            while chunk := await stdout.receive_some(65536):
                self._keep(chunk)

    async def kill(self) -> None:
        """SIGKILL: nothing is saved, the next :meth:`start` finds an empty server."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


@asynccontextmanager
async def open_redis_process(
    *, port: int | None = None, maxclients: int | None = None, binary: str | None = None
) -> AsyncIterator[RedisProcess]:
    """A :class:`RedisProcess` on ``port`` (or a free one), killed when the block ends.

    Not started yet: the caller starts it under the deadline it chooses (``with trio.fail_after(15): await
    redis.start()``).
    """
    async with trio.open_nursery() as nursery:
        redis = RedisProcess(binary or redis_binary(), port or free_port(), maxclients, nursery)
        try:
            yield redis
        finally:
            await redis.kill()
            nursery.cancel_scope.cancel()


def spawn_redis(binary: str, port: int, *, deadline: float) -> subprocess.Popen[bytes]:
    """Start redis-server and block until it accepts connections or ``deadline`` (``time.monotonic()``) passes.

    For a session fixture with no trio loop. Its log is read only up to "ready": at ``notice`` it writes little
    more (no line per client), far from filling the pipe in one test session.
    """
    process = subprocess.Popen(redis_args(binary, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    log = b""
    try:
        while READY not in log:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RedisDidNotStart(f"redis-server on port {port} did not say it is ready in time: {log[-2000:]!r}")
            readable, _, _ = select.select([process.stdout], [], [], remaining)
            if readable:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    raise _did_not_start(port, log)
                log += chunk
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        raise
    return process
