"""A fault-injecting TCP proxy for tests: it sits between a WebSocket client and server on 127.0.0.1.

Fault scenarios need a network that misbehaves on cue — a link that dies, goes silent without closing, lags,
never finishes its upgrade, or delivers a broken frame — while client and server stay the real, unmodified code.
The proxy forwards bytes between each accepted client and a fresh connection to the upstream server, and every
fault is a switch that can be flipped at any time::

    proxy = FaultProxy("127.0.0.1", server_port)
    await nursery.start(proxy.serve)
    url = proxy.url_for("/ws?token=...")
    proxy.blackhole = True            # keep sockets open, pass nothing
    proxy.cut(refuse_new=True)        # reset every connection, reset reconnects too
    proxy.restore()                   # a healthy network again

Frame faults work at the WebSocket level: after the HTTP upgrade (which ends at the first ``\\r\\n\\r\\n`` in each
direction) each direction is followed frame by frame (RFC 6455 §5.2), so "the next frame" can be replaced by
garbage, re-typed as binary, padded past the size limit, or cut in half. Everything else, including fragmented
messages and control frames, passes through byte for byte.

Structured concurrency: every connection pair runs in its own cancel scope inside :meth:`FaultProxy.serve`'s
nursery, with one task per direction; its two sockets are closed (shielded, bounded) when the pair ends, and
nothing outlives ``serve``.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Final

import trio

__all__ = [
    "GARBAGE",
    "OVERSIZE_BYTES",
    "Corruption",
    "Direction",
    "FaultProxy",
    "FrameScanner",
    "ProxiedConnection",
    "frame_header",
    "mask",
]

#: How much one forwarder reads at a time. Small on purpose: a read allocates ``CHUNK`` bytes and shrinks them to
#: what came (a few hundred for a heartbeat), and with 64 KiB reads glibc kept the holes around the survivors —
#: the fleet soak's RSS crept ~0.8 MiB a minute at 200 devices with malloc's in-use bytes and Python's objects
#: flat (``benchmarks/soak.py --trace-memory``); 4 KiB reads left it flat.
CHUNK: Final = 4 * 1024

#: Payload size an ``OVERSIZE`` corruption pads a frame to: one byte over trio-websocket's (and galaxy_trio's)
#: default 1 MiB message limit.
OVERSIZE_BYTES: Final = (1 << 20) + 1

#: What a GARBAGE corruption fills a payload with: '<' starts no JSON value, and ASCII is still valid UTF-8.
GARBAGE: Final = b"<garbage>"

#: An HTTP head longer than this is not a WebSocket upgrade: the stream is then forwarded untouched.
HEAD_LIMIT: Final = 64 * 1024

#: Bound on closing a pair's sockets (closing a TCP socket does not block; this only guards the checkpoint).
CLOSE_BOUND: Final = 1.0

_HEAD_END: Final = b"\r\n\r\n"
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_LINGER_RESET: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


class Direction(StrEnum):
    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


class Corruption(StrEnum):
    """What happens to the next data frame (text or binary; control frames are never touched)."""

    GARBAGE = "garbage"  # payload replaced by ASCII that is not JSON, same length
    BINARY = "binary"  # opcode switched to binary, payload unchanged
    TRUNCATE = "truncate"  # first half of the frame forwarded, then the connection is reset
    OVERSIZE = "oversize"  # payload padded with spaces to OVERSIZE_BYTES (still valid JSON, just too big)


class FrameScanner:
    """Follows one direction of a proxied WebSocket stream and applies corruptions to whole frames.

    Bytes of frames that are not corrupted are forwarded as soon as they arrive (no reassembly); a frame picked
    for corruption is held until complete. ``take_corruption`` is asked once at the start of each data frame.
    """

    __slots__ = ("_buf", "_direction", "_in_head", "_passing", "_pending", "_raw", "_take", "frames", "upgraded")

    def __init__(self, direction: Direction, take_corruption: Callable[[], Corruption | None]) -> None:
        self._direction = direction
        self._take = take_corruption
        self._buf = bytearray()
        self._in_head = True
        self._raw = False
        self._passing = 0  # payload bytes of the current frame still to forward untouched
        self._pending: Corruption | None = None
        #: Frames (any opcode) whose last byte has been handed out by :meth:`feed`.
        self.frames = 0
        #: The HTTP head of this direction has been handed out (from the server, only a 101 counts).
        self.upgraded = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to forward for ``data``, and whether to reset the connection once they are forwarded."""
        if self._raw:
            return data, False
        buf = self._buf
        buf += data
        out = bytearray()
        while buf:
            if self._in_head:
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        self._go_raw(out)
                    break
                end += len(_HEAD_END)
                head = bytes(buf[:end])
                out += head
                del buf[:end]
                self._in_head = False
                if self._direction is Direction.TO_CLIENT and not head.startswith(b"HTTP/1.1 101"):
                    self._go_raw(out)  # a rejection: what follows is an HTTP body, not frames
                    break
                self.upgraded = True
                continue
            if self._passing:
                n = min(self._passing, len(buf))
                out += buf[:n]
                del buf[:n]
                self._passing -= n
                if not self._passing:
                    self.frames += 1
                continue
            parsed = _parse_header(buf)
            if parsed is None:
                break
            header_len, length = parsed
            if self._pending is None and buf[0] & 0x0F in (_OP_TEXT, _OP_BINARY):
                self._pending = self._take()
            if self._pending is None:
                out += buf[:header_len]
                del buf[:header_len]
                self._passing = length
                if not length:
                    self.frames += 1
                continue
            total = header_len + length
            if len(buf) < total:
                break
            frame = bytes(buf[:total])
            del buf[:total]
            mode, self._pending = self._pending, None
            if mode is Corruption.TRUNCATE:
                out += frame[: total // 2]  # a header is at least 2 bytes, so this always ends inside the frame
                buf.clear()
                return bytes(out), True
            out += _corrupt(frame, header_len, length, mode)
            self.frames += 1
        return bytes(out), False

    def _go_raw(self, out: bytearray) -> None:
        self._raw = True
        out += self._buf
        self._buf.clear()


def _parse_header(buf: bytearray) -> tuple[int, int] | None:
    """``(header length, payload length)`` of the frame at the start of ``buf``, or ``None`` if incomplete."""
    if len(buf) < 2:
        return None
    second = buf[1]
    length = second & 0x7F
    header_len = 2 + (4 if second & 0x80 else 0)
    if length == 126:
        header_len += 2
        if len(buf) < header_len:
            return None
        length = int.from_bytes(buf[2:4], "big")
    elif length == 127:
        header_len += 8
        if len(buf) < header_len:
            return None
        length = int.from_bytes(buf[2:10], "big")
    if len(buf) < header_len:
        return None
    return header_len, length


def _corrupt(frame: bytes, header_len: int, length: int, mode: Corruption) -> bytes:
    first = frame[0]
    if mode is Corruption.BINARY:
        return bytes([(first & 0xF0) | _OP_BINARY]) + frame[1:]
    key = frame[header_len - 4 : header_len] if frame[1] & 0x80 else b""
    if mode is Corruption.GARBAGE:
        plain = (GARBAGE * (length // len(GARBAGE) + 1))[:length]
    else:  # OVERSIZE
        plain = mask(frame[header_len:], key) + b" " * max(1, OVERSIZE_BYTES - length)
    return frame_header(first, len(plain), key) + mask(plain, key)


def frame_header(first: int, length: int, key: bytes = b"") -> bytes:
    """A frame header: ``first`` is the FIN/RSV/opcode byte; a 4-byte ``key`` makes it a masked frame."""
    mask_bit = 0x80 if key else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + length.to_bytes(8, "big")
    return head + key


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``key`` (masking and unmasking are the same operation)."""
    if not key or not data:
        return data
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class ProxiedConnection:
    """One accepted client connection and its upstream twin (``upstream`` is ``None`` until connected)."""

    def __init__(self, proxy: FaultProxy, number: int, client: trio.SocketStream, *, stalled: bool) -> None:
        self.number = number
        self.client = client
        self.upstream: trio.SocketStream | None = None
        #: Set once both sockets are closed.
        self.closed = False
        self._proxy = proxy
        self._blackhole = False
        self._released = trio.Event()
        if not stalled:
            self._released.set()
        self._scope = trio.CancelScope()
        self._eofs = 0
        self._corruptions: dict[Direction, deque[Corruption]] = {d: deque() for d in Direction}
        self._scanners = {d: FrameScanner(d, self._taker(d)) for d in Direction}

    def __repr__(self) -> str:
        frames = f"frames to server={self.frames_to_server} to client={self.frames_to_client}"
        return f"<ProxiedConnection #{self.number} {frames}{' closed' if self.closed else ''}>"

    @property
    def stalled(self) -> bool:
        """Held before the upstream connection is even opened (see :attr:`FaultProxy.stall_handshake`)."""
        return not self._released.is_set()

    @property
    def upgraded(self) -> bool:
        """Both HTTP heads of the WebSocket upgrade have been forwarded."""
        return all(s.upgraded for s in self._scanners.values())

    @property
    def frames_to_server(self) -> int:
        return self._scanners[Direction.TO_SERVER].frames

    @property
    def frames_to_client(self) -> int:
        return self._scanners[Direction.TO_CLIENT].frames

    @property
    def blackhole(self) -> bool:
        return self._blackhole

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        self._blackhole = value
        self._proxy._notify()

    def cut(self) -> None:
        """Reset both sockets of this pair (RST, not FIN)."""
        self._scope.cancel()

    def release(self) -> None:
        """Let a stalled pair connect upstream and forward what its client already sent."""
        self._released.set()

    def corrupt_next_frame(self, direction: Direction, mode: Corruption) -> None:
        """Corrupt the next data frame of this pair in ``direction`` (calls queue up, one frame each)."""
        self._corruptions[direction].append(mode)

    def _taker(self, direction: Direction) -> Callable[[], Corruption | None]:
        own = self._corruptions[direction]
        shared = self._proxy._corruptions[direction]

        def take() -> Corruption | None:
            if own:
                return own.popleft()
            if shared:
                return shared.popleft()
            return None

        return take

    async def _run(self) -> None:
        proxy = self._proxy
        try:
            with self._scope:
                if proxy.refuse_new:
                    proxy.refused += 1
                    return
                held = await self._hold_until_released() if self.stalled else b""
                if held is None:
                    return  # the client gave up while stalled
                try:
                    self.upstream = await trio.open_tcp_stream(proxy.upstream_host, proxy.upstream_port)
                except OSError:
                    return  # upstream down: the client gets a reset, as from a dead server
                proxy._notify()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, Direction.TO_SERVER, self.client, self.upstream, held)
                    nursery.start_soon(self._pump, Direction.TO_CLIENT, self.upstream, self.client, b"")
        finally:
            await self._close(abrupt=self._eofs < 2)
            proxy._forget(self)

    async def _hold_until_released(self) -> bytes | None:
        """Wait for :meth:`release`, holding what the client sends; ``None`` if the client leaves first.

        The client is read (not left alone) so that one giving up on its handshake is noticed and its pair ends,
        instead of lingering until released.
        """
        held = bytearray()
        client_gone = False

        async def read_client(scope: trio.CancelScope) -> None:
            nonlocal client_gone
            try:
                while data := await self.client.receive_some(CHUNK):
                    held.extend(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            client_gone = True
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_client, nursery.cancel_scope)
            await self._released.wait()
            nursery.cancel_scope.cancel()
        return None if client_gone else bytes(held)

    async def _pump(self, direction: Direction, src: trio.SocketStream, dst: trio.SocketStream, first: bytes) -> None:
        """Forward ``first`` and then everything ``src`` sends to ``dst`` (EOF included), applying faults."""
        scanner = self._scanners[direction]
        try:
            if first and not await self._forward(scanner, dst, first):
                return
            while True:
                await self._until_open()  # black-holed: leave the bytes in the kernel, unread
                data = await src.receive_some(CHUNK)
                if not data:
                    break
                if not await self._forward(scanner, dst, data):
                    return
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.cut()  # one side broke: break the other side the same way
            return
        self._eofs += 1

    async def _forward(self, scanner: FrameScanner, dst: trio.SocketStream, data: bytes) -> bool:
        """Forward one chunk; ``False`` once the pair has been reset (a truncation)."""
        proxy = self._proxy
        if proxy.delay > 0:
            await trio.sleep(proxy.delay)  # the injected fault itself
        await self._until_open()  # black-holed while this chunk was in hand: hold it
        out, reset = scanner.feed(data)
        if out:
            await dst.send_all(out)
        proxy._notify()
        if reset:
            self.cut()
            return False
        return True

    async def _until_open(self) -> None:
        proxy = self._proxy
        while proxy.blackhole or self._blackhole:
            await proxy._changed.wait()

    async def _close(self, *, abrupt: bool) -> None:
        with trio.move_on_after(CLOSE_BOUND, shield=True):
            for stream in (self.client, self.upstream):
                if stream is None:
                    continue
                if abrupt:
                    try:
                        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                    except OSError:
                        pass  # already dead
                await stream.aclose()
        self.closed = True


class FaultProxy:
    """See the module docstring. Faults are plain attributes and methods; all of them are undone by :meth:`restore`.

    - ``refuse_new``: accept new connections, then reset them at once (reconnects fail).
    - ``listening``: off closes the port, so new connects are refused outright.
    - ``blackhole``: every live and new connection stays open but nothing is read or forwarded.
    - ``delay``: seconds to wait before forwarding each chunk, in either direction (the HTTP upgrade included).
    - ``stall_handshake``: new connections are accepted but not connected upstream (and so forward nothing)
      until released, so a WebSocket upgrade through them never completes.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        #: Where new pairs connect; may be changed at any time (e.g. to follow a server restarted elsewhere).
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        #: The listening port on 127.0.0.1, set by :meth:`serve` (a second ``serve`` reuses it).
        self.port = 0
        #: Connections accepted over the proxy's life, and how many of them were refused.
        self.accepted = 0
        self.refused = 0
        self.refuse_new = False
        self.delay = 0.0
        self.stall_handshake = False
        self._blackhole = False
        self._listening = True
        self._accepting: trio.CancelScope | None = None
        #: The listening socket is open (it follows :attr:`listening` once :meth:`serve` has caught up).
        self.port_open = False
        self._live: dict[int, ProxiedConnection] = {}
        self._corruptions: dict[Direction, deque[Corruption]] = {d: deque() for d in Direction}
        self._changed = trio.Event()

    @property
    def connections(self) -> list[ProxiedConnection]:
        """Live pairs, oldest first (a pair leaves once both its sockets are closed)."""
        return list(self._live.values())

    @property
    def blackhole(self) -> bool:
        return self._blackhole

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        self._blackhole = value
        self._notify()

    @property
    def listening(self) -> bool:
        """Off: the port is closed, so connects fail at once with "connection refused", as to a server that is down.

        (Contrast ``refuse_new``, which accepts and then resets: trio-websocket clients do not notice a reset before
        the upgrade completes and wait out their connect timeout.) Live connections are not affected; :meth:`cut`
        them too for a full outage. The port closes or reopens when :meth:`serve` next runs: wait for
        :attr:`port_open` before relying on it.
        """
        return self._listening

    @listening.setter
    def listening(self, value: bool) -> None:
        self._listening = value
        if not value and self._accepting is not None:
            self._accepting.cancel()
        self._notify()

    def url_for(self, path_and_query: str = "/") -> str:
        """``ws://127.0.0.1:<port><path_and_query>``."""
        return f"ws://127.0.0.1:{self.port}{path_and_query}"

    def cut(self, *, refuse_new: bool = False) -> None:
        """Reset every live connection, both sides; with ``refuse_new``, reset new ones too until :meth:`restore`."""
        if refuse_new:
            self.refuse_new = True
        for pair in self._live.values():
            pair.cut()

    def release_handshakes(self) -> None:
        """Stop stalling new connections and release every stalled one."""
        self.stall_handshake = False
        for pair in self._live.values():
            pair.release()

    def corrupt_next_frame(self, direction: Direction, mode: Corruption) -> None:
        """Corrupt the next data frame in ``direction`` on whichever connection carries one first."""
        self._corruptions[direction].append(mode)

    def restore(self) -> None:
        """Clear every fault, on the proxy and on each live pair (frames already corrupted stay corrupted)."""
        self.refuse_new = False
        self.delay = 0.0
        for queue in self._corruptions.values():
            queue.clear()
        for pair in self._live.values():
            pair._blackhole = False
            for queue in pair._corruptions.values():
                queue.clear()
        self.release_handshakes()
        self._blackhole = False
        self.listening = True  # notifies

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked on every change the proxy sees (no polling)."""
        while not predicate():
            await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 and proxy until cancelled; ``await nursery.start(proxy.serve)`` gives the port.

        While :attr:`listening` is off the port is closed (and reopened, same number, when it is back on). On exit
        every live pair is reset and its sockets closed before this returns.
        """
        started = False
        async with trio.open_nursery() as nursery:
            while True:
                (listener,) = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                try:
                    self.port = listener.socket.getsockname()[1]
                    if not started:
                        task_status.started(self.port)
                        started = True
                    with trio.CancelScope() as self._accepting:
                        if self._listening:
                            self._set_port_open(True)
                        else:
                            self._accepting.cancel()
                        while True:
                            self._admit(await listener.accept(), nursery)
                finally:
                    with trio.move_on_after(CLOSE_BOUND, shield=True):
                        await listener.aclose()
                    if self.port_open:
                        self._set_port_open(False)
                await self.wait_for(lambda: self._listening)

    def _set_port_open(self, value: bool) -> None:
        self.port_open = value
        self._notify()

    def _admit(self, stream: trio.SocketStream, nursery: trio.Nursery) -> None:
        self.accepted += 1
        pair = ProxiedConnection(self, self.accepted, stream, stalled=self.stall_handshake)
        self._live[pair.number] = pair
        self._notify()
        nursery.start_soon(pair._run)

    def _forget(self, pair: ProxiedConnection) -> None:
        del self._live[pair.number]
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
