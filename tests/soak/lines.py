"""Lines over pipes, as the soak talks with its child processes: one reader that splits a stream into lines, one
writer per stream that batches what has queued (concurrent ``send_all`` calls on one stream are an error in trio,
and a write per line would cost a system call each)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio


async def lines_of(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """Each line that arrives on ``stream``, without its newline, until the stream ends."""
    pending = b""
    while chunk := await stream.receive_some(65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line


async def read_line(stream: trio.abc.ReceiveStream, what: str) -> bytes:
    """One line from ``stream``, stripped — read a byte at a time, so that nothing after it is taken from the stream
    (for a command's answer; ``what`` names the peer in the error if the stream ends first)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            raise RuntimeError(f"{what} exited (after {line!r})")
        line += chunk
    return line.strip()


async def write_lines(out: trio.abc.SendStream, lines: trio.MemoryReceiveChannel[bytes]) -> None:
    """The one writer of ``out``: whatever has queued up on ``lines`` goes in one write; ends when every sender of
    ``lines`` has closed and the queue is written."""
    async with lines:
        async for line in lines:
            batch = [line]
            while True:
                try:
                    batch.append(lines.receive_nowait())
                except trio.WouldBlock:
                    break
            await out.send_all(b"".join(batch))
