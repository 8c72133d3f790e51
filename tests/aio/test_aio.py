"""galaxy_trio.aio: the library driven from asyncio, trio as a guest of the loop.

pytest-trio's trio_mode runs ``async def`` tests under trio, so these are sync tests that call ``asyncio.run``;
every one is bounded by ``asyncio.timeout`` (a subprocess test by its own timeout) so nothing can hang.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from galaxy_trio import DeviceConfig, DeviceStatus, DuplicateTaskId, EventKind, UnknownDevice, aio
from galaxy_trio.server import SessionHandle, default_driver

TOKEN = "aio-test-token"
ECHO = '{"tool_name": "echo", "parameters": {"text": "hello"}}'
BOUND = 30.0


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND):
            await main()

    asyncio.run(bounded())
    assert not aio._guests, "a guest run outlived asyncio.run"


@asynccontextmanager
async def device_side(*device_ids: str, driver: Any = default_driver) -> AsyncIterator[str]:
    """A local AIP server and one agent per device id, in the guest; yields the URL with its token."""
    async with aio.open_server(port=0, token=TOKEN, driver=driver) as server:
        url = f"{server.url}?token={TOKEN}"
        async with _agents(url, list(device_ids)):
            yield url


@asynccontextmanager
async def _agents(url: str, ids: list[str]) -> AsyncIterator[None]:
    if not ids:
        yield
        return
    async with aio.open_agent(url, ids[0]), _agents(url, ids[1:]):
        yield


def test_register_run_a_task_stream_events_and_leave_cleanly() -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with device_side("d1") as url, aio.open_manager(task_name="aio") as manager:
            with manager.subscribe() as events:
                assert await manager.register_device("d1", url, os="linux", capabilities=["web"])
                profile = manager.get_device_info("d1")
                assert profile is not None and profile.status is DeviceStatus.IDLE
                before = list(profile.capabilities)
                profile.capabilities.append("changed")  # a snapshot: the manager's own profile is untouched
                assert manager.get_device_info("d1").capabilities == before  # type: ignore[union-attr]
                assert "web" in before
                assert manager.get_connected_devices() == ["d1"]
                result = await manager.assign_task_to_device("t1", "d1", ECHO)
                assert result.status == "completed" and result.result[0]["result"] == "hello"
                seen["kinds"] = [event.kind for event in events.pending()]
                seen["manager"] = manager
            async with manager.subscribe() as live:
                await manager.disconnect_device("d1")
                statuses = []
                async for event in live:
                    if event.kind is EventKind.STATUS:
                        statuses.append(event.new_status)
                        if event.new_status is DeviceStatus.DISCONNECTED:
                            break
                assert statuses == [DeviceStatus.DISCONNECTED]

    run(main)
    kinds = seen["kinds"]
    assert kinds.count(EventKind.TASK_STARTED) == 1 and kinds[-1] is EventKind.TASK_FINISHED
    assert seen["manager"].get_device_info("d1").status is DeviceStatus.DISCONNECTED


def test_add_devices_and_wait_until_settled_from_asyncio() -> None:
    async def main() -> None:
        async with device_side("a", "b") as url, aio.open_manager(task_name="aio") as manager:
            await manager.add_devices([DeviceConfig(device_id=i, server_url=url) for i in ("a", "b", "nobody")])
            settled = await manager.wait_until_settled(["a", "b"])
            assert {i: p.status for i, p in settled.items()} == {"a": DeviceStatus.IDLE, "b": DeviceStatus.IDLE}

    run(main)


def test_the_library_s_own_exceptions_cross_the_bridge_as_themselves() -> None:
    async def main() -> None:
        async with aio.open_manager(task_name="aio") as manager:
            with pytest.raises(UnknownDevice):
                await manager.connect_device("nope")
            with pytest.raises(UnknownDevice):
                await manager.assign_task_to_device("t", "nope", ECHO)

    run(main)


def blocking_driver(gate: trio.Event) -> Any:
    async def driver(session: SessionHandle) -> Any:
        if session.request == "block":
            await gate.wait()
            return "released"
        return await default_driver(session)

    return driver


def test_cancelling_the_asyncio_task_takes_a_queued_task_out_of_the_queue() -> None:
    gate = trio.Event()

    async def release() -> None:
        gate.set()

    async def main() -> None:
        async with device_side("d1", driver=blocking_driver(gate)) as url, aio.open_manager(task_name="q") as m:
            assert await m.register_device("d1", url)
            with m.subscribe() as events:
                running = asyncio.create_task(m.assign_task_to_device("A", "d1", "block"))
                while m.get_device_info("d1").status is not DeviceStatus.BUSY:  # type: ignore[union-attr]
                    await events.receive()
                queued = asyncio.create_task(m.assign_task_to_device("B", "d1", ECHO))
                while (await events.receive()).kind is not EventKind.TASK_QUEUED:
                    pass
                with pytest.raises(DuplicateTaskId):  # while B waits in the queue, its id is taken
                    await m.assign_task_to_device("B", "d1", ECHO)
                queued.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await queued
                # B has left the queue: its id is free again at once (a pending id is refused)...
                again = asyncio.create_task(m.assign_task_to_device("B", "d1", ECHO))
                await asyncio.sleep(0)
                await aio.run_trio(release)
                assert (await running).result == "released"
                assert (await again).status == "completed"
                started = [e.task_id for e in events.pending() if e.kind is EventKind.TASK_STARTED]
                assert started == ["B"]  # ...and the cancelled B never ran: only the re-submitted one did

    run(main)


def test_asyncio_timeout_bounds_a_call_and_cancels_the_trio_side() -> None:
    gate = trio.Event()

    async def main() -> None:
        async with device_side("d1", driver=blocking_driver(gate)) as url, aio.open_manager(task_name="to") as m:
            assert await m.register_device("d1", url)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await m.assign_task_to_device("A", "d1", "block")
            # The trio call is over: the id is no longer pending, so it can be used again.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await m.assign_task_to_device("A", "d1", ECHO)

    run(main)


def test_managers_on_one_loop_share_one_guest_run_which_ends_with_the_last() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.open_manager(task_name="one") as first:
            guest = aio._guests[loop]
            async with aio.open_manager(task_name="two") as second:
                assert aio._guests[loop] is guest and guest.users == 2
                assert first.task_name == "one" and second.task_name == "two"
            assert guest.users == 1 and not guest.finished.done()
        assert guest.finished.done() and loop not in aio._guests
        async with aio.open_manager(task_name="three"):  # a fresh guest run on the same loop
            assert aio._guests[loop] is not guest

    run(main)
    run(main)  # and again under a new loop in the same thread


def test_a_guest_run_that_crashes_fails_pending_calls_with_a_clear_error() -> None:
    async def crash() -> None:
        async def boom() -> None:
            raise ValueError("boom")

        trio.lowlevel.spawn_system_task(boom)
        await trio.sleep_forever()

    async def main() -> None:
        with pytest.raises(aio.GuestRunError, match="crashed"):
            async with aio.open_manager(task_name="c") as manager:
                with manager.subscribe() as events:
                    waiter = asyncio.create_task(events.receive())
                    with pytest.raises(aio.GuestRunError, match="crashed") as caught:
                        await aio.run_trio(crash)
                    assert isinstance(caught.value.__cause__, trio.TrioInternalError)
                    with pytest.raises(aio.GuestRunError):
                        await waiter

    run(main)


def test_ctrl_c_under_asyncio_run_closes_every_link_then_raises_keyboard_interrupt() -> None:
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with device_side("d1") as url, aio.open_manager(task_name="kb") as manager:
            seen["manager"] = manager
            assert await manager.register_device("d1", url)
            signal.raise_signal(signal.SIGINT)
            await asyncio.sleep(BOUND)

    with pytest.raises(KeyboardInterrupt):
        run(main)
    assert seen["manager"].get_device_info("d1").status is DeviceStatus.DISCONNECTED
    assert not aio._guests


def test_closing_the_loop_with_a_manager_open_reports_it_and_does_not_hang() -> None:
    script = textwrap.dedent(
        """
        import asyncio, logging, galaxy_trio.aio as aio

        logging.basicConfig()
        loop = asyncio.new_event_loop()
        context = aio.open_manager(task_name="leak")
        manager = loop.run_until_complete(context.__aenter__())
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
        try:
            asyncio.run(aio.run_trio(asyncio.sleep, 0))
        except aio.GuestRunError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: cannot start trio as a guest" in done.stdout
    assert "an earlier asyncio loop was closed while 1 galaxy_trio.aio context(s) were still open" in done.stdout
    assert "the asyncio loop was closed while 1 galaxy_trio.aio context(s) were still open" in done.stderr


def test_a_body_cancelled_by_its_deadline_still_closes_every_link() -> None:
    gate = trio.Event()
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with device_side("d1", driver=blocking_driver(gate)) as url:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5), aio.open_manager(task_name="cx") as manager:
                    seen["manager"] = manager
                    assert await manager.register_device("d1", url)
                    await manager.assign_task_to_device("A", "d1", "block")  # never ends by itself
            assert seen["manager"].get_device_info("d1").status is DeviceStatus.DISCONNECTED
            assert seen["manager"].get_connected_devices() == []

    run(main)


def test_a_service_that_crashes_cancels_the_body_and_raises_its_error_on_exit() -> None:
    async def flaky(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started("up")
        await trio.sleep(0.01)
        raise OSError("the service broke")

    async def main() -> None:
        with pytest.raises(OSError, match="the service broke"):
            async with aio.open_service(flaky) as value:
                assert value == "up"
                await asyncio.sleep(BOUND)  # cancelled by the crash, as a trio nursery would cancel its body
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main)


def test_a_service_that_fails_to_start_raises_its_own_error() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="non-empty token"):
            async with aio.open_server(port=0, token=""):
                pass

    run(main)


def test_a_cancelled_event_read_loses_no_event() -> None:
    async def main() -> None:
        async with device_side("d1") as url, aio.open_manager(task_name="ev") as manager:
            with manager.subscribe() as events:
                reader = asyncio.create_task(events.receive())
                await asyncio.sleep(0)  # the reader is waiting in the guest now
                await manager.add_device(DeviceConfig(device_id="d1", server_url=url))
                reader.cancel()  # the event may already be on its way to the cancelled reader...
                try:
                    first = await reader
                except asyncio.CancelledError:
                    first = await events.receive()  # ...then it is still here
                assert first.kind is EventKind.STATUS and first.new_status is DeviceStatus.CONNECTING
                await manager.wait_until_settled()

    run(main)


def test_ctrl_c_on_a_loop_run_without_asyncio_run_stops_it_with_keyboard_interrupt() -> None:
    # Without asyncio.run's SIGINT handler, trio's own catches Ctrl-C; the host loop must stop with it, not hang.
    script = textwrap.dedent(
        """
        import asyncio, signal, galaxy_trio.aio as aio

        async def main():
            async with aio.open_manager(task_name="k"):
                asyncio.get_running_loop().call_later(0.1, signal.raise_signal, signal.SIGINT)
                await asyncio.sleep(30)

        try:
            asyncio.new_event_loop().run_until_complete(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "KeyboardInterrupt"
