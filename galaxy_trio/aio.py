"""galaxy_trio from asyncio: trio runs as a guest of the running asyncio loop, on the same thread.

This is the only module of the package that imports asyncio. Inside a running loop::

    async with galaxy_trio.aio.open_manager(task_name="office") as manager:
        ok = await manager.register_device("windowsagent", url)

``open_manager`` starts trio with :func:`trio.lowlevel.start_guest_run` the first time it is used on a loop; every
``open_*`` context on that loop shares that one guest run, which ends when the last of them is left. The objects
it gives have the methods of their trio counterparts:

- every call crosses through a *portal*: the asyncio caller awaits a future that a trio task, started in the
  guest's nursery, resolves. Exceptions are the library's own types, raised as they are.
- cancelling the asyncio task cancels the trio call (a task still queued leaves the queue, as in trio) and waits
  until the trio side has finished before ``CancelledError`` goes on; so deadlines are the caller's own
  (``asyncio.timeout``), as the trio API leaves them to the caller's cancel scope.
- sync getters (``get_device_info``…) are plain calls: the guest runs on the loop's thread, between asyncio
  callbacks, so they read a consistent state and return snapshots.
- leaving a context closes what it opened within the same bounds as in trio (the manager's shielded, bounded link
  closes), even if the leaving task is being cancelled.
- Ctrl-C under ``asyncio.run`` cancels the main task, every context closes, and ``KeyboardInterrupt`` follows. A
  guest run that crashes fails every pending call with :class:`GuestRunError` (its cause attached). A loop closed
  while a context is still open is reported once, on the ``galaxy_trio.aio`` logger, with what to do instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeVar

import outcome
import trio

from .config import DeviceConfig
from .errors import GalaxyTrioError
from .manager import AgentProfile, ConstellationDeviceManager, DeviceEvent, EventSubscription, TaskResult

__all__ = [
    "AioManager",
    "AioSubscription",
    "EventForwarder",
    "GuestRunError",
    "open_agent",
    "open_manager",
    "open_server",
    "open_service",
    "run_trio",
]

logger = logging.getLogger("galaxy_trio.aio")

T = TypeVar("T")
E = TypeVar("E")


class GuestRunError(GalaxyTrioError, RuntimeError):
    """The trio guest run could not start, crashed, or lost its asyncio loop; ``__cause__`` says why."""


class _Call:
    """One portal crossing: the asyncio future and, once its trio task runs, that task's cancel scope."""

    __slots__ = ("cancel_requested", "future", "scope")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.scope: trio.CancelScope | None = None
        self.cancel_requested = False

    def settle(self, value: outcome.Outcome[Any]) -> None:
        if self.future.done():
            return
        if isinstance(value, outcome.Value):
            self.future.set_result(value.value)
        elif isinstance(value, outcome.Error):
            self.future.set_exception(value.error)


class _Guest:
    """The trio guest run on one asyncio loop, shared by every open context on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.started: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.stopping = False
        self.failure: BaseException | None = None
        self._abandoned = False
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._pending: set[_Call] = set()

    # --- the host side of guest mode ---------------------------------------------------------------------------

    def start(self) -> None:
        try:
            trio.lowlevel.start_guest_run(
                self._main,
                run_sync_soon_threadsafe=self._host_soon_threadsafe,
                run_sync_soon_not_threadsafe=self._host_soon,
                done_callback=self._done,
                host_uses_signal_set_wakeup_fd=True,
            )
        except RuntimeError as exc:
            stale = [g for g in list(_guests.values()) if g is not self and g.loop.is_closed()]
            for guest in stale:
                guest.abandon()
            why = (
                f"an earlier asyncio loop was closed while {stale[0].users} galaxy_trio.aio context(s) were still"
                " open on it (leave them before closing the loop; asyncio.run does)"
                if stale
                else "is this asyncio loop running inside trio.run?"
            )
            raise GuestRunError(
                f"cannot start trio as a guest of this asyncio loop: a trio run is already active in this thread; {why}"
            ) from exc

    def _host_soon_threadsafe(self, fn: Callable[[], object]) -> None:
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: trio cannot go on
            self.abandon()

    def _host_soon(self, fn: Callable[[], object]) -> None:
        try:
            self.loop.call_soon(fn)
        except RuntimeError:
            self.abandon()

    def abandon(self) -> None:
        if not self._abandoned:
            self._abandoned = True
            logger.error(
                "galaxy_trio.aio: the asyncio loop was closed while %d galaxy_trio.aio context(s) were still open;"
                " their links were dropped without a closing handshake. Leave 'async with open_manager(...)'"
                " (and open_server/open_agent) before closing the loop; asyncio.run does this for you.",
                self.users,
            )

    def _done(self, result: outcome.Outcome[None]) -> None:
        if _guests.get(self.loop) is self:
            del _guests[self.loop]
        error = result.error if isinstance(result, outcome.Error) else None
        if error is not None:
            self.failure = error
            failure = GuestRunError(f"the trio guest run crashed: {error!r}")
            failure.__cause__ = error
        else:
            failure = GuestRunError("the trio guest run ended while this call was pending")
        for call in list(self._pending):
            call.settle(outcome.Error(failure))
        self._pending.clear()
        if not self.started.done():
            self.started.set_exception(failure)
        if not self.finished.done():
            self.finished.set_result(None)
        if isinstance(error, KeyboardInterrupt) or (
            isinstance(error, BaseExceptionGroup) and error.subgroup(KeyboardInterrupt) is not None
        ):
            # trio caught Ctrl-C (the loop runs without asyncio.run's handler): the host loop stops with it.
            raise KeyboardInterrupt from error

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            if not self.started.done():
                self.started.set_result(None)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Ask the guest run to end (its last user left); ``finished`` resolves when it has."""
        self.stopping = True
        if self._stop is not None:
            self.run_soon(self._stop.set)

    def run_soon(self, fn: Callable[[], object]) -> bool:
        """Run ``fn()`` in the guest run soon (``False`` if that run has finished)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    # --- the portal --------------------------------------------------------------------------------------------

    async def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any, cancellable: bool = True) -> T:
        """Run ``async_fn(*args)`` in a trio task of the guest and return (or raise) its result.

        Cancelling the asyncio caller cancels that trio task and waits for it to finish; with ``cancellable=False``
        the trio task runs to its end regardless (for closes, which bound themselves).
        """
        if self.failure is not None or self.finished.done():
            raise self._ended()
        call = _Call(self.loop.create_future())
        self._pending.add(call)
        if not self.run_soon(partial(self._spawn, call, async_fn, args)):
            self._pending.discard(call)
            raise self._ended()
        try:
            return await asyncio.shield(call.future)
        except asyncio.CancelledError:
            if call.future.done():
                raise
            if cancellable:
                call.cancel_requested = True
                if call.scope is not None:
                    self.run_soon(call.scope.cancel)
            await _wait_uncancellable(call.future)
            if not call.future.cancelled() and isinstance(call.future.exception(), GalaxyTrioError):
                raise call.future.exception() from None  # type: ignore[misc]
            raise

    def _ended(self) -> GuestRunError:
        if self.failure is None:
            return GuestRunError("the trio guest run has ended")
        error = GuestRunError(f"the trio guest run crashed: {self.failure!r}")
        error.__cause__ = self.failure
        return error

    def _spawn(self, call: _Call, async_fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        if call.future.done():
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._run_call, call, async_fn, args)

    async def _run_call(self, call: _Call, async_fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.cancel_requested:
                    scope.cancel()
                try:
                    value = await async_fn(*args)
                except Exception as exc:
                    call.settle(outcome.Error(exc))
                else:
                    call.settle(outcome.Value(value))
        finally:
            if not call.future.done() and call.cancel_requested:
                call.settle(outcome.Error(asyncio.CancelledError()))  # our own cancel: the asyncio caller's
            if call.future.done():
                self._pending.discard(call)
            # Otherwise the guest run itself is ending (crash or stop): _done settles the call, with the reason.

    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery


async def _wait_uncancellable(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done, riding out further cancellations of the current task."""
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            continue
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


_guests: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Guest] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _lease() -> AsyncIterator[_Guest]:
    """Use the running loop's guest run, starting it if needed; the last lease to leave ends it."""
    loop = asyncio.get_running_loop()
    while True:
        guest = _guests.get(loop)
        if guest is None:
            guest = _Guest(loop)
            guest.start()
            _guests[loop] = guest
            break
        if not guest.stopping:
            break
        await _wait_uncancellable(guest.finished)  # the previous run is ending; trio allows one run per thread
    guest.users += 1
    try:
        await asyncio.shield(guest.started)
        yield guest
    finally:
        guest.users -= 1
        if guest.users == 0 and not guest.finished.done():
            guest.stop()
            await _wait_uncancellable(guest.finished)


async def run_trio(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await a trio function from asyncio: ``await run_trio(trio_fn, arg)`` runs it in this loop's guest run.

    The guest run is started for the call if no context holds it. Cancellation crosses as for the manager's calls.
    """
    async with _lease() as guest:
        return await guest.call(async_fn, *args)


# --- residents: trio objects that live in the guest while an asyncio context is open ------------------------------


class _Resident(Generic[T]):
    """Runs a ``nursery.start``-style trio service in the guest until the asyncio side leaves its context.

    If the service crashes while the context is open, the asyncio task that opened it is cancelled and the error
    is raised when the context exits — as a trio nursery would cancel its body.
    """

    def __init__(self, guest: _Guest, service: Callable[..., Awaitable[Any]], cancel_on_crash: bool = True) -> None:
        self._guest = guest
        self._service = service
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self.error: Exception | None = None
        self._host_task = asyncio.current_task() if cancel_on_crash else None

    async def _host(self, *, task_status: trio.TaskStatus[T] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with self._scope:
                async with trio.open_nursery() as inner:
                    value: T = await inner.start(self._service)
                    started = True
                    task_status.started(value)
        except Exception as exc:
            # The inner nursery wraps the service's error in a group; a lone error is raised as itself.
            error = exc
            while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            if not started:
                raise error from error.__cause__
            self.error = error
            if self._host_task is not None:
                self._host_task.cancel()
        finally:
            self._finished.set()

    async def enter(self) -> T:
        nursery = self._guest.nursery()
        value: T = await self._guest.call(nursery.start, self._host)
        return value

    async def _close(self) -> None:
        self._scope.cancel()
        await self._finished.wait()

    async def exit(self, exc: BaseException | None) -> None:
        await self._guest.call(self._close, cancellable=False)
        if self.error is not None:
            if isinstance(exc, asyncio.CancelledError) and self._host_task is not None:
                self._host_task.uncancel()
            raise self.error


@asynccontextmanager
async def open_service(service: Callable[..., Awaitable[Any]]) -> AsyncIterator[Any]:
    """Run any trio service that supports ``nursery.start`` (``task_status.started(value)``) while the context is
    open; yields its started value. ``open_server`` and ``open_agent`` are this with galaxy_trio's services."""
    async with _lease() as guest, _resident(guest, service) as value:
        yield value


@asynccontextmanager
async def _resident(
    guest: _Guest, service: Callable[..., Awaitable[Any]], cancel_on_crash: bool = True
) -> AsyncIterator[Any]:
    resident: _Resident[Any] = _Resident(guest, service, cancel_on_crash)
    value = await resident.enter()
    failure: BaseException | None = None
    try:
        yield value
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await resident.exit(failure)


@asynccontextmanager
async def open_server(**kwargs: Any) -> AsyncIterator[Any]:
    """``serve_aip(**kwargs)`` in the guest while the context is open; yields the running ``AIPServer``."""
    from .server import serve_aip

    async with open_service(partial(serve_aip, **kwargs)) as server:
        yield server


@asynccontextmanager
async def open_agent(server_url: str, device_id: str, **kwargs: Any) -> AsyncIterator[Any]:
    """A ``DeviceAgent(server_url, device_id, **kwargs)`` in the guest; yields it once its registration is
    confirmed, stops it when the context is left."""
    from .agent import DeviceAgent

    async with open_service(DeviceAgent(server_url, device_id, **kwargs).run) as agent:
        yield agent


# --- the manager --------------------------------------------------------------------------------------------------


class AioSubscription:
    """A manager event subscription read from asyncio: ``with manager.subscribe() as events: async for e in
    events``, or ``async with``. Same overflow policy as the trio one (``dropped`` counts missed events)."""

    def __init__(self, guest: _Guest, subscription: EventSubscription) -> None:
        self._guest = guest
        self._subscription = subscription
        self._closed = False
        # An event the trio side received for a reader that was cancelled before it could take it.
        self._held: collections.deque[DeviceEvent] = collections.deque()

    @property
    def dropped(self) -> int:
        return self._subscription.dropped

    def pending(self) -> list[DeviceEvent]:
        """Every event received so far and not yet read, without waiting."""
        if self._closed:
            return []
        held, self._held = list(self._held), collections.deque()
        return held + self._subscription.pending()

    async def receive(self) -> DeviceEvent:
        """The next event; raises ``trio.EndOfChannel`` when the manager has closed. Cancel-safe: a cancelled
        receive loses no event."""
        if self._closed:
            raise trio.ClosedResourceError("this subscription is closed")
        if self._held:
            return self._held.popleft()
        try:
            return self._subscription.channel.receive_nowait()
        except trio.WouldBlock:
            pass
        await self._guest.call(self._receive_one)
        return self._held.popleft()

    async def _receive_one(self) -> None:
        # In trio: the event goes to _held at once, so it survives the asyncio reader being cancelled meanwhile.
        self._held.append(await self._subscription.receive())

    def __aiter__(self) -> AioSubscription:
        return self

    async def __anext__(self) -> DeviceEvent:
        try:
            return await self.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._guest.finished.done():
                self._guest.run_soon(self._subscription.close)

    def __enter__(self) -> AioSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> AioSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventForwarder:
    """An asyncio task that hands every event of a subscription to a handler (see ``AioManager.forward_events``)."""

    def __init__(self, subscription: AioSubscription, handler: Callable[[DeviceEvent], Awaitable[None]]) -> None:
        self._subscription = subscription
        self._handler = handler
        self.failures = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        with self._subscription as events:
            async for event in events:
                try:
                    await self._handler(event)
                except Exception:
                    self.failures += 1
                    logger.exception("event handler failed on %s event for %s", event.kind, event.device_id)

    async def aclose(self, *, now: bool = False) -> None:
        if now:
            self._task.cancel()
        await _wait_uncancellable(self._task)


class AioManager:
    """A :class:`ConstellationDeviceManager` driven from asyncio (see the module docstring for the semantics).

    Coroutine methods cross to the guest run; ``add_device``/``add_devices`` are coroutines here too, because
    they start trio tasks. The sync getters read the trio manager directly.
    """

    def __init__(self, guest: _Guest, manager: ConstellationDeviceManager) -> None:
        self._guest = guest
        #: The trio manager itself, for trio code running in the same guest run.
        self.trio_manager = manager

    @property
    def task_name(self) -> str:
        return self.trio_manager.task_name

    async def add_device(self, config: DeviceConfig) -> AgentProfile:
        return await self._guest.call(_sync_in_trio, self.trio_manager.add_device, config)

    async def add_devices(self, configs: Iterable[DeviceConfig]) -> None:
        await self._guest.call(_sync_in_trio, self.trio_manager.add_devices, list(configs))

    async def register_device(
        self,
        device_id: str,
        server_url: str,
        os: str | None = None,
        capabilities: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        max_retries: int = 5,
        auto_connect: bool = True,
        *,
        token_env: str | None = None,
        ca_file: str | None = None,
    ) -> bool:
        register = partial(
            self.trio_manager.register_device,
            device_id,
            server_url,
            os,
            capabilities,
            metadata,
            max_retries,
            auto_connect,
            token_env=token_env,
            ca_file=ca_file,
        )
        return await self._guest.call(register)

    async def connect_device(self, device_id: str) -> bool:
        return await self._guest.call(self.trio_manager.connect_device, device_id)

    async def disconnect_device(self, device_id: str) -> bool:
        return await self._guest.call(self.trio_manager.disconnect_device, device_id)

    async def remove_device(self, device_id: str) -> AgentProfile:
        return await self._guest.call(self.trio_manager.remove_device, device_id)

    async def wait_for_device(self, device_id: str) -> AgentProfile:
        return await self._guest.call(self.trio_manager.wait_for_device, device_id)

    async def wait_until_settled(self, device_ids: Iterable[str] | None = None) -> dict[str, AgentProfile]:
        ids = None if device_ids is None else list(device_ids)
        return await self._guest.call(self.trio_manager.wait_until_settled, ids)

    async def assign_task_to_device(
        self, task_id: str, device_id: str, task_description: str, task_data: dict[str, Any] | None = None
    ) -> TaskResult:
        return await self._guest.call(
            self.trio_manager.assign_task_to_device, task_id, device_id, task_description, task_data
        )

    def subscribe(self, buffer: int | None = None) -> AioSubscription:
        return AioSubscription(self._guest, self.trio_manager.subscribe(buffer))

    async def run_trio(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a trio function in this manager's guest run (e.g. with the trio manager, under a trio deadline)."""
        return await self._guest.call(async_fn, *args)

    def forward_events(self, handler: Callable[[DeviceEvent], Awaitable[None]]) -> EventForwarder:
        """Call ``await handler(event)`` for every event, in order, in an asyncio task of its own (so a slow
        handler delays only itself; past ``event_buffer`` events are dropped for it, as for any subscriber).
        The task ends by itself once the manager has closed and every event was handled; ``aclose()`` waits for
        that, or stops it at once with ``now=True``."""
        return EventForwarder(self.subscribe(), handler)

    def client_id(self, device_id: str) -> str:
        return self.trio_manager.client_id(device_id)

    def get_device_info(self, device_id: str) -> AgentProfile | None:
        return self.trio_manager.get_device_info(device_id)

    def get_all_devices(self) -> dict[str, AgentProfile]:
        return self.trio_manager.get_all_devices()

    def get_connected_devices(self) -> list[str]:
        return self.trio_manager.get_connected_devices()

    def __repr__(self) -> str:
        return f"<AioManager of {self.trio_manager!r}>"


async def _sync_in_trio(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


@asynccontextmanager
async def open_manager(
    task_name: str | None = None, *, cancel_on_crash: bool = True, **kwargs: Any
) -> AsyncIterator[AioManager]:
    """A :class:`ConstellationDeviceManager` (same arguments) running in this loop's trio guest run.

    ``cancel_on_crash=False`` is for a context entered and left by different tasks (as the UFO facade does):
    then no task is cancelled if the manager's trio side crashes; the error is raised when the context is left.
    """
    manager = ConstellationDeviceManager(task_name, **kwargs)

    async def hold(*, task_status: trio.TaskStatus[ConstellationDeviceManager] = trio.TASK_STATUS_IGNORED) -> None:
        async with manager:
            task_status.started(manager)
            await trio.sleep_forever()

    async with _lease() as guest, _resident(guest, hold, cancel_on_crash):
        yield AioManager(guest, manager)
