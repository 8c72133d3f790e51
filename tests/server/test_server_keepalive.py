"""The server-wide keepalive (server/keepalive.py), on trio's MockClock, and what a connection costs in tasks.

The peers are :class:`~._peers.RawPeer`: what they answer (a pong or not, frames or silence) is the test's
choice, and they run no task of their own, which keeps the server's task tree readable.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from galaxy_trio.aip import ClientType, builders
from galaxy_trio.server import ServerSettings
from galaxy_trio.server.keepalive import DEFAULT_ACTIONS_PER_PASS, Keepalive
from galaxy_trio.transport import ClientLink, LinkRequest, ServerLink, open_link, serve_links

from ._peers import RAW_GUARD, RawPeer, start_server

INTERVAL = 20.0
TIMEOUT = 5.0


def _settings() -> ServerSettings:
    return ServerSettings(ping_interval=INTERVAL, ping_timeout=TIMEOUT)


def _task_names() -> list[str]:
    """Every task of this trio run, by name."""
    names: list[str] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        names.append(task.name)
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return names


def _keepalive_tasks() -> int:
    return sum(name.endswith("Keepalive.run") for name in _task_names())


@pytest.mark.parametrize(("interval", "ping_timeout"), [(INTERVAL, TIMEOUT), (5.0, 20.0), (20.0, 20.0)])
async def test_a_silent_peer_is_pinged_interval_after_its_last_frame_and_closed_timeout_later(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    interval: float,
    ping_timeout: float,
) -> None:
    server = await start_server(nursery, settings=ServerSettings(ping_interval=interval, ping_timeout=ping_timeout))
    peer = await RawPeer.device(server, "quiet_dev")
    await trio.sleep(interval * 0.65)
    await peer.heartbeat("quiet_dev")  # the last frame it sends: silence is counted from here
    last_frame_at = trio.current_time()

    await peer.expect_ping()
    assert trio.current_time() - last_frame_at == pytest.approx(interval, abs=0.01)
    with caplog.at_level(logging.WARNING, logger="galaxy_trio.server"):
        assert await peer.expect_close() == (1011, "keepalive ping timeout")
    assert trio.current_time() - last_frame_at == pytest.approx(interval + ping_timeout, abs=0.01)
    assert server.online_clients() == {}  # unregistered before the close frame went out
    assert f"did not answer a ping within {ping_timeout:g} s; closing" in caplog.text
    await peer.stream.aclose()


async def test_a_silent_device_is_unregistered_and_its_constellation_told(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The reaction is the connection's, as for any forced end: the device leaves the registry, the constellation
    scoped to it is told and closed, and the device is closed with 1011."""
    server = await start_server(nursery, settings=_settings())
    device = await RawPeer.device(server, "dev_a")
    constellation = await RawPeer.open(server)
    await constellation.send(builders.constellation_register("hb", "dev_a"))
    await constellation.expect_ack()
    assert server.online_clients() == {"dev_a": ClientType.DEVICE, "hb@dev_a": ClientType.CONSTELLATION}

    await device.expect_ping()
    await constellation.expect_ping()  # (pinged in the same round; it answers, the device does not)
    await constellation.pong()
    told = await constellation.receive()
    assert told.error == "Target device 'dev_a' disconnected"
    assert await constellation.expect_close() == (1000, "target device disconnected")
    assert await device.expect_close() == (1011, "keepalive ping timeout")
    assert server.online_clients() == {}


@pytest.mark.parametrize(("interval", "ping_timeout"), [(INTERVAL, TIMEOUT), (5.0, 20.0)])
async def test_a_peer_that_answers_pings_stays_and_is_pinged_once_per_silent_interval(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, interval: float, ping_timeout: float
) -> None:
    """Pinged ``interval`` after its last answer; with a ``ping_timeout`` longer than that, only once the
    previous ping's verdict is due (see the keepalive's docstring)."""
    server = await start_server(nursery, settings=ServerSettings(ping_interval=interval, ping_timeout=ping_timeout))
    peer = await RawPeer.device(server, "pong_dev")
    registered_at = trio.current_time()
    pinged_at: list[float] = []
    with trio.move_on_after(290):
        while True:
            await peer.expect_ping()
            pinged_at.append(trio.current_time() - registered_at)
            await peer.pong()
    step = max(interval, ping_timeout)
    expected = [interval + step * n for n in range(int((290 - interval) // step) + 1)]
    assert pinged_at == pytest.approx(expected, abs=0.01)
    assert server.online_clients() == {"pong_dev": ClientType.DEVICE}
    await peer.heartbeat("pong_dev")  # and the link still carries frames both ways
    await peer.close()


async def test_a_peer_that_talks_is_never_pinged(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """Frames are proof of life: a peer sending a HEARTBEAT more often than ``ping_interval`` never sees a ping
    (each heartbeat's answer is the very next event)."""
    server = await start_server(nursery, settings=_settings())
    peer = await RawPeer.device(server, "chatty_dev")
    for _ in range(20):
        await trio.sleep(INTERVAL - 1)
        await peer.heartbeat("chatty_dev")
    assert server.online_clients() == {"chatty_dev": ClientType.DEVICE}
    await peer.close()


async def test_a_peer_that_ignores_pings_stays_while_its_frames_never_stop_for_interval_plus_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A changed rule (the per-connection keepalive closed this peer at its first unanswered ping): any frame
    answers a ping. Silent for longer than ``ping_interval`` but never for ``ping_interval + ping_timeout``, it
    is pinged each time, answers with a HEARTBEAT instead of a pong, and stays; once it stops, it is closed."""
    server = await start_server(nursery, settings=_settings())
    peer = await RawPeer.device(server, "deaf_dev")
    for _ in range(10):
        spoke_at = trio.current_time()
        await peer.expect_ping()
        assert trio.current_time() - spoke_at == pytest.approx(INTERVAL, abs=0.01)
        await trio.sleep(TIMEOUT - 1)
        await peer.heartbeat("deaf_dev")
    assert server.online_clients() == {"deaf_dev": ClientType.DEVICE}
    spoke_at = trio.current_time()
    await peer.expect_ping()
    assert (await peer.expect_close())[0] == 1011
    assert trio.current_time() - spoke_at == pytest.approx(INTERVAL + TIMEOUT, abs=0.01)
    assert server.online_clients() == {}


async def test_one_keepalive_task_watches_every_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A connection costs the server its own task and no other; the keepalive is one task for all of them."""
    server = await start_server(nursery, settings=_settings())
    before = _task_names()
    peers = [await RawPeer.device(server, f"dev_{n}") for n in range(12)]
    during = _task_names()
    assert len(during) - len(before) == len(peers)
    assert _keepalive_tasks() == 1
    assert len(server.online_clients()) == len(peers)

    for peer in peers:  # and the one task pings all of them
        await peer.expect_ping()
    for peer in peers:
        await peer.close()
    await trio.testing.wait_all_tasks_blocked()
    assert server.online_clients() == {}
    assert sorted(_task_names()) == sorted(before)  # the connections' tasks and the pings' are gone


def _connection_nurseries() -> int:
    """Nurseries open inside the server's connection tasks (each one's own, and any below it)."""
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    inside: set[trio.lowlevel.Task] = set()
    while pending:
        task = pending.pop()
        if task.name.endswith("_serve_connection") or task in inside:
            count += len(task.child_nurseries)
            inside.update(child for nursery in task.child_nurseries for child in nursery.child_tasks)
        pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return count


async def test_a_connection_opens_a_nursery_only_at_its_first_task(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Sessions need one (they outlive the reader to deliver their TASK_END); a connection that never sends a
    TASK, every device and most constellations, does not pay for it."""
    server = await start_server(nursery, settings=_settings())
    device = await RawPeer.device(server, "dev_t")
    constellation = await RawPeer.open(server)
    await constellation.send(builders.constellation_register("t", "dev_t"))
    await constellation.expect_ack()
    assert _connection_nurseries() == 0
    await constellation.send(
        builders.task_request("t@dev_t", "dev_t", session_id="s-1", task_name="t", request="list_tools")
    )
    await constellation.expect_ack()  # the TASK accepted: its session runs in the constellation's nursery
    command = await device.receive()
    assert (command.type.value, command.session_id) == ("command", "s-1")
    assert _connection_nurseries() == 1
    assert server.running_sessions() == {"s-1": "dev_t"}
    await device.close()  # the session fails towards its requester, from that nursery
    end = await constellation.receive()
    assert (end.type.value, end.session_id, end.status.value) == ("task_end", "s-1", "failed")
    assert (await constellation.receive()).error == "Target device 'dev_t' disconnected"
    assert await constellation.expect_close() == (1000, "target device disconnected")
    await trio.testing.wait_all_tasks_blocked()
    assert server.running_sessions() == {}
    assert _connection_nurseries() == 0


async def test_keepalive_off_runs_no_task_and_never_pings(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await start_server(nursery, settings=ServerSettings(ping_interval=None))
    assert _keepalive_tasks() == 0
    peer = await RawPeer.device(server, "idle_dev")
    await peer.assert_nothing_for(1000)
    assert server.online_clients() == {"idle_dev": ClientType.DEVICE}
    await peer.close()


@asynccontextmanager
async def _unread_links(count: int) -> AsyncIterator[tuple[list[ServerLink], list[ClientLink]]]:
    """``count`` real links, the server's ends of which nobody reads (a reader busy elsewhere), and the clients'."""
    accepted: list[ServerLink] = []
    all_accepted = trio.Event()

    async def never_read(request: LinkRequest) -> None:
        accepted.append(await request.accept())
        if len(accepted) == count:
            all_accepted.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_links, never_read, "127.0.0.1", 0, handshake_deadline=RAW_GUARD))
        async with AsyncExitStack() as clients:
            links = [await clients.enter_async_context(open_link(f"ws://127.0.0.1:{port}/ws")) for _ in range(count)]
            with trio.fail_after(RAW_GUARD):
                await all_accepted.wait()
            yield accepted, links
        nursery.cancel_scope.cancel()


async def test_an_answer_waiting_unread_in_the_socket_is_not_silence(autojump_clock: trio.testing.MockClock) -> None:
    """The Keepalive alone: a peer whose frame came after the ping but waits unread in the socket is spared; a
    twin that sent nothing is reported ``ping_interval + ping_timeout`` after its link opened."""
    keepalive = Keepalive(INTERVAL, TIMEOUT)
    silent: dict[str, float] = {}

    def report_silent(name: str) -> None:
        silent[name] = trio.current_time()

    async with _unread_links(2) as (accepted, (talking, _)), trio.open_nursery() as nursery:
        nursery.start_soon(keepalive.run)
        opened_at = trio.current_time()
        for name, link in zip(("talking", "quiet"), accepted, strict=True):
            keepalive.watch(link, partial(report_silent, name))
        assert keepalive.watching == 2
        await trio.sleep(INTERVAL + 1)  # both pinged; neither client reads, so neither pongs
        await talking.send_text("busy, but here")
        await trio.sleep(200)
        assert accepted[0].heard_at == pytest.approx(opened_at, abs=0.1)  # (nobody read it)
        assert list(silent) == ["quiet"]
        assert silent["quiet"] - opened_at == pytest.approx(INTERVAL + TIMEOUT, abs=0.01)
        assert keepalive.watching == 1
        nursery.cancel_scope.cancel()


async def test_a_verdict_that_raises_costs_only_its_own_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    keepalive = Keepalive(INTERVAL, TIMEOUT)
    reported: list[float] = []

    def broken() -> None:
        raise RuntimeError("a bug in a connection's reaction")

    async with _unread_links(2) as (accepted, _), trio.open_nursery() as nursery:
        nursery.start_soon(keepalive.run)
        opened_at = trio.current_time()
        keepalive.watch(accepted[0], broken)
        keepalive.watch(accepted[1], lambda: reported.append(trio.current_time()))
        with caplog.at_level(logging.ERROR, logger="galaxy_trio.server"):
            await trio.sleep(INTERVAL + TIMEOUT + 1)
        assert reported == [pytest.approx(opened_at + INTERVAL + TIMEOUT, abs=0.01)]
        assert "internal error in a keepalive verdict" in caplog.text
        assert keepalive.watching == 0
        nursery.cancel_scope.cancel()


class _Owner:
    """Stands for a connection: what the keepalive's callback would keep alive."""

    def silent(self) -> None:
        raise AssertionError("a forgotten watch was judged")


async def test_a_forgotten_watch_keeps_nothing_of_its_connection_alive(autojump_clock: trio.testing.MockClock) -> None:
    """Its heap entry waits until it comes due, but the connection behind it is freed at once."""
    keepalive = Keepalive(INTERVAL, TIMEOUT)
    async with _unread_links(1) as (accepted, _), trio.open_nursery() as nursery:
        nursery.start_soon(keepalive.run)
        owner = _Owner()
        owner_ref = weakref.ref(owner)
        watch = keepalive.watch(accepted[0], owner.silent)
        keepalive.forget(watch)
        keepalive.forget(watch)  # (idempotent)
        del owner
        gc.collect()
        assert owner_ref() is None
        assert keepalive.watching == 0
        await trio.sleep(INTERVAL + TIMEOUT + 1)  # its entry comes due: dropped, nothing called
        nursery.cancel_scope.cancel()


class _PassCounter(trio.abc.Instrument):
    """Counts the scheduler's passes (each starts after an I/O wait)."""

    def __init__(self) -> None:
        self.passes = 0

    def after_io_wait(self, timeout: float) -> None:
        self.passes += 1


class _SilentLink:
    """A watched link that was heard once, when made, and never again; it records the pass of each ping sent."""

    def __init__(self, counter: _PassCounter, pinged_in: list[int]) -> None:
        self.heard_at = trio.current_time()
        self._counter = counter
        self._pinged_in = pinged_in

    def has_unread_data(self) -> bool:
        return False

    async def send_ping(self) -> None:
        self._pinged_in.append(self._counter.passes)
        await trio.lowlevel.checkpoint()


async def test_links_due_together_are_pinged_and_judged_a_few_per_pass_at_their_due_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Links heard last at the same instant are all due at the same instant: pinged, then judged, at most
    ``per_pass`` per scheduler pass (passes counted by an Instrument), each still at its due time on the clock."""
    keepalive = Keepalive(INTERVAL, TIMEOUT)
    count = 5 * DEFAULT_ACTIONS_PER_PASS
    counter = _PassCounter()
    pinged_in: list[int] = []
    judged: list[tuple[int, float]] = []
    trio.lowlevel.add_instrument(counter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keepalive.run)
            opened_at = trio.current_time()
            for _ in range(count):
                keepalive.watch(
                    _SilentLink(counter, pinged_in), lambda: judged.append((counter.passes, trio.current_time()))
                )
            await trio.sleep(INTERVAL + TIMEOUT + 1)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert len(pinged_in) == count and max(Counter(pinged_in).values()) == DEFAULT_ACTIONS_PER_PASS
    assert len(set(pinged_in)) == 5  # five passes in a row, a few each: none of them waited on the clock
    assert len(judged) == count and max(Counter(p for p, _ in judged).values()) == DEFAULT_ACTIONS_PER_PASS
    assert {at for _, at in judged} == {opened_at + INTERVAL + TIMEOUT}
    assert keepalive.watching == 0


@pytest.mark.parametrize("per_pass", [0, -1])
def test_a_keepalive_acts_on_at_least_one_link_per_pass(per_pass: int) -> None:
    with pytest.raises(ValueError, match="at least one link per pass"):
        Keepalive(INTERVAL, TIMEOUT, per_pass=per_pass)
