"""TASK_END delivery is bounded: a peer that stops reading cannot hold a session (and its device's queue) forever.

Links here are in-memory fakes behind the ``Link`` interface, so "a peer that takes no frame" is exact rather than
a matter of filling kernel socket buffers; times are virtual (``autojump_clock``).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from galaxy_trio.aip import (
    CLOSE_POLICY_VIOLATION,
    ClientType,
    ServerMessageType,
    TaskStatus,
)
from galaxy_trio.server import ServerSettings
from galaxy_trio.server.clients import ClientRecord, ClientRegistry
from galaxy_trio.server.rules import TaskPlan
from galaxy_trio.server.sessions import Outcome, Session, SessionHandle

from ._links import FakeLink


def _record(client_id: str, role: ClientType, link: FakeLink) -> ClientRecord:
    return ClientRecord(
        client_id=client_id,
        role=role,
        target_id="dev" if role is ClientType.CONSTELLATION else None,
        platform="linux",
        system_info=None,
        link=link,
    )


async def _driver(handle: SessionHandle) -> object:
    return {"answer": 42}


def _session(requester: FakeLink, device: FakeLink, settings: ServerSettings) -> Session:
    return Session(
        TaskPlan(device_id="dev", session_id="s1", task_name="t", request="r"),
        _record("galaxy@dev", ClientType.CONSTELLATION, requester),
        _record("dev", ClientType.DEVICE, device),
        _driver,
        settings,
        ClientRegistry(),
    )


async def test_a_requester_that_takes_no_task_end_is_closed_at_the_send_deadline_and_the_device_is_still_told(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = ServerSettings(send_deadline=7.0)
    requester, device = FakeLink(stalled=True), FakeLink()
    session = _session(requester, device, settings)
    started = trio.current_time()
    with trio.fail_after(60):
        await session._deliver(Outcome(TaskStatus.COMPLETED, {"answer": 42}))
    assert requester.sent == []
    assert requester.closes == [(CLOSE_POLICY_VIOLATION, "not reading", started + 7.0)]
    (told,) = device.sent
    assert told.type is ServerMessageType.TASK_END and told.status is TaskStatus.COMPLETED
    assert told.session_id == "s1" and told.result == {"answer": 42}


async def test_a_device_that_takes_no_task_end_is_closed_after_the_requester_got_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = ServerSettings(send_deadline=3.0)
    requester, device = FakeLink(), FakeLink(stalled=True)
    session = _session(requester, device, settings)
    started = trio.current_time()
    await session._deliver(Outcome(TaskStatus.FAILED, [], "boom"))
    (told,) = requester.sent
    assert told.type is ServerMessageType.TASK_END and told.error == "boom"
    assert device.closes == [(CLOSE_POLICY_VIOLATION, "not reading", started + 3.0)]


async def test_peers_that_read_are_never_closed(autojump_clock: trio.testing.MockClock) -> None:
    settings = ServerSettings(send_deadline=1.0)
    requester, device = FakeLink(), FakeLink()
    await _session(requester, device, settings)._deliver(Outcome(TaskStatus.COMPLETED, "ok"))
    assert [m.response_id for m in requester.sent] == [m.response_id for m in device.sent]  # one response_id
    assert requester.closes == [] and device.closes == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "20"])
def test_send_deadline_is_validated(bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="send_deadline"):
        ServerSettings(send_deadline=bad)  # type: ignore[arg-type]
