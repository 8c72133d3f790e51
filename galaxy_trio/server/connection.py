"""One AIP connection, from its first frame to its close: registration, a single reader, its sessions.

A connection is one task. It opens a nursery of its own at its first TASK, to hold the sessions it asks for (most
connections never send one); its keepalive is the server's (:mod:`.keepalive`: one task for every link), which
tells it when its peer fell silent. Exactly one task reads the socket and handles frames in order (UFO handles
each frame in its own task, so its replies can come back out of order, §11.8). The protocol decisions come from
:mod:`.rules`; this module only carries them out.

Whatever ends a connection (the peer closing, a binary frame, a keepalive timeout, a server shutdown), the same
cleanup runs: the client leaves the registry, sessions on it as a device fail at once towards their requesters,
sessions it asked for are cancelled with their device told, constellations registered for it (as a device) are
told and closed, and the socket is closed with a code and a reason. No connection is ever left open and unread
(UFO's zombie sockets, §11.3), nor registered with nothing left to do.

Two bounds keep one peer from costing the others: every frame it sends spends its frame budget
(:class:`~.rules.FrameBudget`; an exhausted budget closes it with 1008), and every frame sent to it, by its own
reader or by a session (a COMMAND, a TASK_END), must leave within ``send_deadline``, or it is closed with 1008
("not reading"): a peer that reads nothing holds a blocked send for that long at most, never the server's memory
or a session forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from ..aip import (
    AIPDecodeError,
    ClientMessage,
    ClientMessageType,
    ClientType,
    ServerMessage,
    builders,
    decode_client_message,
    encode_text,
)
from ..errors import BinaryFrame, LinkClosed
from ..transport import CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, CLOSE_UNSUPPORTED_DATA, ServerLink
from . import rules
from .clients import ClientRecord, ClientRegistry
from .keepalive import Keepalive, LinkWatch
from .sessions import Session, SessionDriver, deliver_command_results
from .settings import ServerSettings
from .stats import ServerStats

__all__ = ["BoundedLink", "ServerContext", "handle_connection"]

logger = logging.getLogger("galaxy_trio.server")

CLOSE_INTERNAL_ERROR: Final = 1011
BINARY_FRAME_ERROR: Final = "Binary frames are not supported: AIP frames are JSON text"
#: How much of a client's ERROR text goes into the server log.
_LOGGED_CHARS: Final = 300
NOT_READING: Final = "not reading"


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What every connection of one server shares."""

    registry: ClientRegistry
    settings: ServerSettings
    driver: SessionDriver
    stats: ServerStats = field(default_factory=ServerStats)
    #: The server-wide keepalive every registered connection is watched by (None: keepalive off).
    keepalive: Keepalive | None = None


async def handle_connection(ctx: ServerContext, link: ServerLink, remote: str) -> None:
    """Serve one accepted link until it closes; the link is closed when this returns."""
    await _Connection(ctx, ctx.stats.count(link), remote).run()


class BoundedLink:
    """A connection's link as the server's tasks send on it: each frame must leave within ``deadline`` seconds.

    A send that does not (the peer stopped reading and its TCP window is full) calls ``on_stuck``, which ends the
    connection, and raises :class:`LinkClosed` (1008, "not reading") to the sender, so a session waiting to send a
    COMMAND or a TASK_END to a peer that reads nothing fails at the deadline instead of hanging on it.
    """

    __slots__ = ("__weakref__", "_deadline", "_link", "_on_stuck")

    def __init__(self, link: ServerLink, deadline: float, on_stuck: Callable[[], None]) -> None:
        self._link = link
        self._deadline = deadline
        self._on_stuck: Callable[[], None] | None = on_stuck

    def let_go(self) -> None:
        """The connection is over: forget its callback. A send that is stuck from now on still raises, and the
        connection (which the callback holds) is not kept alive, nor in a cycle, by whoever still holds this."""
        self._on_stuck = None

    @property
    def closed(self) -> bool:
        return self._link.closed

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        await self.send_text(encode_text(message))

    async def send_text(self, text: str) -> None:
        with trio.move_on_after(self._deadline) as sending:
            await self._link.send_text(text)
        if sending.cancelled_caught:
            on_stuck = self._on_stuck
            if on_stuck is not None:
                on_stuck()
            raise LinkClosed(CLOSE_POLICY_VIOLATION, NOT_READING)

    async def receive(self) -> str:
        return await self._link.receive()

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        await self._link.aclose(code, reason)


class _Connection:
    __slots__ = (
        "__weakref__",
        "_budget",
        "_close_code",
        "_close_reason",
        "_ctx",
        "_final_error",
        "_gone",
        "_link",
        "_nursery",
        "_out",
        "_reader_scope",
        "_receiving",
        "_record",
        "_remote",
        "_stopping",
        "_target",
        "_watch",
    )

    def __init__(self, ctx: ServerContext, link: ServerLink, remote: str) -> None:
        self._ctx = ctx
        self._link = link
        self._out = BoundedLink(link, ctx.settings.send_deadline, self._not_reading)
        self._budget = rules.FrameBudget(ctx.settings.frame_rate, ctx.settings.frame_burst, trio.current_time())
        self._remote = remote
        self._record: ClientRecord | None = None
        self._target: ClientRecord | None = None
        self._nursery: trio.Nursery | None = None
        self._reader_scope = trio.CancelScope()
        self._watch: LinkWatch | None = None
        self._close_code = CLOSE_NORMAL
        self._close_reason: str | None = None
        self._final_error: str | None = None
        self._gone = False
        self._receiving = False
        self._stopping = False

    @property
    def _who(self) -> str:
        record = self._record
        if record is None:
            return self._remote
        return f"{record.role.value} {rules.shown(record.client_id)!r} ({self._remote})"

    async def run(self) -> None:
        try:
            record = await self._register()
            if record is None:
                return
            keepalive = self._ctx.keepalive
            if keepalive is not None:
                self._watch = keepalive.watch(self._link, self._silent)
            first_task = await self._read(record, None)
            if first_task is not None:
                # Sessions outlive the reader (they still deliver their TASK_END), so they need a nursery outside
                # its scope: opened at the first TASK, which most connections never send.
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._reader_scope = trio.CancelScope()
                    await self._read(record, first_task)
                    self._forget_keepalive()
                    self._disconnect()
                    # The nursery now waits for this client's sessions to deliver their TASK_END (bounded).
            self._forget_keepalive()
            self._disconnect()
            await self._send_final_error()
        finally:
            self._forget_keepalive()
            self._disconnect()
            self._let_go()
            await self._link.aclose(self._close_code, self._close_reason)

    async def _read(self, record: ClientRecord, first_task: ClientMessage | None) -> ClientMessage | None:
        """Be the connection's reader, in ``_reader_scope``, until the link ends or is stopped (None), or, while
        the connection has no nursery yet, until a TASK comes (returned unhandled, for :meth:`run`)."""
        with self._reader_scope:
            try:
                if first_task is None:
                    await self._out.send(builders.registration_confirmation())
                else:
                    await self._dispatch_guarded(record, first_task)
                return await self._read_loop(record)
            except LinkClosed as exc:
                logger.info("%s disconnected (%s)", self._who, exc)
        return None

    def _stop(self, error: str | None, code: int, reason: str, *, force: bool = False) -> None:
        """End the connection: the reader stops (at once if it is waiting for a frame, else after the frame it is
        handling, so a reply is never cut in half), then the usual cleanup runs, ``error`` is sent and the socket
        is closed with ``code``. ``force`` stops even a reader stuck sending to a peer that no longer reads."""
        if self._stopping:
            return
        self._stopping = True
        self._final_error = error
        self._close_code, self._close_reason = code, reason
        if force or self._receiving:
            self._reader_scope.cancel()

    # --- registration -------------------------------------------------------------------------------------------

    async def _register(self) -> ClientRecord | None:
        """Read the first frame within the registration deadline and register it, or refuse and close."""
        ctx = self._ctx
        deadline = ctx.settings.registration_deadline
        frame: str | None = None
        with trio.move_on_after(deadline):
            try:
                frame = await self._link.receive()
            except BinaryFrame:
                ctx.stats.reject("binary")
                logger.warning("%s sent a binary first frame; closing", self._remote)
                await self._refuse(BINARY_FRAME_ERROR, CLOSE_UNSUPPORTED_DATA, "binary frame")
                return None
            except LinkClosed:
                logger.debug("%s closed before registering", self._remote)
                return None
        if frame is None:
            logger.warning("%s sent no REGISTER within %g s; closing", self._remote, deadline)
            await self._refuse(
                f"No REGISTER frame received within {deadline:g} s", CLOSE_POLICY_VIOLATION, "registration timeout"
            )
            return None
        decision = rules.check_register(
            frame, ctx.registry.clients, max_client_id_length=ctx.settings.max_client_id_length
        )
        if isinstance(decision, rules.Rejection):
            ctx.stats.reject("register")
            logger.warning("registration from %s refused: %s", self._remote, decision.error)
            await self._refuse(decision.error, decision.close_code, decision.close_reason)
            return None
        record = ClientRecord.from_registration(decision, self._out)
        ctx.registry.add(record)
        self._record = record
        if record.target_id is not None:
            # check_register found the target connected as a device, and nothing awaited since.
            self._target = ctx.registry.get(record.target_id)
            assert self._target is not None
            self._target.scoped.add(record)
            record.on_target_gone = self._target_gone
        logger.info("%s registered (platform %s)", self._who, rules.shown(record.platform))
        return record

    async def _refuse(self, error: str, code: int, reason: str) -> None:
        """Tell the peer why in an ERROR frame (bounded: the peer may not read), then close with ``code``."""
        self._close_code, self._close_reason = code, reason
        with trio.move_on_after(self._ctx.settings.cancel_grace):
            try:
                await self._link.send(builders.server_error(error))
            except LinkClosed:
                pass

    # --- the single reader --------------------------------------------------------------------------------------

    async def _read_loop(self, record: ClientRecord) -> ClientMessage | None:
        """Read and handle frames in order; a TASK that needs the nursery first is returned (see :meth:`_read`)."""
        link = self._link
        budget = self._budget
        while not self._stopping:
            self._receiving = True
            try:
                frame = await link.receive()
            except BinaryFrame as exc:
                self._ctx.stats.reject("binary")
                logger.warning("%s sent a binary frame (%d bytes); closing", self._who, exc.size)
                self._stop(BINARY_FRAME_ERROR, CLOSE_UNSUPPORTED_DATA, "binary frame")
                return None
            finally:
                self._receiving = False
            if not budget.take(trio.current_time()):
                logger.warning(
                    "%s exceeded its frame budget (%g/s, burst %d); closing", self._who, budget.rate, budget.burst
                )
                self._ctx.stats.reject("frame_budget")
                self._stop(budget.refusal(), CLOSE_POLICY_VIOLATION, rules.FRAME_RATE_EXCEEDED)
                return None
            deferred = await self._handle(record, frame)
            if deferred is not None:
                return deferred
        return None

    async def _handle(self, record: ClientRecord, frame: str) -> ClientMessage | None:
        """Handle one frame; a TASK while the connection has no nursery is returned instead (see :meth:`run`)."""
        try:
            msg = decode_client_message(frame)
        except AIPDecodeError as exc:
            self._ctx.stats.reject("decode")
            await self._reply_error(str(exc))
            return None
        mismatch = rules.check_identity(msg, record)
        if mismatch is not None:
            self._ctx.stats.reject("identity")
            await self._reply_error(mismatch)
            return None
        if msg.type is ClientMessageType.TASK and self._nursery is None:
            return msg
        await self._dispatch_guarded(record, msg)
        return None

    async def _dispatch_guarded(self, record: ClientRecord, msg: ClientMessage) -> None:
        try:
            await self._dispatch(record, msg)
        except LinkClosed:
            raise
        except Exception:
            # A bug must cost one frame, not the connection or the server.
            logger.exception("internal error handling a %s frame from %s", msg.type.value, self._who)
            await self._reply_error(f"Internal server error while handling a '{msg.type.value}' message")

    async def _dispatch(self, record: ClientRecord, msg: ClientMessage) -> None:
        kind = msg.type
        if kind is ClientMessageType.HEARTBEAT:
            await self._send(builders.heartbeat_ack())
        elif kind is ClientMessageType.COMMAND_RESULTS:
            self._on_command_results(record, msg)
        elif kind is ClientMessageType.TASK:
            await self._on_task(record, msg)
        elif kind is ClientMessageType.DEVICE_INFO_REQUEST:
            answer = rules.check_device_info(msg, record, self._ctx.registry.clients)
            if isinstance(answer, str):
                self._ctx.stats.reject("device_info")
                await self._reply_error(answer)
            else:
                await self._send(builders.device_info_response(msg.request_id, answer.result))
        elif kind is ClientMessageType.ERROR:
            text = msg.error if msg.error is not None else "error frame without text"
            logger.warning("%s reported an error: %s", self._who, text[:_LOGGED_CHARS])
            await self._reply_error(text)
        elif kind is ClientMessageType.DEVICE_INFO_RESPONSE:
            logger.info("%s sent a device_info_response; nothing asked for it, ignored", self._who)
        else:  # register again, task_end
            self._ctx.stats.reject("unknown_type")
            await self._reply_error(rules.unknown_type(kind))

    def _on_command_results(self, record: ClientRecord, msg: ClientMessage) -> None:
        """Feed the waiting COMMAND. Never answered, as UFO's clients expect (§7): unmatched results are dropped."""
        if record.role is not ClientType.DEVICE:
            self._ctx.stats.reject("command_results")
            logger.warning("dropped command_results from %s: only devices execute commands", self._who)
        elif not deliver_command_results(record, msg):
            self._ctx.stats.reject("command_results")
            logger.warning(
                "dropped command_results from %s: no COMMAND %s is waiting in session %s",
                self._who,
                rules.shown(str(msg.prev_response_id)),
                rules.shown(str(msg.session_id)),
            )

    async def _on_task(self, record: ClientRecord, msg: ClientMessage) -> None:
        ctx = self._ctx
        registry = ctx.registry
        plan = rules.check_task(
            msg,
            record,
            registry.clients,
            registry,
            max_tasks_per_device=ctx.settings.max_tasks_per_device,
        )
        if isinstance(plan, str):
            ctx.stats.reject("task")
            await self._reply_error(plan)
            return
        device = registry.get(plan.device_id)
        assert device is not None  # check_task found it connected, and nothing awaited since
        session = Session(plan, record, device, ctx.driver, ctx.settings, registry)
        session.attach()
        try:
            await self._send(builders.heartbeat_ack(plan.session_id))
        except BaseException:
            session.detach()
            raise
        logger.info(
            "task %s accepted from %s for device %s",
            rules.shown(plan.session_id),
            self._who,
            rules.shown(plan.device_id),
        )
        assert self._nursery is not None
        self._nursery.start_soon(session.run)

    # --- sending ------------------------------------------------------------------------------------------------

    async def _send(self, message: ServerMessage) -> None:
        await self._out.send(message)

    async def _reply_error(self, text: str) -> None:
        await self._out.send(builders.server_error(text))

    async def _send_final_error(self) -> None:
        if self._final_error is None or self._link.closed:
            return
        with trio.move_on_after(self._ctx.settings.cancel_grace):
            try:
                await self._link.send(builders.server_error(self._final_error))
            except LinkClosed:
                pass

    # --- liveness and cleanup -----------------------------------------------------------------------------------

    def _silent(self) -> None:
        """The keepalive's verdict: the peer sent nothing for ``ping_interval``, was pinged, and sent nothing for
        ``ping_timeout`` more (a vanished host, as far as the server can tell). It is unregistered, then closed
        with 1011."""
        logger.warning("%s did not answer a ping within %g s; closing", self._who, self._ctx.settings.ping_timeout)
        self._stop(None, CLOSE_INTERNAL_ERROR, "keepalive ping timeout", force=True)

    def _forget_keepalive(self) -> None:
        """The reader stopped: the keepalive has nothing left to watch. Idempotent."""
        watch, self._watch = self._watch, None
        if watch is not None and self._ctx.keepalive is not None:
            self._ctx.keepalive.forget(watch)

    def _not_reading(self) -> None:
        """A frame for this peer did not leave within ``send_deadline``: it reads nothing, so it is closed."""
        logger.warning(
            "%s took no frame within %g s (not reading); closing", self._who, self._ctx.settings.send_deadline
        )
        self._stop(None, CLOSE_POLICY_VIOLATION, NOT_READING, force=True)

    def _target_gone(self) -> None:
        """This scoped constellation's device disconnected: the link has no purpose left, so it is closed rather
        than left registered and idle (UFO keeps it, and its Galaxy never learns that the device went away)."""
        assert self._target is not None
        logger.info("closing %s: its target device disconnected", self._who)
        self._stop(
            f"Target device '{rules.shown(self._target.client_id)}' disconnected",
            CLOSE_NORMAL,
            "target device disconnected",
        )

    def _let_go(self) -> None:
        """Break the cycles between this connection and what outlives it, so that reference counting alone frees
        it once it ends: its record's callback and its bounded link's both hold this object, and the record holds
        the bounded link (a session settling may still hold the record, or the link). Never awaits."""
        self._out.let_go()
        record = self._record
        if record is not None:
            record.on_target_gone = None

    def _disconnect(self) -> None:
        """Leave the registry and settle every session this client was part of. Idempotent, never awaits."""
        record = self._record
        if record is None or self._gone:
            return
        self._gone = True
        self._ctx.registry.remove(record)
        if self._target is not None:
            self._target.scoped.discard(record)
        # Sessions on this device fail first, so their TASK_END reaches a scoped constellation before its close.
        for session in self._ctx.registry.sessions_on(record):
            session.cancel_device_gone()
        for session in self._ctx.registry.sessions_asked_by(record):
            session.cancel_requester_gone()
        for constellation in list(record.scoped):
            if constellation.on_target_gone is not None:
                constellation.on_target_gone()
        record.gone = True
        for pending in record.pending.values():
            if pending.abandoned:  # nothing will answer it now: the sessions waiting on the device go on
                pending.done.set()
        logger.info("%s unregistered", self._who)
