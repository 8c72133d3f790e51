"""Member C's link to Redis, in a process of its own: a :class:`~tests.fleet.peers.TcpProxy` the fleet soak cuts.

    python -m tests.soak.redis_link TARGET_PORT

The child prints the port it forwards from, then takes one command per line on stdin — ``cut`` (drop every
connection, refuse new ones) or ``restore`` — and answers each with ``ok`` once done. Why a process: in the
soak's process, which saturates a core at 500 devices, every one of C's Redis round trips also waited for that
process's turn, a delay A and B do not have on their own link and one that grows with the load (C's renewals time
out after 1 s). Here C's link to Redis is as direct as theirs except when the schedule cuts it.
:func:`open_redis_link` runs it from the soak.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..fleet.peers import TcpProxy


class RedisLink:
    """The parent's handle on the proxy process: its ``port``, and :meth:`cut` / :meth:`restore`."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self._process = process
        self.port = port
        self._lock = trio.Lock()

    async def _command(self, word: bytes) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        async with self._lock:
            await self._process.stdin.send_all(word + b"\n")
            answer = await _line(self._process.stdout)
        if answer != b"ok":
            raise RuntimeError(f"the Redis link process answered {answer!r} to {word!r}")

    async def cut(self) -> None:
        await self._command(b"cut")

    async def restore(self) -> None:
        await self._command(b"restore")


async def _line(stream: trio.abc.ReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise RuntimeError("the Redis link process exited")
        line += chunk
    return line.strip()


@asynccontextmanager
async def open_redis_link(target_port: int) -> AsyncIterator[RedisLink]:
    """Start the proxy process towards 127.0.0.1:``target_port``; it is killed when the block ends."""
    command = [sys.executable, "-m", "tests.soak.redis_link", str(target_port)]
    process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            port = int(await _line(process.stdout))
        yield RedisLink(process, port)
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()


async def _serve(target_port: int) -> None:
    proxy = TcpProxy(target_port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        out = trio.lowlevel.FdStream(sys.stdout.fileno())
        await out.send_all(f"{proxy.port}\n".encode())
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        pending = b""
        while chunk := await stdin.receive_some(4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line == b"cut":
                    proxy.cut()
                elif line == b"restore":
                    proxy.restore()
                else:
                    await out.send_all(b"unknown command\n")
                    continue
                await out.send_all(b"ok\n")
        nursery.cancel_scope.cancel()  # the parent went away


if __name__ == "__main__":
    trio.run(_serve, int(sys.argv[1]))
