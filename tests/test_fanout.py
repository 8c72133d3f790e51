"""The fan-out hub: per-subscriber bounds and drop counts, closed subscribers forgotten, close ends every stream."""

from __future__ import annotations

from galaxy_trio.fanout import Hub


async def test_a_full_subscriber_drops_for_itself_only() -> None:
    hub = Hub[int](default_buffer=2)
    small, large = hub.subscribe(), hub.subscribe(buffer=10)
    for n in range(5):
        hub.publish(n)
    assert small.pending() == [0, 1] and small.dropped == 3
    assert large.pending() == [0, 1, 2, 3, 4] and large.dropped == 0


async def test_a_closed_subscription_is_forgotten_at_the_next_event() -> None:
    hub = Hub[str](default_buffer=4)
    with hub.subscribe():
        pass
    assert hub.has_subscribers
    hub.publish("nobody reads this")
    assert not hub.has_subscribers


async def test_closing_the_hub_ends_every_stream_after_its_events() -> None:
    hub = Hub[str](default_buffer=4)
    first, second = hub.subscribe(), hub.subscribe()
    hub.publish("a")
    hub.close()
    assert not hub.has_subscribers
    assert [event async for event in first] == ["a"]
    assert [event async for event in second] == ["a"]
