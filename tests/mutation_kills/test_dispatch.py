"""Mutants of the server's dispatch (``server/connection.py``: the reader, frame handling and dispatch, the send
bound) that the suite let live (``tests/mutation.sh dispatch``): what the server logs about each frame it drops or
refuses (the log is how an operator learns of it), the echo of a text-less client ERROR, and the close code,
reason and exception of a peer that reads nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from galaxy_trio.aip import ClientMessageType, ClientType, ServerMessageType, TaskStatus, builders, encode_text
from galaxy_trio.errors import LinkClosed
from galaxy_trio.server import AIPServer, ServerSettings, rules
from galaxy_trio.server.clients import ClientRegistry
from galaxy_trio.server.connection import BoundedLink, ServerContext, handle_connection
from galaxy_trio.server.drivers import default_driver

from ..server._links import FakeLink
from ..server._peers import open_peer, start_server


@pytest.fixture
async def server(nursery: trio.Nursery) -> AIPServer:
    return await start_server(nursery)


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="galaxy_trio.server"):
        yield caplog


def _lines(caplog: pytest.LogCaptureFixture, start: str, end: str) -> list[str]:
    """Log lines that start with ``start`` and end with ``end``."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start) and r.getMessage().endswith(end)]


def _one(caplog: pytest.LogCaptureFixture, who: str, what: str) -> None:
    """Exactly one line ``<who> (<remote>)<what>``: the client named as the server names it, then the event."""
    lines = _lines(caplog, f"{who} (", what)
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


class _ScriptedLink(FakeLink):
    """A FakeLink whose peer sends the frames put into ``inbox``."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox_send, self._inbox = trio.open_memory_channel[str](100)
        self.texts: list[str] = []

    async def send_text(self, text: str) -> None:
        await super().send_text(text)
        self.texts.append(text)

    async def receive(self) -> str:
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            raise LinkClosed() from None


# --- the send bound, unit by unit ---------------------------------------------------------------------------------


async def test_a_send_that_cannot_leave_raises_1008_not_reading_once_the_deadline_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck: list[float] = []
    bounded = BoundedLink(FakeLink(stalled=True), 3.0, lambda: stuck.append(trio.current_time()))  # type: ignore[arg-type]
    start = trio.current_time()
    with pytest.raises(LinkClosed) as caught:
        await bounded.send(builders.heartbeat_ack())
    assert (caught.value.code, caught.value.reason) == (1008, "not reading")
    assert stuck == [start + 3.0]
    moving = _ScriptedLink()
    fine = BoundedLink(moving, 3.0, lambda: stuck.append(-1.0))  # type: ignore[arg-type]
    await fine.send(builders.heartbeat_ack())
    assert len(moving.texts) == 1 and stuck == [start + 3.0] and not fine.closed


async def test_a_peer_that_takes_none_of_its_answers_is_closed_1008_not_reading_and_logged(
    autojump_clock: trio.testing.MockClock, server_log: pytest.LogCaptureFixture
) -> None:
    settings = ServerSettings(send_deadline=4.0, ping_interval=None)
    ctx = ServerContext(ClientRegistry(), settings, default_driver)
    link = _ScriptedLink()
    register = builders.device_register("deaf", platform="linux", system_info=None)
    await link.inbox_send.send(encode_text(register))
    await link.inbox_send.send(encode_text(builders.heartbeat("deaf", ClientType.DEVICE)))
    link.stalled = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_connection, ctx, link, "peer-1")  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        link.stalled = True  # confirmed and first ack sent; now nothing leaves
        start = trio.current_time()
        await link.inbox_send.send(encode_text(builders.heartbeat("deaf", ClientType.DEVICE)))
    assert [(code, reason) for code, reason, _ in link.closes] == [(1008, "not reading")]
    assert link.closes[0][2] == pytest.approx(start + 4.0)
    _one(server_log, "device 'deaf'", "took no frame within 4 s (not reading); closing")
    assert ctx.registry.clients == {}


# --- what the server logs about frames it drops or refuses --------------------------------------------------------


async def test_every_dropped_or_refused_frame_is_logged_naming_the_client(
    server: AIPServer, server_log: pytest.LogCaptureFixture
) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("dev", platform="linux", system_info=None))
        await constellation.register(builders.constellation_register("t", "dev"))
        error = builders.heartbeat("dev", ClientType.DEVICE)
        error.type, error.status, error.error = ClientMessageType.ERROR, TaskStatus.ERROR, None
        await device.send(error)
        assert await device.expect_error() == "error frame without text"
        error.error = "disk full"
        await device.send(error)
        assert await device.expect_error() == "disk full"
        answer = builders.heartbeat("dev", ClientType.DEVICE)
        answer.type = ClientMessageType.DEVICE_INFO_RESPONSE
        await device.send(answer)
        stray = builders.command_results("dev", session_id="s-none", prev_response_id="p-none", results=[])
        await device.send(stray)
        await device.assert_quiet("dev", ClientType.DEVICE)
        forged = builders.command_results("t@dev", session_id="s-none", prev_response_id="p-none", results=[])
        forged.client_type = ClientType.CONSTELLATION
        await constellation.send(forged)
        await constellation.assert_quiet("t@dev", ClientType.CONSTELLATION)
        task = builders.task_request("t@dev", "dev", session_id="s1", task_name="t", request="get_system_info")
        await constellation.send(task)
        await constellation.expect_ack("s1")
        await device.expect(ServerMessageType.COMMAND)  # list_tools, left unanswered
        await device.send_raw(b"\x01\x02\x03")
        await device.expect_error()
    _one(server_log, "device 'dev'", " reported an error: error frame without text")
    _one(server_log, "device 'dev'", " reported an error: disk full")
    _one(server_log, "device 'dev'", " sent a device_info_response; nothing asked for it, ignored")
    assert (
        len(
            _lines(
                server_log,
                "dropped command_results from device 'dev' (",
                "): no COMMAND p-none is waiting in session s-none",
            )
        )
        == 1
    )
    assert (
        len(
            _lines(
                server_log, "dropped command_results from constellation 't@dev' (", "): only devices execute commands"
            )
        )
        == 1
    )
    assert len(_lines(server_log, "task s1 accepted from constellation 't@dev' (", ") for device dev")) == 1
    _one(server_log, "device 'dev'", " sent a binary frame (3 bytes); closing")
    # And each refusal counted under its rule (/metrics: frames_rejected_total{rule=...}): both dropped results
    # (a device's for no COMMAND, a constellation's at all), the binary frame; errors and a stray answer are not.
    assert {rule: n for rule, n in server.stats.rejected.items() if n} == {"command_results": 2, "binary": 1}


async def test_a_bug_in_handling_a_frame_costs_that_frame_and_is_logged_with_its_type(
    server: AIPServer, server_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rules, "check_device_info", broken)
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(builders.device_register("dev", platform="linux", system_info=None))
        await constellation.register(builders.constellation_register("t", "dev"))
        await constellation.send(builders.device_info_request("t@dev", "dev", "r1"))
        assert (
            await constellation.expect_error() == "Internal server error while handling a 'device_info_request' message"
        )
        await constellation.assert_quiet("t@dev", ClientType.CONSTELLATION)
    _one(server_log, "internal error handling a device_info_request frame from constellation 't@dev'", "")


async def _serve(ctx: ServerContext, link: _ScriptedLink, nursery: trio.Nursery, register: str) -> None:
    await link.inbox_send.send(register)
    nursery.start_soon(handle_connection, ctx, link, "peer")  # type: ignore[arg-type]
    await trio.testing.wait_all_tasks_blocked()


async def test_a_spent_frame_budget_closes_1008_and_is_logged_with_the_budget(
    autojump_clock: trio.testing.MockClock, server_log: pytest.LogCaptureFixture
) -> None:
    ctx = ServerContext(
        ClientRegistry(), ServerSettings(frame_rate=1.0, frame_burst=2, ping_interval=None), default_driver
    )
    link = _ScriptedLink()
    async with trio.open_nursery() as nursery:
        await _serve(ctx, link, nursery, encode_text(builders.device_register("f", platform="linux", system_info=None)))
        for _ in range(3):
            await link.inbox_send.send(encode_text(builders.heartbeat("f", ClientType.DEVICE)))
    assert [(code, reason) for code, reason, _ in link.closes] == [(1008, "frame rate exceeded")]
    _one(server_log, "device 'f'", " exceeded its frame budget (1/s, burst 2); closing")


async def test_a_stop_while_a_reply_is_being_sent_lets_the_reply_finish(autojump_clock: trio.testing.MockClock) -> None:
    """A scoped constellation whose device goes away is stopped; its reader, busy sending an answer, is not cut
    in the middle of it: the close comes when that send gives up (``send_deadline``), then the last ERROR's own
    bound (``cancel_grace``), not at once."""
    settings = ServerSettings(send_deadline=5.0, cancel_grace=2.0, ping_interval=None)
    ctx = ServerContext(ClientRegistry(), settings, default_driver)
    device, constellation = _ScriptedLink(), _ScriptedLink()
    async with trio.open_nursery() as nursery:
        await _serve(
            ctx, device, nursery, encode_text(builders.device_register("d", platform="linux", system_info=None))
        )
        await _serve(ctx, constellation, nursery, encode_text(builders.constellation_register("t", "d")))
        constellation.stalled = True
        await constellation.inbox_send.send(encode_text(builders.heartbeat("t@d", ClientType.CONSTELLATION)))
        await trio.testing.wait_all_tasks_blocked()  # its reader is now sending the ack, which cannot leave
        start = trio.current_time()
        device.inbox_send.close()  # the device goes away: the constellation is stopped
        await trio.testing.wait_all_tasks_blocked()
        assert not constellation.closes  # not cut mid-reply
    code, reason, at = constellation.closes[0]
    assert (code, reason) == (1000, "target device disconnected")
    assert at == pytest.approx(start + 5.0 + 2.0)
