"""The pacing of the closes a server's peers start (``serve_links(closes_per_pass=...)``, issue #15 item 3): of
many peers closing at once, at most ``closes_per_pass`` are handled in one pass of trio's scheduler, every close
still completes (its code acknowledged, its socket closed), and the other links are served in between. Passes are
counted by a trio Instrument (one per I/O wait), never timed."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing

from galaxy_trio.errors import LinkClosed
from galaxy_trio.transport import ClientLink, LinkRequest, LinkState, connect_link, open_link, serve_links
from galaxy_trio.transport._pacing import PassTurnstile
from galaxy_trio.transport.server import DEFAULT_CLOSES_PER_PASS


class PassCounter(trio.abc.Instrument):
    """Numbers the scheduler's passes: a pass is what runs between two waits for I/O."""

    def __init__(self) -> None:
        self.number = 0

    def after_io_wait(self, timeout: float) -> None:
        self.number += 1


@asynccontextmanager
async def counting_passes() -> AsyncIterator[PassCounter]:
    counter = PassCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        yield counter
    finally:
        trio.lowlevel.remove_instrument(counter)


# --- the turnstile ----------------------------------------------------------------------------------------------


async def test_the_turnstile_lets_per_pass_tasks_through_each_pass_first_come_first_served() -> None:
    turnstile = PassTurnstile(3)
    through: list[tuple[int, int]] = []  # (task, pass)
    called: list[int] = []
    async with counting_passes() as passes:
        go = trio.Event()

        async def one(n: int) -> None:
            await go.wait()
            called.append(n)
            await turnstile.pass_through()
            through.append((n, passes.number))

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(one, n)
            await trio.testing.wait_all_tasks_blocked()
            go.set()
    per_pass = Counter(p for _, p in through)
    assert sorted(n for n, _ in through) == list(range(10))
    assert max(per_pass.values()) == 3 and len(per_pass) == 4  # 3 + 3 + 3 + 1
    # Whoever came first passed first: along the order of arrival, the pass numbers never go down.
    pass_of = dict(through)
    by_arrival = [pass_of[n] for n in called]
    assert by_arrival == sorted(by_arrival)
    assert turnstile.waiting == 0


async def test_a_task_past_the_turnstile_holds_nothing_while_it_blocks() -> None:
    """A close that then blocks (a peer that stopped reading, its acknowledgement stuck) keeps nobody waiting."""
    turnstile = PassTurnstile(1)
    blocked = trio.Event()
    after: list[int] = []
    async with trio.open_nursery() as nursery:

        async def stuck() -> None:
            await turnstile.pass_through()
            blocked.set()
            await trio.sleep_forever()

        nursery.start_soon(stuck)
        await blocked.wait()
        for n in range(3):
            await turnstile.pass_through()
            after.append(n)
        nursery.cancel_scope.cancel()
    assert after == [0, 1, 2]


async def test_a_task_cancelled_in_the_queue_leaves_it_and_holds_nothing() -> None:
    turnstile = PassTurnstile(1)
    through: list[int] = []
    scopes: dict[int, trio.CancelScope] = {}

    async def one(n: int) -> None:
        with trio.CancelScope() as scopes[n]:
            await turnstile.pass_through()
            through.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(one, n)
        while turnstile.waiting == 0:  # one takes the token, the others queue behind it, one leaving per pass
            await trio.lowlevel.checkpoint()
        for n, scope in scopes.items():
            if n not in through:
                scope.cancel()  # (the one holding the token is shielded: it goes through)
    cancelled = set(range(8)) - set(through)
    assert cancelled and turnstile.waiting == 0
    with trio.fail_after(1):  # (a token kept by a cancelled task would leave none: this would wait for ever)
        await turnstile.pass_through()


def test_a_turnstile_lets_at_least_one_through() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PassTurnstile(0)


# --- over sockets -----------------------------------------------------------------------------------------------


class Echo:
    """A handler that echoes every text frame until its link closes, noting in which pass each link ended."""

    def __init__(self, passes: PassCounter) -> None:
        self._passes = passes
        self.ended_in: list[int] = []
        self.close_codes: list[int | None] = []
        self.accepted = 0

    async def __call__(self, request: LinkRequest) -> None:
        link = await request.accept()
        self.accepted += 1
        try:
            while True:
                await link.send_text(await link.receive())
        except LinkClosed as exc:
            self.close_codes.append(exc.code)
        finally:
            await link.aclose()
            self.ended_in.append(self._passes.number)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("per_pass", [4, DEFAULT_CLOSES_PER_PASS])
async def test_peers_closing_at_once_are_handled_a_few_per_pass_and_a_bystander_is_answered_meanwhile(
    per_pass: int, autojump_clock: trio.testing.MockClock
) -> None:
    peers = 4 * per_pass + 3
    fds_before = _open_fds()
    async with counting_passes() as passes, trio.open_nursery() as nursery:
        echo = Echo(passes)
        port = await nursery.start(
            partial(serve_links, echo, "127.0.0.1", 0, handshake_deadline=30.0, closes_per_pass=per_pass)
        )
        url = f"ws://127.0.0.1:{port}/ws"
        links: list[ClientLink] = []
        async with open_link(url) as bystander:
            for _ in range(peers):
                links.append(await connect_link(url))
            while echo.accepted < peers + 1:
                await trio.testing.wait_all_tasks_blocked()
            go = trio.Event()
            pending_when_answered: list[int] = []

            async def close(link: ClientLink) -> None:
                await go.wait()
                await link.aclose(4001, "bye")

            async def ask() -> None:
                await go.wait()
                await bystander.send_text("still there?")
                assert await bystander.receive() == "still there?"
                pending_when_answered.append(peers - len(echo.ended_in))

            async with trio.open_nursery() as storm:
                for link in links:
                    storm.start_soon(close, link)
                storm.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                started = trio.current_time()
                go.set()  # every peer's close frame and the bystander's frame go out in the same pass
            # No peer waited on the (virtual) clock for the server's acknowledgement of its close.
            assert trio.current_time() == started
            while len(echo.ended_in) < peers:
                await trio.testing.wait_all_tasks_blocked()
            assert bystander.state is LinkState.OPEN
        nursery.cancel_scope.cancel()
    per_pass_ended = Counter(echo.ended_in[:peers])
    assert max(per_pass_ended.values()) <= per_pass, per_pass_ended
    assert len(per_pass_ended) >= peers // per_pass
    # The bystander was answered while most of the closes were still to be handled.
    assert pending_when_answered and pending_when_answered[0] > peers - 2 * per_pass
    # Every close completed: each peer's code reached the server, each peer had its close acknowledged (above) ...
    assert echo.close_codes[:peers] == [4001] * peers
    assert all(link.state is LinkState.DROPPED for link in links)
    # ... and no socket is left open on either side.
    assert _open_fds() <= fds_before


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_a_server_stopped_while_closes_queue_still_closes_every_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Readers cancelled while their peer's close waits for its pass (the server shutting down): nothing hangs,
    nothing stays open."""
    peers = 20
    fds_before = _open_fds()
    ended: list[int] = []
    async with counting_passes() as passes:
        echo = Echo(passes)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_links, echo, "127.0.0.1", 0, handshake_deadline=30.0, closes_per_pass=1)
            )
            url = f"ws://127.0.0.1:{port}/ws"
            links = [await connect_link(url) for _ in range(peers)]
            while echo.accepted < peers:
                await trio.testing.wait_all_tasks_blocked()
            go = trio.Event()

            async def close(link: ClientLink) -> None:
                await go.wait()
                await link.aclose(4001, "bye")
                ended.append(passes.number)

            async with trio.open_nursery() as storm:
                for link in links:
                    storm.start_soon(close, link)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
                for _ in range(3):  # a few passes in: a couple of closes handled, the rest queued
                    await trio.lowlevel.checkpoint()
                assert 0 < peers - len(echo.ended_in)
                nursery.cancel_scope.cancel()
    assert len(ended) == peers and all(link.state is LinkState.DROPPED for link in links)
    assert len(echo.ended_in) == peers
    assert _open_fds() <= fds_before
