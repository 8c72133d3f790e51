"""WebSocket links that carry AIP frames, shared by the manager, the server and the agent.

This is the one edge where the WebSocket libraries' and the OS's exceptions become galaxy_trio's own
(:class:`~galaxy_trio.errors.LinkError` and its subclasses), so nothing above it catches library internals.
Timeouts belong to callers: wrap :func:`open_link` or :meth:`Link.receive` in ``trio.fail_after``.

- :mod:`._wslink`: the link core both ends share, on wsproto directly: the task that receives reads the socket
  itself (answering pings, recording pongs, acknowledging a close), so an idle link costs one waiting task and no
  HTTP state.
- :mod:`.client`: :func:`open_link`, the client side (manager and agent): TCP (one ``connect`` for an IP literal),
  the upgrade request built once per URL, the 101 judged without an HTTP library.
- :mod:`.server`: :func:`serve_links` (accepts upgrades, ``nursery.start`` style; one task per connection) and
  :class:`ServerLink`, the server's side; the upgrade request judged without an HTTP library.
- :mod:`._errors`: ``map_exceptions``, the error tables every I/O call site here runs under.
"""

from ..aip.close_codes import CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, CLOSE_UNSUPPORTED_DATA
from ._link import CANCELLED_CLOSE_GRACE, CLOSE_GRACE, DEFAULT_MAX_FRAME, Link
from .client import ClientLink, LinkState, connect_link, open_link
from .server import LinkHandler, LinkRequest, ServerLink, serve_links

__all__ = [
    "CANCELLED_CLOSE_GRACE",
    "CLOSE_GRACE",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "DEFAULT_MAX_FRAME",
    "ClientLink",
    "Link",
    "LinkHandler",
    "LinkRequest",
    "LinkState",
    "ServerLink",
    "connect_link",
    "open_link",
    "serve_links",
]
