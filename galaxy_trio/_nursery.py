"""A nursery for objects that own background tasks for the length of an ``async with`` block.

With strict exception groups, an exception raised in the body of ``async with trio.open_nursery()`` reaches the
caller wrapped in an ExceptionGroup. Services that merely *own* background tasks (the manager, local mode) should
not change the caller's exceptions, so :func:`open_service_nursery` cancels its tasks when the body ends — however
it ends — and lets the body's exception through unwrapped. An error in a background task still surfaces (as the
nursery's group), since services are written so that their tasks do not raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """Yield a nursery whose tasks are cancelled when the block ends; the block's own exception is not wrapped."""
    manager = trio.open_nursery()
    nursery = await manager.__aenter__()
    try:
        yield nursery
    finally:
        nursery.cancel_scope.cancel()
        # Exit as if the body had finished: the body's exception (if any) then propagates as it is, while a
        # Cancelled caused by this nursery's own scope ends here, as it should.
        await manager.__aexit__(None, None, None)
