"""One AIP conversation between the manager and the server, for one device, over one WebSocket: a thin trio
driver of :class:`galaxy_trio.aip.client_protocol.ClientProtocol`, which decides what every frame means.

A single reader task decodes every frame and hands it to whoever waits for it: the registration, a DEVICE_INFO
request (by ``request_id``), a task (by ``session_id``, on this link only). When the link ends — closed, broken, a
binary frame, a missed heartbeat — :meth:`ClientSession.end` records why, fails every waiter at once and cancels the
connection's nursery, so nothing waits on a dead link. No reply can be missed however late the reader first runs:
each request's slot is armed before the request is sent, and a reply waits in the socket until it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..aip import AIPDecodeError, ClientMessage, ServerMessage, ServerMessageType, builders
from ..aip.client_protocol import (
    ClientProtocol,
    DeviceInfoAnswered,
    Event,
    RegistrationState,
    Role,
    ServerError,
    ServerFrame,
    TaskAcked,
    TaskEnded,
    Unsolicited,
    Verdict,
)
from ..errors import LinkError
from ..transport import ClientLink

__all__ = ["MAX_PEER_TEXT", "ClientSession", "PendingTask", "Reply", "SessionEnded", "TaskTable", "clip", "frame_error"]

logger = logging.getLogger("galaxy_trio.manager")


class SessionEnded(LinkError):
    """The link ended while a reply was awaited; the message says why."""


class Reply:
    """A one-shot slot for the answer to one request. ``wait`` returns the frame or raises the failure."""

    __slots__ = ("_error", "_event", "_frame")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._frame: ServerMessage | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def resolve(self, frame: ServerMessage) -> None:
        if not self._event.is_set():
            self._frame = frame
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> ServerMessage:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        assert self._frame is not None
        return self._frame


class PendingTask(Reply):
    """A task sent on this link, awaiting its TASK_END; ``acked`` once the server's task ack arrived."""

    __slots__ = ("acked", "task_id")

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id
        self.acked = False


class TaskTable(dict[str, PendingTask]):
    """Tasks in flight on one link, by session_id (filled by the task layer); the protocol learns each one, so
    only their acks and ends are attributed to them."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: ClientProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    def __setitem__(self, session_id: str, pending: PendingTask) -> None:
        self._protocol.expect_task(session_id)
        super().__setitem__(session_id, pending)

    def pop(self, session_id: str, default: PendingTask | None = None) -> PendingTask | None:  # type: ignore[override]
        self._protocol.forget_task(session_id)
        return super().pop(session_id, default)


class ClientSession:
    """Routes the frames of one constellation link to their waiters; see the module docstring."""

    __slots__ = (
        "_info_requests",
        "_link",
        "_registration",
        "_scope",
        "device_id",
        "end_reason",
        "on_error",
        "on_heartbeat",
        "on_task_end",
        "protocol",
        "tasks",
    )

    def __init__(
        self,
        link: ClientLink,
        scope: trio.CancelScope,
        device_id: str,
        *,
        client_id: str | None = None,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
    ) -> None:
        self._link = link
        self._scope = scope
        self.device_id = device_id
        self.end_reason: str | None = None
        self.protocol = ClientProtocol(
            Role.CONSTELLATION,
            client_id or device_id,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            now=trio.current_time(),
        )
        self._registration: Reply | None = None
        self._info_requests: dict[str, Reply] = {}
        #: Tasks in flight on this link, by session_id (owned by the task layer).
        self.tasks: TaskTable = TaskTable(self.protocol)
        self.on_heartbeat: Callable[[ServerMessage], None] | None = None
        self.on_error: Callable[[str], None] | None = None
        self.on_task_end: Callable[[ServerMessage], None] | None = None

    @property
    def last_frame_at(self) -> float:
        """Trio time of the last frame from the server (decodable or not)."""
        return self.protocol.heartbeats.last_frame_at

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    async def send(self, message: ClientMessage) -> None:
        """Send a frame; if the link is broken, end the session and raise :class:`SessionEnded`."""
        if self.end_reason is not None:
            raise SessionEnded(self.end_reason)
        try:
            await self._link.send(message)
        except LinkError as exc:
            self.end(f"send failed: {exc}")
            raise SessionEnded(self.end_reason or str(exc)) from None

    def has_unread_data(self) -> bool:
        """Whether frames from the server wait in the socket, unread: the link is not silent, only behind."""
        return self._link.has_unread_data()

    def expect_registration(self, frame: ClientMessage) -> Reply:
        """Arm the registration slot for REGISTER ``frame``; the verdict frame answers it."""
        self.protocol.register(frame)
        self._registration = reply = Reply()
        return reply

    def expect_device_info(self, device_id: str, request_id: str) -> tuple[ClientMessage, Reply]:
        """The DEVICE_INFO request frame to send, and the slot its answer arrives in."""
        reply = Reply()
        self._info_requests[request_id] = reply
        return self.protocol.device_info_request(device_id, request_id), reply

    def forget_device_info(self, request_id: str) -> None:
        self.protocol.forget_device_info(request_id)
        self._info_requests.pop(request_id, None)

    def end(self, reason: str) -> None:
        """Record why the link ended (first reason wins), fail every waiter, stop the connection's tasks."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        error = SessionEnded(reason)
        if self._registration is not None:
            self._registration.fail(error)
        for reply in self._info_requests.values():
            reply.fail(error)
        self._info_requests.clear()
        for reply in self.tasks.values():
            reply.fail(error)
        self._scope.cancel()

    async def read_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The connection's only reader. Returns (after :meth:`end`) when the link ends. The manager starts it with
        ``start_soon``; ``task_status`` is for a caller that wants to know it runs (``nursery.start``)."""
        task_status.started()
        link = self._link
        protocol = self.protocol
        try:
            while True:
                text = await link.receive()
                try:
                    events = protocol.receive_text(text, trio.current_time())
                except AIPDecodeError as exc:
                    # One bad frame is the server's bug, not a reason to drop a working link.
                    logger.warning("device %s: ignoring undecodable frame from server: %s", self.device_id, exc)
                    continue
                for event in events:
                    self._dispatch(event)
        except LinkError as exc:
            self.end(str(exc))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ServerFrame):
            if event.frame.type is ServerMessageType.HEARTBEAT and self.on_heartbeat is not None:
                self.on_heartbeat(event.frame)
        elif isinstance(event, Verdict):
            registration = self._registration
            self._registration = None  # the waiter holds it; an idle link keeps no frame
            if registration is not None:
                registration.resolve(_verdict_frame(event))
        elif isinstance(event, TaskAcked):
            pending = self.tasks.get(event.session_id)
            if pending is not None:
                pending.acked = True
            if self.on_heartbeat is not None:
                self.on_heartbeat(event.frame)
        elif isinstance(event, DeviceInfoAnswered):
            reply = self._info_requests.pop(event.request_id, None)
            if reply is not None:
                reply.resolve(event.frame)
        elif isinstance(event, TaskEnded):
            if self.on_task_end is not None:
                self.on_task_end(event.frame)
        elif isinstance(event, ServerError):
            # Server-supplied text ends up in logs, statuses and task results: bound it here, once.
            self._on_error(clip(event.text))
        else:
            assert isinstance(event, Unsolicited)
            frame = event.frame
            if frame is not None and frame.type is ServerMessageType.TASK_END:
                # Unknown session, or a session of another device's link: never ours to act on (UFO advisory class).
                logger.warning(
                    "device %s: ignoring TASK_END for unknown session %r",
                    self.device_id,
                    clip(frame.session_id or "", 100),
                )
            else:
                logger.debug("device %s: ignored: %s", self.device_id, event.why)

    @property
    def registered(self) -> bool:
        return self.protocol.state is RegistrationState.REGISTERED

    def _on_error(self, text: str) -> None:
        # ERROR frames carry no correlation id (PROTOCOL.md §6): the protocol answered every DEVICE_INFO request.
        if self.on_error is not None:
            self.on_error(text)
        else:
            logger.warning("device %s: server error: %s", self.device_id, text)


def _verdict_frame(verdict: Verdict) -> ServerMessage:
    if verdict.outcome is None:
        return builders.registration_confirmation()
    return builders.server_error(verdict.text or verdict.outcome.reason)


def frame_error(frame: ServerMessage) -> str | None:
    """The error text of an ERROR frame (bounded by :func:`clip`), else ``None``."""
    if frame.type is ServerMessageType.ERROR:
        return clip(frame.error or "unspecified error")
    return None


#: The most characters of peer-supplied text (error texts, ids) that reach a log line, a status or a result.
MAX_PEER_TEXT = 500


def clip(text: str, limit: int = MAX_PEER_TEXT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out: a peer cannot flood our logs."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
