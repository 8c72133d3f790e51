"""The registry's session indices, without sockets: by id, by device, by requester, and the counts from them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from galaxy_trio.aip import ClientType
from galaxy_trio.server.clients import ClientRecord, ClientRegistry, DeviceLoad

from ._links import FakeLink


@dataclass(eq=False)
class FakeSession:
    session_id: str
    requester: ClientRecord
    device: ClientRecord
    cancelled: str | None = None

    def cancel_device_gone(self) -> None:
        self.cancelled = "device"

    def cancel_requester_gone(self) -> None:
        self.cancelled = "requester"


def record(client_id: str, role: ClientType = ClientType.DEVICE) -> ClientRecord:
    return ClientRecord(client_id, role, None, "linux", None, FakeLink())


def test_sessions_are_indexed_by_device_and_requester_in_arrival_order() -> None:
    registry = ClientRegistry()
    dev, other, boss = record("dev"), record("other"), record("boss", ClientType.CONSTELLATION)
    for r in (dev, other, boss):
        registry.add(r)
    s1, s2, s3 = FakeSession("s1", boss, dev), FakeSession("s2", dev, dev), FakeSession("s3", boss, other)
    for s in (s1, s2, s3):
        registry.add_session(s)
    assert registry.sessions_on(dev) == [s1, s2]
    assert registry.sessions_asked_by(boss) == [s1, s3]
    assert registry.sessions_asked_by(dev) == [s2]
    assert (registry.count_on("dev"), registry.count_on("other"), registry.count_on("ghost")) == (2, 1, 0)
    assert (registry.owner_of("s1"), registry.owner_of("s2"), registry.owner_of("nope")) == ("boss", "dev", None)
    dev.enter_session()
    assert registry.load(dev) == DeviceLoad(active=1, peak=1, queued=1)

    registry.remove_session(s1)
    registry.remove_session(s1)  # idempotent
    assert registry.sessions_on(dev) == [s2] and registry.sessions_asked_by(boss) == [s3]
    assert set(registry.sessions) == {"s2", "s3"}
    for s in (s2, s3):
        registry.remove_session(s)
    assert registry.sessions == {} and registry.sessions_on(dev) == [] and registry.sessions_asked_by(boss) == []


def test_a_session_id_names_one_session_and_a_stale_remove_leaves_its_successor() -> None:
    registry = ClientRegistry()
    dev, boss = record("dev"), record("boss", ClientType.CONSTELLATION)
    first = FakeSession("s", boss, dev)
    registry.add_session(first)
    with pytest.raises(KeyError, match="'s'"):
        registry.add_session(FakeSession("s", boss, dev))
    registry.remove_session(first)
    second = FakeSession("s", boss, dev)
    registry.add_session(second)
    registry.remove_session(first)  # the old one again: must not drop the new session that reuses its id
    assert registry.sessions == {"s": second} and registry.sessions_on(dev) == [second]


def test_a_device_that_reconnects_under_its_id_starts_with_an_empty_queue() -> None:
    registry = ClientRegistry()
    old, boss = record("dev"), record("boss", ClientType.CONSTELLATION)
    registry.add(old)
    settling = FakeSession("s1", boss, old)
    registry.add_session(settling)
    assert registry.remove(old)
    new = record("dev")
    registry.add(new)
    assert registry.count_on("dev") == 0 and registry.sessions_on(new) == []
    assert registry.sessions_on(old) == [settling]  # still reachable, to be cancelled by the old connection
    assert not registry.remove(old)  # never someone else's live registration
    assert registry.get("dev") is new
