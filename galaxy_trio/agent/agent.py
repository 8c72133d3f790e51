"""The device agent: registers with an AIP server as a device and executes the COMMANDs it is sent.

One connection at a time, each one a small tree of tasks: the reader (the connection's own task), a heartbeat task,
and one task per COMMAND, so a slow tool never stops the reader from seeing the next frame or the heartbeat acks
(UFO's device read nothing while it executed, §2); the COMMANDs themselves still run one at a time, in arrival
order, as UFO's do, so two sessions' actions never interleave on the device. Whatever ends a connection — the server
closing, an invalid frame, a silent server, a rejected registration — is a :class:`~galaxy_trio.errors.LinkError`
recorded by the task that saw it; the connection's nursery is cancelled, the link closed (bounded by
``CLOSE_GRACE``), and :meth:`DeviceAgent.run` reconnects after a full-jitter backoff, re-registering from scratch
with fresh system info. Each attempt ends in the protocol's frozen :class:`~galaxy_trio.aip.client_protocol.Outcome`
(reason, permanent or not, what to check), which ``run`` logs, retries or stops on; the connection's state is one
:class:`AgentState`. The agent is a trio driver of :class:`galaxy_trio.aip.client_protocol.ClientProtocol` (the
registration verdict, the heartbeat schedule and liveness, the retryable/permanent classification it shares with the
manager). Only what retrying cannot fix — a refused token (HTTP 401/403, :class:`AuthenticationRejected`), a 404 or
a URL that cannot be dialled (:class:`ServerUnusable`) — or a spent ``max_retries`` budget ends ``run``.

Decisions where UFO's device is silent or defective:
- Every COMMAND gets exactly one COMMAND_RESULTS, whatever its tools do (UFO's sent nothing when one raised,
  §11.4).
- A rejected registration (ERROR in answer to REGISTER, e.g. a duplicate device id) is retried with backoff:
  the current holder of the id may be a previous incarnation of this device whose socket the server has not
  dropped yet. ``max_retries`` bounds it for callers who prefer to stop.
- Connect + handshake + registration confirmation share one ``registration_timeout``; a server that accepts
  the socket and never confirms is not waited on forever.
- Liveness is checked: if no frame at all arrives within ``heartbeat_timeout`` of a heartbeat, the link is
  declared dead and replaced (UFO relied on a 180 s WebSocket ping timeout, §11.2).
- A server-pushed TASK (§8.7) is answered as UFO's device answers it, with the device's own TASK request; that is
  what makes a UFO server's HTTP dispatch start a session on this device.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import trio

from ..aip import (
    AIPDecodeError,
    ClientType,
    Result,
    ResultStatus,
    ServerMessage,
    ServerMessageType,
    builders,
    decode_server_message,
    json_error,
    utc_timestamp,
)
from ..aip.client_protocol import (
    ClientProtocol,
    Heartbeats,
    Outcome,
    Role,
    Verdict,
    connect_outcome,
    handshake_outcome,
)
from ..backoff import Backoff
from ..errors import BinaryFrame, ConnectFailed, HandshakeRejected, LinkClosed, LinkError, RegistrationRejected
from ..redact import redact_url
from ..transport import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    DEFAULT_MAX_FRAME,
    ClientLink,
    open_link,
)
from .device_info import DeviceInfoProvider
from .errors import (
    AgentStopped,
    AuthenticationRejected,
    LinkDead,
    ProtocolViolation,
    RegistrationTimeout,
    RetriesExhausted,
    ServerUnusable,
)
from .tools import ToolExecutor, ToolRegistry, default_tools

__all__ = ["AgentState", "AgentStats", "DeviceAgent", "serve_device_agent"]

logger = logging.getLogger("galaxy_trio.agent")

#: Handshake statuses reported as :class:`AuthenticationRejected`; other permanent ones as :class:`ServerUnusable`.
_AUTH_STATUSES = (401, 403)
#: How the transport words a URL that cannot be dialled (a port out of range, a bad scheme).
_INVALID_URL = "invalid WebSocket URL"


class AgentState(enum.Enum):
    """Where the agent's current connection stands (one value, not a pair of booleans that could disagree)."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"  # the WebSocket is open, the registration not yet confirmed
    REGISTERED = "registered"


@dataclass(slots=True)
class AgentStats:
    """Counters over the agent's whole life (all connections), for tests, logs and the CLI."""

    connect_attempts: int = 0
    registrations: int = 0
    rejections: int = 0
    heartbeats_sent: int = 0
    frames_received: int = 0
    commands_answered: int = 0
    tasks_requested: int = 0
    invalid_frames: int = 0
    dead_links: int = 0


class _CommandTurns:
    """COMMANDs of one connection run one at a time, in the order they arrived — as UFO's device runs them (it
    awaits each in its receive loop) — while the reader stays free for heartbeats and the next frames.

    Two sessions may task one device at once (UFO's server does not serialise them, ours does): their actions
    must not interleave on one desktop. The reader takes a ticket as it dispatches (arrival order); a COMMAND's
    task waits for its turn. Only the whole connection is ever cancelled, so no ticket is left waiting alone.
    """

    __slots__ = ("_changed", "_issued", "_serving")

    def __init__(self) -> None:
        self._issued = 0
        self._serving = 0
        self._changed = trio.Event()

    def ticket(self) -> int:
        ticket, self._issued = self._issued, self._issued + 1
        return ticket

    async def wait_for(self, ticket: int) -> None:
        while self._serving != ticket:
            await self._changed.wait()

    def done(self) -> None:
        self._serving += 1
        self._changed.set()
        self._changed = trio.Event()


class _Connection:
    """State of one registered link, shared by its reader, heartbeat and command tasks."""

    __slots__ = ("beats", "close_code", "commands", "failure", "link", "nursery")

    def __init__(self, link: ClientLink, nursery: trio.Nursery, beats: Heartbeats) -> None:
        self.link = link
        self.nursery = nursery
        #: The protocol's heartbeat schedule and liveness (the reader reports frames, the heartbeat task beats).
        self.beats = beats
        self.commands = _CommandTurns()
        self.failure: LinkError | None = None
        self.close_code: int | None = None

    def fail(self, error: LinkError, close_code: int | None = None) -> None:
        """End the connection for ``error`` (the first reason wins) and cancel its tasks."""
        if self.failure is None:
            self.failure = error
            self.close_code = close_code
        self.nursery.cancel_scope.cancel()


class DeviceAgent:
    """A device that stays registered with one AIP server and runs the COMMANDs it is sent.

    ``tools`` defaults to the built-ins (``list_tools``, ``get_system_info``, ``echo``). ``platform`` overrides the
    detected platform reported in system_info and REGISTER metadata (the server picks its agent type from it).
    ``heartbeat_timeout`` is how long to wait, after a heartbeat, for any frame before declaring the link dead.
    ``registration_timeout`` bounds connect + handshake + registration confirmation. Reconnect delays are drawn
    from ``Backoff(reconnect_delay, backoff_cap)`` with full jitter; ``max_retries`` consecutive failures without
    a registration (None: no limit) end :meth:`run` with :class:`RetriesExhausted`. ``tool_deadline`` bounds
    each tool call that has no deadline of its own.
    """

    def __init__(
        self,
        server_url: str,
        device_id: str,
        *,
        tools: ToolRegistry | None = None,
        platform: str | None = None,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 10.0,
        reconnect_delay: float = 1.0,
        backoff_cap: float = 30.0,
        max_retries: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        tool_deadline: float = 300.0,
        registration_timeout: float = 10.0,
        skip_after_failure: bool = True,
        max_message_size: int = DEFAULT_MAX_FRAME,
        info_provider: DeviceInfoProvider | None = None,
        rng: random.Random | None = None,
    ) -> None:
        _check_arguments(
            server_url,
            device_id,
            max_retries,
            custom_metadata,
            platform_twice=platform is not None and info_provider is not None,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            registration_timeout=registration_timeout,
        )
        self.device_id = device_id
        self._url = server_url
        self._shown_url = redact_url(server_url)
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._registration_timeout = registration_timeout
        self._max_retries = max_retries
        self._backoff = Backoff(reconnect_delay, backoff_cap, rng=rng or random.Random())
        self._custom_metadata = dict(custom_metadata) if custom_metadata is not None else None
        self._info = info_provider or DeviceInfoProvider(platform=platform)
        self._tools = tools if tools is not None else default_tools(self.system_info)
        self._executor = _executor(self._tools, device_id, tool_deadline, skip_after_failure)
        self.stats = AgentStats()
        self._platform = "unknown"
        self._running = False
        self._state = AgentState.DISCONNECTED
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"DeviceAgent(device_id={self.device_id!r}, server={self._shown_url!r})"

    # --- observable state ------------------------------------------------------------------------------------

    @property
    def tools(self) -> ToolRegistry:
        return self._tools

    @property
    def connected(self) -> bool:
        """A WebSocket to the server is open (registered or not yet)."""
        return self._state is not AgentState.DISCONNECTED

    @property
    def registered(self) -> bool:
        """The server confirmed this device's registration on the current connection."""
        return self._state is AgentState.REGISTERED

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def registrations(self) -> int:
        """How many times the server has confirmed a registration (1 + the number of successful reconnects)."""
        return self.stats.registrations

    async def wait_until(self, predicate: Callable[[DeviceAgent], bool]) -> None:
        """Wait until ``predicate(agent)`` holds; re-checked on every connect, registration and disconnect."""
        while not predicate(self):
            await self._changed.wait()

    def _set_state(self, state: AgentState) -> None:
        self._state = state
        self._changed.set()
        self._changed = trio.Event()

    def system_info(self) -> dict[str, Any]:
        """A fresh ``system_info`` record for this device (what REGISTER carries)."""
        return self._info.collect(self.device_id, custom_metadata=self._custom_metadata)

    # --- the connection loop ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[DeviceAgent] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Stay registered until cancelled. ``task_status.started(self)`` follows the first registration.

        Raises :class:`AuthenticationRejected` on HTTP 401/403 at the handshake, :class:`ServerUnusable` on a 404
        (not an AIP server) or a URL that cannot be dialled, and :class:`RetriesExhausted` when ``max_retries`` is
        spent; every other failure is retried.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        failures = 0
        started = False

        def on_registered() -> None:
            nonlocal started, failures
            failures = 0
            if not started:
                started = True
                task_status.started(self)

        try:
            while True:
                self.stats.connect_attempts += 1
                outcome = await self._attempt(on_registered)
                if outcome.permanent:
                    stop = self._stopped(outcome)
                    logger.error("device %r: %s", self.device_id, stop)
                    raise stop
                failures += 1
                if self._max_retries is not None and failures > self._max_retries:
                    gave_up = RetriesExhausted(failures, outcome)
                    logger.error("device %r: %s", self.device_id, gave_up)
                    raise gave_up
                delay = self._backoff.delay(failures)
                logger.warning(
                    "device %r: %s; reconnecting to %s in %.2f s (failure %d)",
                    self.device_id,
                    outcome.describe(),
                    self._shown_url,
                    delay,
                    failures,
                )
                await trio.sleep(delay)
        finally:
            self._running = False
            if self._state is not AgentState.DISCONNECTED:
                self._set_state(AgentState.DISCONNECTED)

    async def _attempt(self, on_registered: Callable[[], None]) -> Outcome:
        """One connection, from dialling to its end, as the protocol's frozen :class:`Outcome`.

        The handshake and the dial are classified as the manager classifies them; whatever else ends a
        connection — a rejected registration included (see the module docstring) — is retryable for a device.
        """
        try:
            await self._connect_once(on_registered)
        except HandshakeRejected as exc:
            return handshake_outcome(exc.status_code)
        except ConnectFailed as exc:
            return connect_outcome(str(exc), invalid_url=str(exc).startswith(_INVALID_URL))
        except LinkError as exc:
            return Outcome(str(exc))

    def _stopped(self, outcome: Outcome) -> AgentStopped:
        """The :class:`AgentStopped` for a permanent outcome: a refused token, or a server time cannot fix."""
        for status in _AUTH_STATUSES:
            if outcome == handshake_outcome(status):
                return AuthenticationRejected(status, self._shown_url)
        return ServerUnusable(self._shown_url, outcome.describe())

    async def _connect_once(self, on_registered: Callable[[], None]) -> NoReturn:
        """Connect, register, serve; always ends with a :class:`LinkError` (or cancellation)."""
        system_info = self.system_info()
        platform = str(system_info.get("platform", "unknown"))
        protocol = ClientProtocol(
            Role.DEVICE,
            self.device_id,
            heartbeat_interval=self._heartbeat_interval,
            heartbeat_timeout=self._heartbeat_timeout,
            now=trio.current_time(),
        )
        register = protocol.register(
            ClientProtocol.device_register(self.device_id, platform=platform, system_info=system_info)
        )
        # One budget for connect + handshake + confirmation. The connect phase is bounded by a scope around the
        # link (nothing to close yet if it fires); the confirmation by a scope inside it, so that a timeout there
        # still closes the link from an uncancelled task, with a proper closing handshake.
        deadline = trio.current_time() + self._registration_timeout
        with trio.CancelScope(deadline=deadline) as connecting:
            async with open_link(
                self._url, ssl_context=self._ssl_context, max_message_size=self._max_message_size
            ) as link:
                connecting.deadline = math.inf
                self._set_state(AgentState.CONNECTED)
                try:
                    with trio.move_on_at(deadline) as confirming:
                        await link.send(register)
                        await self._await_confirmation(link, protocol)
                    if confirming.cancelled_caught:
                        raise RegistrationTimeout(
                            f"no registration confirmation within {self._registration_timeout:g} s"
                        )
                    self._platform = platform
                    self.stats.registrations += 1
                    self._set_state(AgentState.REGISTERED)
                    logger.info("device %r registered with %s (platform %s)", self.device_id, self._shown_url, platform)
                    on_registered()
                    await self._serve(link, protocol)
                except ProtocolViolation:
                    await link.aclose(CLOSE_POLICY_VIOLATION, "invalid AIP frame")
                    raise
                except BinaryFrame as exc:  # as the answer to REGISTER; the reader handles later ones
                    self.stats.invalid_frames += 1
                    logger.error("device %r: %s", self.device_id, exc)
                    await link.aclose(CLOSE_UNSUPPORTED_DATA, "AIP frames are JSON text")
                    raise ProtocolViolation(str(exc)) from None
                finally:
                    self._set_state(AgentState.DISCONNECTED)
        raise RegistrationTimeout(f"could not connect within {self._registration_timeout:g} s")

    async def _await_confirmation(self, link: ClientLink, protocol: ClientProtocol) -> None:
        """The first frame after REGISTER decides (§6, §8.1); the protocol gives the verdict."""
        text = await link.receive()
        self.stats.frames_received += 1
        events = protocol.receive(self._decode(text), trio.current_time())
        verdict = events[0]
        assert isinstance(verdict, Verdict)
        if verdict.outcome is None:
            return
        if verdict.text is not None:
            self.stats.rejections += 1
            rejected = RegistrationRejected(verdict.text)
            logger.error("device %r: %s", self.device_id, rejected)
            raise rejected
        self.stats.invalid_frames += 1
        raise ProtocolViolation(verdict.outcome.reason)

    def _decode(self, text: str) -> ServerMessage:
        try:
            return decode_server_message(text)
        except AIPDecodeError as exc:
            self.stats.invalid_frames += 1
            logger.error("device %r: invalid frame from the server: %s", self.device_id, exc)
            raise ProtocolViolation(str(exc)) from None

    async def _serve(self, link: ClientLink, protocol: ClientProtocol) -> NoReturn:
        """Read frames, send heartbeats, answer COMMANDs until something ends the connection."""
        async with trio.open_nursery() as nursery:
            # The schedule starts once registered: the first beat one interval from now.
            protocol.heartbeats = Heartbeats(self._heartbeat_interval, self._heartbeat_timeout, trio.current_time())
            conn = _Connection(link, nursery, protocol.heartbeats)
            nursery.start_soon(self._heartbeats, conn)
            await self._read_frames(conn)
        failure = conn.failure or LinkClosed()
        if conn.close_code is not None:
            await link.aclose(conn.close_code, "invalid AIP frame")
        raise failure

    async def _read_frames(self, conn: _Connection) -> None:
        link = conn.link
        while True:
            try:
                text = await link.receive()
            except BinaryFrame as exc:
                self.stats.invalid_frames += 1
                logger.error("device %r: %s; reconnecting", self.device_id, exc)
                conn.fail(ProtocolViolation(str(exc)), CLOSE_UNSUPPORTED_DATA)
                return
            except LinkClosed as exc:
                if exc.code == CLOSE_MESSAGE_TOO_BIG:
                    self.stats.invalid_frames += 1
                    logger.error(
                        "device %r: the server sent a frame larger than %d bytes; reconnecting",
                        self.device_id,
                        self._max_message_size,
                    )
                conn.fail(exc)
                return
            conn.beats.frame_received(trio.current_time())
            self.stats.frames_received += 1
            try:
                message = self._decode(text)
            except ProtocolViolation as exc:
                conn.fail(exc, CLOSE_POLICY_VIOLATION)
                return
            self._dispatch(conn, message)

    def _dispatch(self, conn: _Connection, message: ServerMessage) -> None:
        kind = message.type
        if kind is ServerMessageType.COMMAND:
            conn.nursery.start_soon(self._answer_command, conn, message, conn.commands.ticket())
        elif kind is ServerMessageType.HEARTBEAT:
            if message.session_id is not None:
                logger.info("device %r: the server accepted a task as session %r", self.device_id, message.session_id)
        elif kind is ServerMessageType.TASK_END:
            logger.info(
                "device %r: task session %r ended %s%s",
                self.device_id,
                message.session_id,
                message.status.value,
                f" ({message.error})" if message.error else "",
            )
        elif kind is ServerMessageType.TASK:
            conn.nursery.start_soon(self._request_task, conn, message)
        elif kind is ServerMessageType.ERROR:
            logger.warning("device %r: the server reported an error: %s", self.device_id, message.error)
        else:
            logger.info("device %r: ignoring a %s frame from the server", self.device_id, kind.value)

    async def _heartbeats(self, conn: _Connection) -> None:
        """Send a heartbeat every interval; fail the link when one is followed by silence for ``heartbeat_timeout``.

        A thin driver of the protocol's :class:`Heartbeats`: sleep until the next time it names (a beat or the
        liveness deadline), then act. The reader only reports frames to it (no event per frame).
        """
        beats = conn.beats
        frame = builders.heartbeat(self.device_id, ClientType.DEVICE)
        while True:
            await trio.sleep_until(beats.wake_at)
            now = trio.current_time()
            dead_at = beats.presumed_dead_at
            # Unread bytes are a late reader, not silence: the protocol restarts the window for them.
            if dead_at is not None and now >= dead_at and beats.is_dead(now, unread=conn.link.has_unread_data()):
                self.stats.dead_links += 1
                dead = LinkDead(f"no frame from the server within {beats.timeout:g} s of a heartbeat")
                logger.warning("device %r: %s", self.device_id, dead)
                conn.fail(dead)
                return
            if now >= beats.heartbeat_due_at:
                frame.timestamp = utc_timestamp()
                beats.beat_sent(now)
                try:
                    await conn.link.send(frame)
                except LinkClosed as exc:
                    conn.fail(exc)
                    return
                self.stats.heartbeats_sent += 1

    async def _answer_command(self, conn: _Connection, command: ServerMessage, ticket: int) -> None:
        """Exactly one COMMAND_RESULTS per COMMAND: one Result per action, in order, ``call_id`` echoed; one
        COMMAND at a time, in arrival order (:class:`_CommandTurns`)."""
        await conn.commands.wait_for(ticket)
        try:
            await self._run_and_answer(conn, command)
        finally:
            conn.commands.done()

    async def _run_and_answer(self, conn: _Connection, command: ServerMessage) -> None:
        results = await self._executor.run_all(command.actions or [])
        reply = builders.command_results(
            self.device_id,
            session_id=command.session_id,
            prev_response_id=command.response_id,
            results=results,
            status=command.status,
        )
        try:
            await conn.link.send(reply)
        except LinkClosed as exc:
            logger.warning(
                "device %r: results for COMMAND %s not delivered: %s", self.device_id, command.response_id, exc
            )
            conn.fail(exc)
            return
        except Exception as exc:
            # Tool results are normalised before they get here, so this is a last resort: answer anyway.
            logger.error(
                "device %r: COMMAND %s results cannot be encoded: %s", self.device_id, command.response_id, exc
            )
            reply.action_results = [_unencodable(result, exc) for result in results]
            try:
                await conn.link.send(reply)
            except LinkClosed as closed:
                conn.fail(closed)
                return
        self.stats.commands_answered += 1

    async def _request_task(self, conn: _Connection, task: ServerMessage) -> None:
        """Turn a server-pushed TASK into the device's own TASK request, as UFO's device does (§8.7)."""
        if not task.user_request:
            logger.warning("device %r: ignoring a server TASK without user_request", self.device_id)
            return
        request = builders.device_task_request(
            self.device_id, task_name=task.task_name, request=task.user_request, platform=self._platform
        )
        try:
            await conn.link.send(request)
        except LinkClosed as exc:
            conn.fail(exc)
            return
        self.stats.tasks_requested += 1
        logger.info(
            "device %r: server pushed task %r; requested it as this device's task", self.device_id, task.task_name
        )


def _check_arguments(
    server_url: str,
    device_id: str,
    max_retries: int | None,
    custom_metadata: Mapping[str, Any] | None,
    *,
    platform_twice: bool,
    **timeouts: float,
) -> None:
    """``DeviceAgent``'s argument checks: a ``ValueError`` naming the argument and the value (a URL redacted)."""
    if not server_url.startswith(("ws://", "wss://")):
        raise ValueError(f"server_url must be a ws:// or wss:// URL, got {redact_url(server_url)!r}")
    if not device_id:
        raise ValueError("device_id must be a non-empty string")
    for name, value in timeouts.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"max_retries must be >= 0 or None, got {max_retries!r}")
    if platform_twice:
        raise ValueError("pass platform either to DeviceAgent or to its DeviceInfoProvider, not both")
    problem = None if custom_metadata is None else json_error(custom_metadata)
    if problem is not None:
        raise ValueError(f"custom_metadata must be JSON-serialisable: {problem}")


def _executor(tools: ToolRegistry, device_id: str, deadline: float, skip_after_failure: bool) -> ToolExecutor:
    """The agent's executor over ``tools``, with a warning if they cannot answer UFO's first COMMAND."""
    if "list_tools" not in tools:
        logger.warning(
            "device %r: its tool registry has no 'list_tools'; every UFO session starts with that COMMAND "
            "and will get a failure (use add_builtin_tools)",
            device_id,
        )
    return ToolExecutor(tools, default_deadline=deadline, skip_after_failure=skip_after_failure)


def _unencodable(result: Result, exc: Exception) -> Result:
    if result.status is not ResultStatus.SUCCESS:
        return Result(status=result.status, error=result.error, call_id=result.call_id)
    return Result(status=ResultStatus.FAILURE, error=f"result cannot be sent as JSON: {exc}", call_id=result.call_id)


async def serve_device_agent(
    server_url: str,
    device_id: str,
    *,
    task_status: trio.TaskStatus[DeviceAgent] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> NoReturn:
    """Build a :class:`DeviceAgent` with ``options`` and run it: ``agent = await nursery.start(serve_device_agent, …)``
    returns once the device is registered."""
    agent = DeviceAgent(server_url, device_id, **options)
    await agent.run(task_status=task_status)
