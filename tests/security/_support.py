"""Shared pieces of the security suite: a trio loop on a thread for Hypothesis, log capture, event helpers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

from galaxy_trio.manager import DeviceEvent, DeviceStatus, EventKind, EventSubscription

from ..manager.peer import Conn, ScriptedPeer

T = TypeVar("T")


class TrioThread:
    """A trio loop on a thread of its own that runs ``host`` for the length of a ``with`` block.

    Hypothesis drives examples from a plain (sync) test. Each example runs in this one loop through :meth:`run`,
    so every example of a test meets the same long-lived server and the same bystander connection: whatever
    state the bad frames leave behind is carried into the next example, which is part of what is tested.
    ``host`` is started with ``nursery.start``; what it passes to ``task_status.started`` is what ``with`` gives.
    """

    def __init__(self, host: Callable[..., Awaitable[None]]) -> None:
        self._host = host
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="trio-host", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._value: Any = None

    def __enter__(self) -> Any:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._value

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the loop and return its result (or raise its exception) here."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._cancel is not None:
            try:
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._root)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _root(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            self._value = await nursery.start(self._host)
            self._ready.set()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_logs(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Every record (DEBUG and up) of the named loggers, from any thread, while the block runs.

    Unlike pytest's ``caplog`` this is per call, so a Hypothesis test can capture each example on its own.
    """
    handler = _Records()
    loggers = [logging.getLogger(name) for name in (names or ("galaxy_trio",))]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)


def connections_of(peer: ScriptedPeer, client_id: str) -> list[Conn]:
    """Every connection (live or not) on which ``client_id`` registered with the scripted peer, oldest first."""
    return [c for c in peer.connections if c.received and c.received[0].client_id == client_id]


def live_connection(peer: ScriptedPeer, client_id: str) -> Conn:
    (conn,) = [c for c in connections_of(peer, client_id) if c in peer.live]
    return conn


async def next_status(
    events: EventSubscription, device_id: str, status: DeviceStatus, *, quiet: tuple[str, ...] = ()
) -> DeviceEvent:
    """The next status event taking ``device_id`` to ``status``; any event about a ``quiet`` device fails."""
    async for event in events:
        assert event.device_id not in quiet, f"a bystander was affected: {event}"
        if event.kind is EventKind.STATUS and event.device_id == device_id and event.new_status is status:
            return event
    raise AssertionError("the event stream ended")
