"""Error mapping at the I/O edge: one table per call site turns library and OS exceptions into galaxy_trio's own.

Modelled on httpcore's ``map_exceptions``: the body runs inside ``with map_exceptions({...}):`` and an exception
matching a key (in table order, subclasses included) is raised again as the table's error, ``from`` the original,
so the cause stays in the traceback for whoever debugs a failure while callers catch only
:class:`~galaxy_trio.errors.LinkError` and its subclasses. Anything not in the table (``Cancelled`` above all)
passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

import trio

from ..errors import LinkClosed

__all__ = ["STREAM_ERRORS", "ErrorTable", "describe", "link_closed", "map_exceptions"]

#: What a byte stream raises when the peer or the network went away (or the stream was closed under us).
STREAM_ERRORS: Final = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

#: Exception type (or tuple of types) → a function building the library error from the caught exception.
ErrorTable = Mapping[type[Exception] | tuple[type[Exception], ...], Callable[[Exception], Exception]]


@contextmanager
def map_exceptions(table: ErrorTable, *, keep_cause: bool = True) -> Iterator[None]:
    """Raise the mapped error, caused by the original, for the first table entry the exception matches.

    ``keep_cause=False`` is for the one edge where the original may carry a secret (a URL's parse error, whose
    traceback shows the URL and its token): the mapped error's message names the problem instead.
    """
    try:
        yield
    except Exception as exc:
        for source, make in table.items():
            if isinstance(exc, source):
                if keep_cause:
                    raise make(exc) from exc
                raise make(exc) from None
        raise


def link_closed(_exc: Exception) -> LinkClosed:
    """The table entry for a stream that broke: the link is gone, with no close code."""
    return LinkClosed()


def describe(exc: BaseException) -> str:
    """``Type: message`` of the error that matters (a broken TLS stream's underlying cause rather than the wrapper)."""
    cause = exc.__cause__ or exc.__context__
    error = cause if isinstance(exc, trio.BrokenResourceError) and cause is not None else exc
    return f"{type(error).__name__}: {error}"
