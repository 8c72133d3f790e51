"""Task sessions: a driver talks to one device through COMMAND / COMMAND_RESULTS, then TASK_END goes out.

The driver is the pluggable part (the default one runs the tool a request names; an LLM planner is another). It is
an async callable ``driver(session: SessionHandle) -> result``: it asks the device to run tools through the handle,
returns the TASK_END ``result`` on success, and raises :class:`TaskFailed` (or anything else) to fail the task.
The server owns everything around it, as UFO's server does (PROTOCOL.md §8.6):

- sessions on one device never overlap; they queue in FIFO order on the device's fair lock;
- every COMMAND carries a fresh ``response_id`` and per-action ``call_id`` s, and waits for the COMMAND_RESULTS
  whose ``prev_response_id`` matches, at most ``ServerSettings.command_deadline`` (UFO: 6000 s, §11.4);
- after the driver, a last COMMAND with ``actions: []`` (UFO always sends it), then TASK_END to the requester and,
  with the same ``response_id``, to the device;
- a device that disconnects fails the task at once (``Task was cancelled because target device disconnected``,
  result ``[]``); a requester that disconnects cancels it and the device still gets its TASK_END (unlike UFO,
  §11.13); a server shutdown tells both.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import msgspec
import trio

from ..aip import (
    CLOSE_POLICY_VIOLATION,
    ClientMessage,
    Command,
    Result,
    ResultStatus,
    ServerMessage,
    TaskStatus,
    ToolType,
    builders,
    json_error,
    new_id,
)
from ..aip.builders import DEVICE_DISCONNECTED, SERVER_SHUTTING_DOWN
from ..errors import LinkClosed
from .clients import ClientRecord, ClientRegistry, PendingCommand
from .rules import TaskPlan, agent_name, shown
from .settings import ServerSettings

__all__ = [
    "CommandChannel",
    "DeviceDisconnected",
    "Session",
    "SessionDriver",
    "SessionHandle",
    "TaskFailed",
    "deliver_command_results",
]

logger = logging.getLogger("galaxy_trio.server")

#: Longest driver exception text put into a TASK_END error (the full traceback goes to the server log).
_ERROR_CHARS: Final = 500


class TaskFailed(Exception):
    """Raised by a session driver (or by the handle) to end the task with TASK_END ``failed``.

    ``message`` becomes TASK_END's ``error``; ``result`` its ``result`` (``[]`` by default, as UFO sends after a
    cancellation).
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.result: Any = [] if result is None else result


class DeviceDisconnected(TaskFailed):
    """The session's device went away; the task ends with UFO's fixed text and result ``[]``."""

    def __init__(self) -> None:
        super().__init__(DEVICE_DISCONNECTED)


class CommandChannel:
    """The server's side of one session's COMMAND traffic with its device.

    The session owns it: the driver's :class:`SessionHandle` sends tool calls through it, and the session uses it
    for what no driver may do — the final empty COMMAND and closing the channel once the session has ended (a
    driver that kept its handle then gets :class:`TaskFailed`, not a COMMAND on someone else's turn). One COMMAND
    is outstanding at a time, as UFO's device executes them.
    """

    __slots__ = (
        "_abandoned",
        "_agent_name",
        "_closed",
        "_device",
        "_lock",
        "_session_id",
        "_settings",
        "_unanswered",
        "_wire_task_name",
    )

    def __init__(self, plan: TaskPlan, device: ClientRecord, settings: ServerSettings) -> None:
        self._session_id = plan.session_id
        self._device = device
        self._settings = settings
        self._agent_name = agent_name(device.platform)
        self._wire_task_name = builders.sanitize_task_name(plan.task_name)
        self._lock = trio.Lock()
        #: Set when a COMMAND went unanswered: the device's state is unknown, so nothing more is sent to it.
        self._unanswered: str | None = None
        self._closed = False
        #: The COMMAND this session was cancelled in the middle of (the device may still be running it).
        self._abandoned: tuple[str, PendingCommand] | None = None

    @property
    def can_finish(self) -> bool:
        """Whether the final COMMAND may go out: every COMMAND was answered and the device is still there."""
        return self._unanswered is None and not self._device.link.closed

    def close(self) -> None:
        """The session has ended; every later send raises :class:`TaskFailed`."""
        self._closed = True

    async def send(self, actions: list[Command]) -> list[Result]:
        """One COMMAND with ``actions`` (their ``call_id`` s already set); one Result per action, in order."""
        async with self._lock:
            return await self._exchange(actions)

    async def finish(self) -> None:
        """UFO's last step: a COMMAND with ``actions: []``, which the device answers with ``action_results: []``."""
        await self.send([])

    async def wait_abandoned(self) -> None:
        """After a cancellation: until the device has answered the COMMAND it was left running (or gone away,
        or ``command_deadline`` passed), so that the device's next session never overlaps it on the device."""
        if self._abandoned is None:
            return
        response_id, pending = self._abandoned
        if self._device.gone:
            self._device.pending.pop(response_id, None)
            return
        try:
            with trio.move_on_after(self._settings.command_deadline):
                await pending.done.wait()
        finally:
            self._device.pending.pop(response_id, None)

    async def _exchange(self, actions: list[Command]) -> list[Result]:
        if self._closed:
            raise TaskFailed(f"Session {shown(self._session_id)!r} has ended; its handle cannot send commands any more")
        if self._unanswered is not None:
            raise TaskFailed(self._unanswered)
        device = self._device
        response_id = new_id()
        pending = PendingCommand(self._session_id)
        device.pending[response_id] = pending
        try:
            frame = builders.command(
                session_id=self._session_id,
                task_name=self._wire_task_name,
                actions=actions,
                agent_name=self._agent_name,
                response_id=response_id,
            )
            try:
                await device.link.send(frame)
            except LinkClosed:
                raise DeviceDisconnected() from None
            try:
                with trio.move_on_after(self._settings.command_deadline):
                    await pending.done.wait()
            except trio.Cancelled:
                pending.abandoned = True  # it went out: the device may be running it still
                self._abandoned = (response_id, pending)
                raise
        finally:
            if not pending.abandoned:
                device.pending.pop(response_id, None)
        if pending.results is None:
            tools = ", ".join(shown(a.tool_name) for a in actions) or "the final COMMAND with no actions"
            self._unanswered = (
                f"Device '{shown(device.client_id)}' did not answer the COMMAND ({tools}) "
                f"within {self._settings.command_deadline:g} s"
            )
            raise TaskFailed(self._unanswered)
        return _match_results(actions, pending.results, device.client_id)


class SessionHandle:
    """What a session driver sees of its task and its device.

    Attributes: ``session_id``, ``task_name`` (as the requester gave it, or a uuid4), ``request`` (the task text),
    ``requester_id``, ``device_id``, ``platform`` and ``system_info`` (from the device's REGISTER; may be None).
    Tool calls go one COMMAND at a time, as UFO's device executes them. The server makes one per session; a
    driver only uses it.
    """

    __slots__ = (
        "_commands",
        "device_id",
        "platform",
        "request",
        "requester_id",
        "session_id",
        "system_info",
        "task_name",
    )

    def __init__(self, plan: TaskPlan, requester_id: str, device: ClientRecord, commands: CommandChannel) -> None:
        self.session_id = plan.session_id
        self.task_name = plan.task_name
        self.request = plan.request
        self.requester_id = requester_id
        self.device_id = device.client_id
        self.platform = device.platform
        self.system_info: Mapping[str, Any] | None = (
            MappingProxyType(device.system_info) if device.system_info is not None else None
        )
        self._commands = commands

    def __repr__(self) -> str:
        return f"<SessionHandle {shown(self.session_id)!r} on device {shown(self.device_id)!r}>"

    async def call_tools(self, commands: Sequence[Command]) -> list[Result]:
        """Send one COMMAND with ``commands`` (each gets a fresh ``call_id``) and return one Result per command.

        Raises :class:`TaskFailed` when the device does not answer within the server's per-command deadline, or
        answers with the wrong number of results; :class:`DeviceDisconnected` when the device is gone.
        """
        return await self._commands.send([msgspec.structs.replace(c, call_id=new_id()) for c in commands])

    async def call_tool(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        tool_type: ToolType = ToolType.ACTION,
    ) -> Result:
        """Run one tool on the device; a tool failure comes back as a Result with status ``failure``."""
        (result,) = await self.call_tools([Command(tool_name=name, parameters=parameters, tool_type=tool_type)])
        return result

    async def list_tools(self) -> list[dict[str, Any]]:
        """The device's action tools (MCP tool-info objects, §5.3), asked for as every UFO session does first."""
        result = await self.call_tool("list_tools", {"tool_type": ToolType.ACTION.value})
        if result.status is not ResultStatus.SUCCESS:
            raise TaskFailed(
                f"list_tools failed on device '{shown(self.device_id)}': {result.error or result.status.value}"
            )
        if not isinstance(result.result, list):
            raise TaskFailed(
                f"list_tools on device '{shown(self.device_id)}' returned {type(result.result).__name__}, "
                "not a list of tools"
            )
        return [tool for tool in result.result if isinstance(tool, dict)]


def _match_results(actions: list[Command], results: list[Result], device_id: str) -> list[Result]:
    """One Result per Command, matched by ``call_id`` when the device echoes them (UFO's does), else by position."""
    if len(results) != len(actions):
        raise TaskFailed(
            f"Device '{shown(device_id)}' answered a COMMAND of {len(actions)} action(s) with {len(results)} result(s)"
        )
    by_call_id = {r.call_id: r for r in results if r.call_id is not None}
    matched = [by_call_id.get(a.call_id or "") for a in actions]
    if all(r is not None for r in matched):
        return [r for r in matched if r is not None]
    return results


def deliver_command_results(device: ClientRecord, msg: ClientMessage) -> bool:
    """Hand a device's COMMAND_RESULTS to the COMMAND waiting for it; False when nothing waits (then it is dropped).

    Looking the COMMAND up on the sending device's own record means a result from any other client can never
    reach it (UFO's 'wrong sender' case).
    """
    if msg.prev_response_id is None:
        return False
    pending = device.pending.get(msg.prev_response_id)
    if pending is None or pending.done.is_set():
        return False
    if msg.session_id is not None and msg.session_id != pending.session_id:
        return False
    pending.results = msg.action_results if msg.action_results is not None else []
    pending.done.set()
    return True


SessionDriver: TypeAlias = Callable[[SessionHandle], Awaitable[Any]]
"""``async def driver(session: SessionHandle) -> result``; raise :class:`TaskFailed` to fail the task."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a session ended, and who is still there to be told."""

    status: TaskStatus
    result: Any
    error: str | None = None
    notify_requester: bool = True
    notify_device: bool = True


_DEVICE_GONE: Final = Outcome(TaskStatus.FAILED, [], DEVICE_DISCONNECTED, notify_device=False)


class Session:
    """One accepted TASK, from acceptance to its TASK_END. Runs in the requester's connection nursery."""

    __slots__ = (
        "_cancel_outcome",
        "_commands",
        "_driver",
        "_entered",
        "_finished",
        "_registry",
        "_scope",
        "_settings",
        "device",
        "handle",
        "requester",
    )

    def __init__(
        self,
        plan: TaskPlan,
        requester: ClientRecord,
        device: ClientRecord,
        driver: SessionDriver,
        settings: ServerSettings,
        registry: ClientRegistry,
    ) -> None:
        self.requester = requester
        self.device = device
        self._commands = CommandChannel(plan, device, settings)
        self.handle = SessionHandle(plan, requester.client_id, device, self._commands)
        self._settings = settings
        self._driver = driver
        self._registry = registry
        self._scope = trio.CancelScope()
        self._cancel_outcome: Outcome | None = None
        self._finished = False
        self._entered = False

    @property
    def session_id(self) -> str:
        return self.handle.session_id

    def __repr__(self) -> str:
        route = f"{shown(self.requester.client_id)!r} -> {shown(self.device.client_id)!r}"
        return f"<Session {shown(self.session_id)!r} {route}>"

    def attach(self) -> None:
        """Make the session visible (session_id taken, queued on the device) before the TASK is acked."""
        self._registry.add_session(self)

    def detach(self) -> None:
        self._registry.remove_session(self)

    def cancel_device_gone(self) -> None:
        self._cancel(_DEVICE_GONE)

    def cancel_requester_gone(self) -> None:
        self._cancel(
            Outcome(
                TaskStatus.FAILED,
                [],
                f"Task was cancelled because the requesting client '{shown(self.requester.client_id)}' disconnected",
                notify_requester=False,
            )
        )

    def _cancel(self, outcome: Outcome) -> None:
        """Stop the session; once its TASK_END is on its way, nothing changes it any more."""
        if self._finished or self._cancel_outcome is not None:
            return
        self._cancel_outcome = outcome
        self._scope.cancel()

    async def run(self) -> None:
        """Queue for the device, run the driver, deliver TASK_END; every path ends with the session settled."""
        device = self.device
        settings = self._settings
        acquired = delivering = False
        outcome: Outcome | None = None
        try:
            with self._scope:
                await device.lock.acquire()
                acquired = True
                device.enter_session()
                self._entered = True
                logger.info("session %s started on device %s", shown(self.session_id), shown(device.client_id))
                outcome = await self._execute()
            self._finished = True
            cancelled = outcome is None
            if outcome is None:
                outcome = self._cancel_outcome or _DEVICE_GONE
            # Settled before TASK_END leaves, so whoever receives it sees the session gone; the device lock is
            # still held, so the next session's first COMMAND cannot overtake this TASK_END on the device.
            self._settle()
            delivering = True
            with trio.move_on_after(settings.cancel_grace if cancelled else math.inf):
                await self._deliver(outcome)
            await self._commands.wait_abandoned()  # still holding the device's lock
        except trio.Cancelled:
            self._finished = True
            self._settle()
            if not delivering:
                with trio.move_on_after(settings.cancel_grace, shield=True):
                    await self._deliver(Outcome(TaskStatus.FAILED, [], SERVER_SHUTTING_DOWN))
            raise
        finally:
            self._settle()
            if acquired:
                device.lock.release()
        logger.info(
            "session %s on device %s ended: %s%s",
            shown(self.session_id),
            shown(device.client_id),
            outcome.status.value,
            f" ({shown(outcome.error)})" if outcome.error else "",
        )

    def _settle(self) -> None:
        """Leave the device's active count and the session tables. Idempotent."""
        self._commands.close()
        if self._entered:
            self._entered = False
            self.device.leave_session()
        self.detach()

    async def _execute(self) -> Outcome:
        outcome: Outcome
        try:
            value = await self._driver(self.handle)
        except Exception as exc:
            outcome = self._failure(exc)
            if outcome is _DEVICE_GONE:
                return outcome
        else:
            outcome = _completed(value)
        if self._commands.can_finish:
            try:
                await self._commands.finish()
            except TaskFailed as exc:
                failure = self._failure(exc)
                if failure is _DEVICE_GONE or outcome.status is TaskStatus.COMPLETED:
                    outcome = failure
        return outcome

    def _failure(self, exc: Exception) -> Outcome:
        failed = _find_task_failed(exc)
        if isinstance(failed, DeviceDisconnected):
            return _DEVICE_GONE
        if failed is not None:
            if json_error(failed.result) is not None:
                return Outcome(TaskStatus.FAILED, [], _clip(f"{failed.message} (its result cannot be sent as JSON)"))
            return Outcome(TaskStatus.FAILED, failed.result, failed.message)
        logger.error("session %s: driver raised", shown(self.session_id), exc_info=exc)
        return Outcome(TaskStatus.FAILED, [], _clip(f"Session driver failed: {type(exc).__name__}: {exc}"))

    async def _deliver(self, outcome: Outcome) -> None:
        """TASK_END to the requester, then the same frame (same response_id) to the device (§8.6 steps 6–7)."""
        response_id = new_id()
        send_deadline = self._settings.send_deadline
        if outcome.notify_requester:
            await _send_task_end(self.requester, self._task_end(outcome, response_id), send_deadline)
        if outcome.notify_device and self.device is not self.requester:
            await _send_task_end(self.device, self._task_end(outcome, response_id), send_deadline)

    def _task_end(self, outcome: Outcome, response_id: str) -> ServerMessage:
        return builders.task_end(
            session_id=self.session_id,
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            response_id=response_id,
        )


def _completed(value: Any) -> Outcome:
    """A driver's return value as TASK_END ``completed``, unless it cannot go on the wire as JSON."""
    problem = json_error(value)
    if problem is not None:
        return Outcome(
            TaskStatus.FAILED, [], _clip(f"The session driver returned a result that cannot be sent as JSON: {problem}")
        )
    return Outcome(TaskStatus.COMPLETED, value)


def _clip(text: str) -> str:
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "…"


def _find_task_failed(exc: BaseException) -> TaskFailed | None:
    """The TaskFailed in ``exc``, looking inside exception groups (a driver may use nurseries)."""
    if isinstance(exc, TaskFailed):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_task_failed(inner)
            if found is not None:
                return found
    return None


async def _send_task_end(peer: ClientRecord, frame: ServerMessage, send_deadline: float) -> None:
    """Send a TASK_END if the peer is still there; a peer that does not take it within the deadline is closed."""
    link = peer.link
    if link.closed:
        return
    with trio.move_on_after(send_deadline) as sending:
        try:
            await link.send(frame)
        except LinkClosed:
            logger.debug("TASK_END not delivered: link already closed")
    if sending.cancelled_caught:
        logger.warning(
            "%s %s took no TASK_END within %gs (not reading); closing its link",
            peer.role.value,
            shown(peer.client_id),
            send_deadline,
        )
        await link.aclose(CLOSE_POLICY_VIOLATION, "not reading")
