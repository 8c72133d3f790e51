"""open_service_nursery: background tasks end with the block, and the block's own errors are not wrapped."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from galaxy_trio._nursery import open_service_nursery


async def test_the_bodys_exception_comes_out_as_itself_and_tasks_are_cancelled() -> None:
    cancelled = []

    async def background() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(True)

    with pytest.raises(KeyError, match="boom"):
        async with open_service_nursery() as nursery:
            nursery.start_soon(background)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("boom")
    assert cancelled == [True]


async def test_a_background_tasks_error_is_not_hidden() -> None:
    async def crash() -> None:
        raise RuntimeError("task failed")

    with pytest.RaisesGroup(RuntimeError):
        async with open_service_nursery() as nursery:
            nursery.start_soon(crash)
            await trio.sleep_forever()


async def test_an_outer_cancellation_ends_in_its_own_scope() -> None:
    with trio.CancelScope() as outer:
        async with open_service_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught


async def test_leaving_normally_cancels_the_background_tasks() -> None:
    with trio.move_on_after(5) as guard:
        async with open_service_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
    assert not guard.cancelled_caught
    assert nursery.cancel_scope.cancel_called and not nursery.child_tasks


async def test_the_bodys_exception_keeps_its_cause() -> None:
    with pytest.raises(KeyError) as raised:
        async with open_service_nursery():
            try:
                {}["missing"]
            except KeyError as lookup:
                raise KeyError("boom") from lookup
    assert isinstance(raised.value.__cause__, KeyError) and raised.value.__cause__.args == ("missing",)
    assert not isinstance(raised.value.__context__, BaseExceptionGroup)
