"""Tasks across managers: any member runs a task on any fleet device, through the device's owner.

How a task travels when the caller's member does not own the device:

1. The requester reads the device's lease holder and posts a ``task`` message (msgspec JSON) to the holder's
   mailbox — a Redis stream per member — with a fresh request id, its own member id to reply to, and how long it
   will wait (``wait_s``: the caller's deadline, or the default ``task_timeout`` when the caller has none).
2. The owner's mailbox reader (``XREAD BLOCK`` on a connection of its own) runs the task on its manager with
   ``assign_task_to_device``, bounded by ``wait_s``, and posts a ``reply`` with the :class:`TaskResult` — or with
   the refusal's type and text — to the requester's mailbox.
3. The requester's mailbox reader hands the reply to the waiting caller, which returns that very ``TaskResult`` or
   raises the same refusal type (:class:`~galaxy_trio.manager.TaskRefused` and its subclasses).

A member that no longer owns the device when the request arrives answers ``not_owner`` and the requester tries
again with the new owner (the task never started). If the owner loses the device while the requester waits (the
requester re-reads the lease every ``renew_interval``), the task ends ``failed`` with ``device_disconnection``,
as a dropped link does on one manager; it is never retried elsewhere, so a task never runs twice. A caller that
gives up sends ``cancel``: a task still queued at the owner is then never sent to the device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import trio

from ..aip import new_id
from ..backoff import Backoff
from ..manager import (
    ConstellationDeviceManager,
    DeviceNotConnected,
    DuplicateTaskId,
    TaskQueueFull,
    TaskRefused,
    TaskResult,
    UnknownDevice,
)
from ..manager.tasks import TaskClock
from .errors import FleetError, RegistryUnavailable
from .registry import FleetRegistry

__all__ = ["CancelMail", "ReplyMail", "TaskMail", "TaskRouter"]

logger = logging.getLogger("galaxy_trio.fleet")

#: Bound on posting one message after the caller gave up (the post is shielded).
_POST_GRACE: Final = 2.0


class TaskMail(msgspec.Struct, frozen=True, kw_only=True, tag="task"):
    request_id: str
    reply_to: str
    task_id: str
    device_id: str
    description: str
    task_data: dict[str, Any] | None = None
    wait_s: float


class CancelMail(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    request_id: str


class ReplyMail(msgspec.Struct, frozen=True, kw_only=True, tag="reply"):
    request_id: str
    result: TaskResult | None = None
    refusal: str | None = None  #: the refusal's exception type name
    error: str | None = None
    not_owner: bool = False


Mail = TaskMail | CancelMail | ReplyMail
_encode = msgspec.json.Encoder().encode
_decode_mail = msgspec.json.Decoder(Mail).decode

#: Refusals that travel back by name and are raised again, as the same type, at the requester.
_REFUSALS: Final[dict[str, type[TaskRefused]]] = {
    cls.__name__: cls for cls in (DeviceNotConnected, TaskQueueFull, DuplicateTaskId, TaskRefused)
}


class _OwnerLost:
    __slots__ = ("now", "owner")

    def __init__(self, owner: str, now: str | None) -> None:
        self.owner = owner
        self.now = now


class _Waiter:
    __slots__ = ("_event", "value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self.value: ReplyMail | _OwnerLost | None = None

    def resolve(self, value: ReplyMail | _OwnerLost) -> None:
        if not self._event.is_set():
            self.value = value
            self._event.set()

    async def wait(self) -> ReplyMail | _OwnerLost:
        await self._event.wait()
        assert self.value is not None
        return self.value


class TaskRouter:
    """Both halves of remote tasks for one member: its mailbox reader (owner side) and :meth:`assign` (requester)."""

    def __init__(
        self,
        registry: FleetRegistry,
        member_id: str,
        manager: ConstellationDeviceManager,
        owns: Callable[[str], bool],
        known_device_ids: Sequence[str],
        *,
        recheck_interval: float,
        retry: Backoff,
    ) -> None:
        self.registry = registry
        self.member_id = member_id
        self.manager = manager
        self.owns = owns
        self.known = frozenset(known_device_ids)
        self.recheck_interval = recheck_interval
        self.retry = retry
        self.malformed = 0
        self._waiting: dict[str, _Waiter] = {}
        self._serving: dict[str, trio.CancelScope] = {}

    # --- owner side: the mailbox -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read this member's mailbox until cancelled (open it first with ``registry.open_mailbox``)."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            failures = 0
            while True:
                try:
                    batch = await self.registry.fetch_mail(self.member_id)
                except RegistryUnavailable as exc:
                    failures += 1
                    logger.info("member %s: mailbox unreadable (attempt %d): %s", self.member_id, failures, exc)
                    await trio.sleep(self.retry.delay(failures))
                    continue
                failures = 0
                for payload in batch:
                    self._dispatch(nursery, payload)

    def _dispatch(self, nursery: trio.Nursery, payload: bytes) -> None:
        try:
            mail = _decode_mail(payload)
        except msgspec.DecodeError as exc:
            self.malformed += 1
            logger.warning("member %s: ignoring malformed mail (%d bytes): %s", self.member_id, len(payload), exc)
            return
        if isinstance(mail, ReplyMail):
            waiter = self._waiting.get(mail.request_id)
            if waiter is not None:
                waiter.resolve(mail)
        elif isinstance(mail, CancelMail):
            scope = self._serving.get(mail.request_id)
            if scope is not None:
                scope.cancel()
        elif not self.owns(mail.device_id):
            nursery.start_soon(self._post, mail.reply_to, ReplyMail(request_id=mail.request_id, not_owner=True))
        else:
            nursery.start_soon(self._serve, mail, name=f"remote-task:{mail.task_id}")

    async def _serve(self, mail: TaskMail) -> None:
        with trio.CancelScope() as scope:
            self._serving[mail.request_id] = scope
            try:
                reply = await self._run_locally(mail)
            finally:
                del self._serving[mail.request_id]
        if scope.cancelled_caught:
            return  # the requester gave up and said so: nobody waits for a reply
        await self._post(mail.reply_to, reply)

    async def _run_locally(self, mail: TaskMail) -> ReplyMail:
        clock = TaskClock()
        with trio.move_on_after(mail.wait_s) as bound:
            try:
                result = await self.manager.assign_task_to_device(
                    mail.task_id, mail.device_id, mail.description, mail.task_data
                )
            except (TaskRefused, UnknownDevice) as exc:
                return ReplyMail(request_id=mail.request_id, refusal=type(exc).__name__, error=str(exc))
            return ReplyMail(request_id=mail.request_id, result=result)
        assert bound.cancelled_caught
        text = f"task did not finish within the requester's {mail.wait_s:g}s (queue time included)"
        return ReplyMail(request_id=mail.request_id, result=clock.failed(mail.task_id, mail.device_id, "timeout", text))

    async def _post(self, member_id: str, mail: TaskMail | CancelMail | ReplyMail) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(_POST_GRACE):
            try:
                await self.registry.post_mail(member_id, _encode(mail))
            except RegistryUnavailable as exc:
                logger.warning("member %s: could not post to %s: %s", self.member_id, member_id, exc)

    # --- requester side ----------------------------------------------------------------------------------------

    async def assign(
        self, task_id: str, device_id: str, description: str, task_data: dict[str, Any] | None
    ) -> TaskResult:
        """Run a task on any fleet device (see the module docstring); the same results and refusals as the manager."""
        if device_id not in self.known:
            fleet = await self.registry.fleet_device_ids()
            if device_id not in fleet:
                raise UnknownDevice(device_id, fleet)
        if self.owns(device_id):
            return await self.manager.assign_task_to_device(task_id, device_id, description, task_data)
        clock = TaskClock()
        # As on one manager: the default bound applies only when the caller has set no deadline of its own.
        default_bound = (
            self.manager.settings.task_timeout if trio.current_effective_deadline() == math.inf else math.inf
        )
        with trio.move_on_after(default_bound) as bound:
            return await self._route(task_id, device_id, description, task_data, clock)
        assert bound.cancelled_caught
        text = f"task did not finish within task_timeout={default_bound:g}s (queue time included)"
        return clock.failed(task_id, device_id, "timeout", text)

    async def _route(
        self, task_id: str, device_id: str, description: str, task_data: dict[str, Any] | None, clock: TaskClock
    ) -> TaskResult:
        while True:
            if self.owns(device_id):
                return await self.manager.assign_task_to_device(task_id, device_id, description, task_data)
            (owner,) = await self.registry.owners([device_id])
            if owner is None or owner == self.member_id:
                # Nobody holds it (a takeover is under way), or our own lease is not in our book yet: look again at
                # the keepers' pace. The caller's deadline bounds the wait, as a queued task's would.
                await trio.sleep(self.recheck_interval)
                continue
            deadline = trio.current_effective_deadline()
            wait_s = deadline - trio.current_time() if deadline != math.inf else self.manager.settings.task_timeout
            mail = TaskMail(
                request_id=new_id(),
                reply_to=self.member_id,
                task_id=task_id,
                device_id=device_id,
                description=description,
                task_data=task_data,
                wait_s=max(wait_s, 0.0),
            )
            answer = await self._ask(owner, mail)
            if isinstance(answer, _OwnerLost):
                now = f"now {answer.now}" if answer.now else "now nobody"
                text = f"member {answer.owner} lost device {device_id!r} ({now} owns it) before the task's result"
                return clock.failed(task_id, device_id, "device_disconnection", text)
            if answer.not_owner:
                continue
            if answer.result is not None:
                return answer.result
            raise self._refusal(device_id, answer)

    def _refusal(self, device_id: str, answer: ReplyMail) -> Exception:
        if answer.refusal == "UnknownDevice":
            return UnknownDevice(device_id, self.known)
        cls = _REFUSALS.get(answer.refusal or "")
        if cls is not None:
            return cls(answer.error or "task refused")
        return FleetError(f"the owner of {device_id!r} answered neither a result nor a known refusal: {answer.error}")

    async def _ask(self, owner: str, mail: TaskMail) -> ReplyMail | _OwnerLost:
        waiter = _Waiter()
        self._waiting[mail.request_id] = waiter
        answered = False
        try:
            await self.registry.post_mail(owner, _encode(mail))
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_owner, owner, mail.device_id, waiter)
                answer = await waiter.wait()
                watch.cancel_scope.cancel()
            answered = True
            return answer
        finally:
            del self._waiting[mail.request_id]
            if not answered:  # the caller gave up (or the post failed): tell the owner not to bother
                await self._post(owner, CancelMail(request_id=mail.request_id))

    async def _watch_owner(self, owner: str, device_id: str, waiter: _Waiter) -> None:
        while True:
            await trio.sleep(self.recheck_interval)
            try:
                (now,) = await self.registry.owners([device_id])
            except RegistryUnavailable:
                continue  # cannot tell; the caller's deadline still bounds the wait
            if now != owner:
                waiter.resolve(_OwnerLost(owner, now))
                return
