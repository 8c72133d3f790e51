"""A nursery for objects that own background tasks for the length of an ``async with`` block.

With strict exception groups, an exception raised in the body of ``async with trio.open_nursery()`` reaches the
caller wrapped in an ExceptionGroup. Services that merely *own* background tasks (the manager, local mode, the CLI)
should not change their caller's exceptions, so :func:`open_service_nursery` cancels its tasks when the body ends —
however it ends — and, when the body raised and the background tasks only ended by cancellation, re-raises the
body's exception as itself. Cancellations still travel as trio expects (inside groups, to the scope that owns
them), and a background task's own error is never hidden.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """Yield a nursery whose tasks are cancelled when the block ends; the block's own exception is not wrapped."""
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is None or isinstance(body_error, trio.Cancelled):
            raise
        if any(leaf is not body_error and not isinstance(leaf, trio.Cancelled) for leaf in _leaves(group)):
            raise
    else:
        return
    # Raised outside the handler, so the body's exception keeps its own __cause__ and __context__.
    raise body_error


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
