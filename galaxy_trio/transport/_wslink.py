"""The WebSocket link core both ends share: wsproto over a trio stream, with no task of its own.

Why not trio-websocket (which the server used until issue #16): it runs a reader task per connection that feeds a
channel, which our own reader then drains, so every frame costs two task switches and an idle link holds two
waiting tasks, a nursery, a channel and the HTTP handshake's state. Here the task that calls :meth:`WsLink.receive`
reads the socket itself, feeds wsproto, and answers pings, records pongs and acknowledges the peer's closing
handshake as it meets them. Sends from any task are serialised by one lock, so frames never interleave and nothing
follows a close frame.

The two ends differ only in how the link is opened (:mod:`.client`: the upgrade request and the check of the
101; :mod:`.server`: the request's check and the 101 or an HTTP error) and in wsproto's role (a client masks
what it sends).
"""

from __future__ import annotations

import enum
import math
import os
import select
from typing import Final

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from ..aip import ClientMessage, ServerMessage, encode_text
from ..aip.close_codes import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL
from ..errors import BinaryFrame, LinkClosed
from ._errors import STREAM_ERRORS
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE
from ._pacing import PassTurnstile

__all__ = ["RECEIVE_BYTES", "LinkState", "WsLink", "clip_reason", "text_frame"]

#: Bytes asked of the socket per read. AIP frames are mostly under 1 KiB; a list_tools result is a few KiB.
RECEIVE_BYTES: Final = 16 * 1024

#: A close frame's first byte (FIN and opcode 8, RFC 6455 §5.2): how a read that starts with one is told apart.
_CLOSE_FRAME_FIRST_BYTE: Final = 0x88

#: A close frame's reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5).
_MAX_CLOSE_REASON: Final = 123


class LinkState(enum.Enum):
    """A client link's close state: one value instead of "why it closed" and "socket dropped" kept apart."""

    #: Frames flow both ways.
    OPEN = "open"
    #: Why the link ends is known (a close frame sent or received, a broken or interrupted send); the socket is
    #: still open, for the closing handshake.
    CLOSING = "closing"
    #: The socket is closed.
    DROPPED = "dropped"


class WsLink:
    """An open WebSocket (either end); see the module docstring. Made by :func:`.client.open_link` or
    :meth:`.server.LinkRequest.accept`."""

    __slots__ = (
        "__weakref__",
        "_close_code",
        "_close_paced",
        "_close_reason",
        "_close_turnstile",
        "_heard_at",
        "_max_message_size",
        "_parts",
        "_pings",
        "_receiving",
        "_send_lock",
        "_size",
        "_state",
        "_stream",
        "_ws",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: Connection,
        max_message_size: int,
        *,
        close_turnstile: PassTurnstile | None = None,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._max_message_size = max_message_size
        #: Paces the handling of the peer's close with every other link's (:mod:`._pacing`); a server's links
        #: share one, so a close storm is spread over scheduler passes. None: handled at once (a client's links).
        self._close_turnstile = close_turnstile
        self._close_paced = False  # (the peer's close waits for its pass once)
        self._send_lock = trio.Lock()
        self._state = LinkState.OPEN
        #: Why the link is over, once it is not OPEN (what receive and send raise from then on).
        self._close_code: int | None = None
        self._close_reason: str | None = None
        self._receiving = False
        #: The fragments of a message being received, and its size so far.
        self._parts: list[str] | None = None
        self._size = 0
        #: Pings waiting for their pong, by payload (made on the first ping: a client never pings).
        self._pings: dict[bytes, trio.Event] | None = None
        #: When bytes last came from the peer (trio's clock); the link's opening counts as heard.
        self._heard_at = trio.current_time()

    @property
    def closed(self) -> bool:
        return self._state is not LinkState.OPEN

    @property
    def state(self) -> LinkState:
        """Where the link is in its life: open, ending (the socket still open) or dropped."""
        return self._state

    @property
    def heard_at(self) -> float:
        """When the peer was last heard (``trio.current_time()``): the last read that brought bytes, whatever they
        were (a frame, part of one, a pong, a close), or the link's opening.

        A keepalive judges liveness by this rather than by a pong: a peer busy sending frames is alive even when
        its pong is queued behind them. Bytes count when the receiving task reads them; for bytes that arrived but
        wait unread, see :meth:`has_unread_data`.
        """
        return self._heard_at

    def _end(self, code: int | None, reason: str | None) -> bool:
        """Record why the link ends, if it is still open; whether it was (so the caller goes on to close it)."""
        if self._state is not LinkState.OPEN:
            return False
        self._state = LinkState.CLOSING
        self._close_code, self._close_reason = code, reason
        self._wake_pings()
        return True

    def _wake_pings(self) -> None:
        """Pings in flight end with the link (they raise LinkClosed)."""
        if self._pings:
            for waiter in self._pings.values():
                waiter.set()

    def has_unread_data(self) -> bool:
        """Whether the peer's bytes wait in the socket, not yet read (the receiving task has not got to them).

        A liveness check on a busy event loop asks this before calling a silent peer dead: an answer that arrived
        in time but was not yet read is not silence.
        """
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream) or self._state is LinkState.DROPPED or not hasattr(select, "poll"):
            return False  # (no poll() on Windows: the check then never spares a link, as before it existed)
        poller = select.poll()
        try:
            poller.register(stream.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        """Send one message as a text frame. Raises :class:`LinkClosed` if the link is gone."""
        await self.send_text(encode_text(message))

    async def send_text(self, text: str) -> None:
        await self._send_event(TextMessage(data=text))

    async def _send_event(self, event: Event, *, closing: bool = False) -> None:
        """Encode and write one event under the send lock; ``closing`` lets the close frame itself through.

        An uncontended lock is taken without a schedule point of its own (``send_all`` has one): one task switch
        per frame instead of two. Errors are mapped inline, not through ``map_exceptions``: this is every frame.
        A whole text message on an open connection is framed by :func:`text_frame` (wsproto's general framing
        path is several times slower); everything else, and every state check, goes through wsproto.
        """
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._state is not LinkState.OPEN and not closing:
                raise self._closed_error()
            # A cancellation seen here has sent nothing; past this point, one can cut a frame in half.
            await trio.lowlevel.checkpoint_if_cancelled()
            ws = self._ws
            if type(event) is TextMessage and event.message_finished and ws.state is ConnectionState.OPEN:
                data: bytes | bytearray = text_frame(event.data.encode(), masked=ws.client)
            else:
                try:
                    data = ws.send(event)
                except LocalProtocolError as exc:  # our close went out, or the connection is over
                    raise LinkClosed() from exc
            try:
                await self._stream.send_all(data)
            except STREAM_ERRORS as exc:  # the peer went away
                self._end(None, None)
                raise LinkClosed() from exc
            except trio.Cancelled:
                # Cancelled part-way through a frame: nothing more may be written on this stream, not even a close.
                if not self._end(None, "a send was interrupted"):
                    self._close_code, self._close_reason = None, "a send was interrupted"
                raise
        finally:
            lock.release()

    async def receive(self) -> str:
        """The next text frame. Raises :class:`LinkClosed` when the link ends, :class:`BinaryFrame` on binary.

        Pings are answered and the peer's close is acknowledged here, by the receiving task, as they arrive.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this link")
        self._receiving = True
        try:
            while True:
                for event in self._ws.events():
                    # wsproto yields exactly these classes: ``type(...) is`` spares ABCMeta's isinstance per frame.
                    # Once the link is over (an oversized message, our close), what follows is not delivered.
                    if type(event) is TextMessage or type(event) is BytesMessage:
                        if self._state is not LinkState.OPEN:
                            continue
                        if (
                            type(event) is TextMessage
                            and event.message_finished
                            and self._parts is None
                            and self._size == 0
                            and len(event.data) <= self._max_message_size
                        ):
                            return event.data  # a whole text frame, the common case
                        message = await self._collect(event)
                        if message is not None:
                            return message
                    elif type(event) is Ping:
                        if self._state is LinkState.OPEN:
                            await self._send_event(event.response())
                    elif type(event) is Pong:
                        self._on_pong(bytes(event.payload))
                    elif type(event) is CloseConnection:
                        await self._on_close(event)
                if self._state is not LinkState.OPEN:
                    raise self._closed_error()
                await self._read()
        finally:
            self._receiving = False

    async def ping(self) -> None:
        """Send a ping and wait for its pong (the caller's scope bounds the wait). Raises :class:`LinkClosed`.

        The pong is seen by the task that receives; a link nobody reads never answers a ping.
        """
        if self._pings is None:
            self._pings = {}
        payload = os.urandom(4)
        while payload in self._pings:
            payload = os.urandom(4)
        waiter = self._pings[payload] = trio.Event()
        try:
            await self._send_event(Ping(payload=payload))
            await waiter.wait()
        finally:
            del self._pings[payload]
        if self._state is not LinkState.OPEN:
            raise self._closed_error()

    async def send_ping(self) -> None:
        """Send a ping and return once it is written, without waiting for a pong. Raises :class:`LinkClosed`.

        For a keepalive that watches many links from one task: the pong, like any other frame, shows in
        :attr:`heard_at` once the receiving task reads it. The empty payload matches no waiting :meth:`ping`.
        """
        await self._send_event(Ping())

    def _on_pong(self, payload: bytes) -> None:
        """A pong answers its ping and every ping sent before it (RFC 6455 allows answering only the latest)."""
        if not self._pings:
            return
        if payload not in self._pings:
            return  # an unsolicited pong (a unidirectional heartbeat) answers nothing
        for key, waiter in list(self._pings.items()):
            waiter.set()
            if key == payload:
                break

    async def _collect(self, event: TextMessage | BytesMessage) -> str | None:
        """Add a message fragment; the whole text once it is complete. Bounded by ``max_message_size``."""
        self._size += len(event.data)
        if self._size > self._max_message_size:
            self._size, self._parts = 0, None
            await self._fail(CLOSE_MESSAGE_TOO_BIG, f"message larger than {self._max_message_size} bytes")
            raise self._closed_error()
        if isinstance(event, BytesMessage):
            if event.message_finished:
                size, self._size, self._parts = self._size, 0, None
                raise BinaryFrame(size)
            return None  # a binary message is only counted, never kept
        if not event.message_finished:
            if self._parts is None:
                self._parts = []
            self._parts.append(event.data)
            return None
        parts, self._parts, self._size = self._parts, None, 0
        if parts is None:
            return event.data
        parts.append(event.data)
        return "".join(parts)

    async def _read(self) -> None:
        try:
            data = bytes(await self._stream.receive_some(RECEIVE_BYTES))
        except STREAM_ERRORS:
            data = b""
        if data:
            self._heard_at = trio.current_time()
        turnstile = self._close_turnstile
        if turnstile is not None and not self._close_paced and (not data or data[0] == _CLOSE_FRAME_FIRST_BYTE):
            # What looks like the peer's close (the end of the stream, or bytes that start with a close frame)
            # waits for its pass before it is even parsed: parsing is most of a close's cost, and thousands of
            # closes become readable in the same pass. (A look only: a chunk that starts with that byte in the
            # middle of a frame is delayed one pass, nothing more; a close behind other frames is paced when
            # it is handled, in _on_close.)
            self._close_paced = True
            try:
                await turnstile.pass_through()
            finally:
                self._ws.receive_data(data or None)  # (even when cancelled: the close is then still seen)
            return
        self._ws.receive_data(data or None)  # None (EOF) becomes a CloseConnection with code 1006

    async def _on_close(self, event: CloseConnection) -> None:
        """The peer closed, broke the protocol (wsproto reports that as a close too) or went away.

        A close the peer started waits for its pass of the link's close turnstile first, unless its bytes did
        already (:meth:`_read`; the link is already over for its users: :meth:`_end` recorded why). Having waited
        or sent the acknowledgement, this has been a schedule point, so the socket is then dropped without
        another one: a close is the same number of task steps paced as it was unpaced.
        """
        checkpointed = False
        if self._end(event.code, event.reason or None):
            if self._close_turnstile is not None and not self._close_paced:
                self._close_paced = True
                await self._close_turnstile.pass_through()
                checkpointed = True
            # Not our close, nor a broken send: acknowledge it (a no-op after an EOF, which wsproto reports as 1006,
            # or once another task dropped the socket meanwhile).
            if self._state is LinkState.CLOSING and self._ws.state in (
                ConnectionState.OPEN,
                ConnectionState.REMOTE_CLOSING,
            ):
                try:
                    await self._send_event(event.response(), closing=True)
                    checkpointed = True
                except LinkClosed:
                    pass
        await self._drop(checkpoint=not checkpointed)

    async def _fail(self, code: int, reason: str) -> None:
        """End the link from our side because of what the peer sent: a close frame, then hang up."""
        if self._end(code, reason):
            try:
                await self._send_event(CloseConnection(code=code, reason=reason), closing=True)
            except LinkClosed:
                pass
        await self._drop()

    def _closed_error(self) -> LinkClosed:
        return LinkClosed(self._close_code, self._close_reason)

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """Close with a closing handshake, bounded by :data:`CLOSE_GRACE` and shielded from cancellation.

        The peer's answer is awaited only when no other task is receiving (that task sees it instead) and the
        caller is not cancelled; when it is, the close frame is sent and the socket dropped after
        :data:`CANCELLED_CLOSE_GRACE`.
        """
        if self._state is LinkState.DROPPED:
            return
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(CANCELLED_CLOSE_GRACE if cancelled else CLOSE_GRACE, shield=True):
            if self._state is LinkState.OPEN and self._ws.state is ConnectionState.OPEN:
                self._end(code, reason)  # what receive and send report from now on
                try:
                    await self._send_event(CloseConnection(code=code, reason=clip_reason(reason)), closing=True)
                    if not self._receiving and not cancelled:
                        await self._await_peer_close()
                except LinkClosed:
                    pass
        await self._drop()

    async def _await_peer_close(self) -> None:
        while self._ws.state is ConnectionState.LOCAL_CLOSING:
            for _ in self._ws.events():
                pass  # frames the peer sent before it saw our close are of no use any more
            if self._ws.state is not ConnectionState.LOCAL_CLOSING:
                return
            await self._read()

    async def _drop(self, *, checkpoint: bool = True) -> None:
        """Close the socket (bounded, shielded); safe to call more than once. ``checkpoint`` False: the caller has
        just been through a schedule point, so a plain socket is closed without another (TLS still says goodbye)."""
        if self._state is LinkState.DROPPED:
            return
        self._state = LinkState.DROPPED  # (why stays as recorded; none if the link was still open)
        self._wake_pings()
        stream = self._stream
        if isinstance(stream, trio.SocketStream):
            # What SocketStream.aclose does (tasks blocked on the socket are woken), without a cancel scope.
            stream.socket.close()
            if checkpoint:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return
        with trio.move_on_after(CANCELLED_CLOSE_GRACE, shield=True):  # TLS: close_notify, bounded
            try:
                await stream.aclose()
            except STREAM_ERRORS:
                pass


def text_frame(payload: bytes, *, masked: bool) -> bytes:
    """One whole text frame (FIN, opcode 1) carrying ``payload``, masked with a fresh key when ``masked`` (a
    client's frames, RFC 6455 §5.3). The XOR runs over the payload as one big integer."""
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = bytes((0x81, mask_bit | size))
    elif size < 1 << 16:
        header = bytes((0x81, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = os.urandom(4)
    if not size:
        return header + key
    keystream = (key * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(size, "little")
    return header + key + body


def clip_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    encoded = reason.encode()
    if len(encoded) <= _MAX_CLOSE_REASON:
        return reason
    return encoded[: _MAX_CLOSE_REASON - 3].decode(errors="ignore") + "..."
