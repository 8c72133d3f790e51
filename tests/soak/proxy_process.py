"""A proxy in a process of its own, switched by commands: the soaks' fault proxy and member C's link to Redis.

    python -m tests.soak.proxy_process KIND TARGET_PORT

``KIND`` is ``faults`` (a :class:`~tests.faults.proxy.FaultProxy`, WebSocket-aware: the managers' way to the AIP
server) or ``tcp`` (a :class:`~tests.fleet.peers.TcpProxy`, bytes only: member C's way to Redis, which the fault
proxy cannot carry since it scans for HTTP heads). The child prints the port it forwards from, then takes one
command per line on stdin and answers each with ``ok`` once it has taken effect (anything else: an error line):

- both kinds: ``cut`` (drop every live connection; a ``tcp`` proxy also refuses new ones until ``restore``),
  ``restore`` (clear every fault);
- ``faults`` only: ``blackhole`` (live and new connections stay open, nothing passes), ``stall`` (new connections
  are held before their upgrade, live ones cut), ``release`` (stalled connections go on), ``close`` (the port is
  closed: connects are refused, as to a server that is down), ``open`` (listening again, same port);
- both kinds: ``state``, answered with one line of JSON (the switches and the live connections) instead of ``ok``.

Why a process: the soak's own process saturates a core at 500 devices. In it, every byte a proxy relays waits for
that process's turn — a delay that grows with the load and that production links do not have — and the proxy's
share of the work (a fifth of the process's samples in a 500-device profile) is taken from the members and the
server it sits between. Here the relaying runs on another core. :func:`open_proxy_process` runs it from a soak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from ..faults.proxy import FaultProxy
from ..fleet.peers import TcpProxy
from .lines import lines_of, read_line

KINDS = ("faults", "tcp")


class ProxyProcess:
    """The parent's handle on a proxy process: its ``port``, and one method per command (see the module docstring);
    each returns once the child has carried the command out."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self._process = process
        self.port = port
        self._lock = trio.Lock()

    async def _ask(self, word: bytes) -> bytes:
        assert self._process.stdin is not None and self._process.stdout is not None
        async with self._lock:
            await self._process.stdin.send_all(word + b"\n")
            return await read_line(self._process.stdout, "the proxy process")

    async def _command(self, word: bytes) -> None:
        answer = await self._ask(word)
        if answer != b"ok":
            raise RuntimeError(f"the proxy process answered {answer!r} to {word!r}")

    async def state(self) -> dict[str, Any]:
        """The proxy's switches and live connections, as the child sees them."""
        answer = await self._ask(b"state")
        try:
            state: dict[str, Any] = json.loads(answer)
        except ValueError:
            raise RuntimeError(f"the proxy process answered {answer!r} to b'state'") from None
        return state

    async def cut(self) -> None:
        await self._command(b"cut")

    async def restore(self) -> None:
        await self._command(b"restore")

    async def blackhole(self) -> None:
        await self._command(b"blackhole")

    async def stall_handshakes(self) -> None:
        await self._command(b"stall")

    async def release_handshakes(self) -> None:
        await self._command(b"release")

    async def close_port(self) -> None:
        await self._command(b"close")

    async def open_port(self) -> None:
        await self._command(b"open")


@asynccontextmanager
async def open_proxy_process(kind: str, target_port: int) -> AsyncIterator[ProxyProcess]:
    """Start a ``kind`` proxy process towards 127.0.0.1:``target_port``; it is killed when the block ends."""
    if kind not in KINDS:
        raise ValueError(f"unknown proxy kind {kind!r}; expected one of {KINDS}")
    command = [sys.executable, "-m", "tests.soak.proxy_process", kind, str(target_port)]
    process = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            port = int(await read_line(process.stdout, "the proxy process"))
        yield ProxyProcess(process, port)
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await process.wait()


def _fault_state(proxy: FaultProxy) -> dict[str, Any]:
    live = proxy.connections
    return {
        "listening": proxy.listening,
        "port_open": proxy.port_open,
        "blackhole": proxy.blackhole,
        "stall_handshake": proxy.stall_handshake,
        "connections": len(live),
        "stalled": sum(pair.stalled for pair in live),
    }


def _tcp_state(proxy: TcpProxy) -> dict[str, Any]:
    return {"cut": proxy.is_cut, "accepted": proxy.accepted}


def _fault_commands(proxy: FaultProxy) -> dict[bytes, Callable[[], Awaitable[None]]]:
    async def cut() -> None:
        proxy.cut()

    async def restore() -> None:
        proxy.restore()
        await proxy.wait_for(lambda: proxy.port_open)

    async def blackhole() -> None:
        proxy.blackhole = True

    async def stall() -> None:
        proxy.stall_handshake = True
        proxy.cut()

    async def release() -> None:
        proxy.release_handshakes()

    async def close() -> None:
        proxy.listening = False
        await proxy.wait_for(lambda: not proxy.port_open)

    async def open_() -> None:
        proxy.listening = True
        await proxy.wait_for(lambda: proxy.port_open)

    return {
        b"cut": cut,
        b"restore": restore,
        b"blackhole": blackhole,
        b"stall": stall,
        b"release": release,
        b"close": close,
        b"open": open_,
    }


def _tcp_commands(proxy: TcpProxy) -> dict[bytes, Callable[[], Awaitable[None]]]:
    async def cut() -> None:
        proxy.cut()

    async def restore() -> None:
        proxy.restore()

    return {b"cut": cut, b"restore": restore}


async def _serve(kind: str, target_port: int) -> None:
    async with trio.open_nursery() as nursery:
        if kind == "faults":
            fault_proxy = FaultProxy("127.0.0.1", target_port)
            port = await nursery.start(fault_proxy.serve)
            commands = _fault_commands(fault_proxy)
            state: Callable[[], dict[str, Any]] = partial(_fault_state, fault_proxy)
        else:
            tcp_proxy = TcpProxy(target_port)
            await nursery.start(tcp_proxy.serve)
            port = tcp_proxy.port
            commands = _tcp_commands(tcp_proxy)
            state = partial(_tcp_state, tcp_proxy)
        out = trio.lowlevel.FdStream(sys.stdout.fileno())
        await out.send_all(f"{port}\n".encode())
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        async for line in lines_of(stdin):
            command = commands.get(line)
            if line == b"state":
                await out.send_all(json.dumps(state()).encode() + b"\n")
            elif command is None:
                await out.send_all(f"unknown command for a {kind} proxy: {line!r}\n".encode())
            else:
                await command()
                await out.send_all(b"ok\n")
        nursery.cancel_scope.cancel()  # the parent went away


if __name__ == "__main__":
    trio.run(_serve, sys.argv[1], int(sys.argv[2]))
