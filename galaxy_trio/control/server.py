"""``serve_control``: the control API, metrics, event stream and dashboard of one manager, over HTTP on trio.

The HTTP stack: hypercorn's trio worker serves the Starlette app (Starlette runs on anyio, hence on trio): no
asyncio, and the server is a trio task like every other, cancelled with its nursery.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from functools import partial
from typing import Final, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from ..errors import GalaxyTrioError
from ..manager import ConstellationDeviceManager, EventSubscription
from .address import check_bind, format_host
from .app import ControlContext, build_app, build_server_app
from .auth import ControlToken, new_token
from .fleet import FleetControl
from .metrics import ControlMetrics, ServerMetrics, ServerView
from .state import StateReader
from .tasks import TaskBoard

__all__ = ["ControlEndpoint", "ControlServeError", "serve_control", "serve_server_control"]

logger = logging.getLogger("galaxy_trio.control")

#: The control plane's own subscription (metrics, state, task verdicts): large, as it must keep up with a burst of
#: a whole fleet coming up; what it still misses is counted in galaxy_trio_control_events_dropped{consumer="core"}.
CORE_EVENT_BUFFER: Final = 1 << 16
#: Events buffered per SSE client before it counts as slow (then events are dropped for it, and announced).
#: Small on purpose: a client that falls this far behind gets a fresh snapshot instead of a backlog.
SSE_BUFFER: Final = 64


class ControlServeError(GalaxyTrioError):
    """The control server could not listen (address in use, not an address of this machine, no permission)."""


class ControlEndpoint:
    """Where the control server listens and the token it wants; the ``repr`` never shows the token."""

    __slots__ = ("token", "url")

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    def __repr__(self) -> str:
        return f"ControlEndpoint(url={self.url!r}, token=<redacted>)"


async def serve_control(
    manager: ConstellationDeviceManager,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    allow_remote: bool = False,
    sse_buffer: int = SSE_BUFFER,
    fleet: FleetControl | None = None,
    servers: Sequence[ServerView] = (),
    task_status: trio.TaskStatus[ControlEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control plane of ``manager`` until cancelled; ``nursery.start`` returns its :class:`ControlEndpoint`.

    ``port=0`` picks a free port (the endpoint's ``url`` has the real one). Without ``token`` a random one is
    generated (read it from the endpoint, show it once). A non-loopback ``host`` is refused unless
    ``allow_remote``. Each ``/api/events`` client gets a subscription of ``sse_buffer`` events. Start it before
    adding devices so that its metrics see every device from its first attempt.

    In fleet mode pass the manager's ``fleet`` member (``open_fleet_member``): tasks are then routed to the
    device's owner, device rows name their owner, and only owned devices can be connected or disconnected here.
    """
    check_bind(host, allow_remote=allow_remote)
    if sse_buffer < 1:
        raise ValueError(f"sse_buffer must be >= 1, got {sse_buffer}")
    secret = token or new_token()
    control_token = ControlToken(secret)
    states_reader = StateReader(manager)
    metrics = ControlMetrics(states_reader.states, servers, manager.heartbeat_stats)
    with manager.subscribe(CORE_EVENT_BUFFER) as events:
        async with trio.open_nursery() as nursery:
            board = TaskBoard(manager, nursery, fleet)
            ctx = ControlContext(manager, control_token, metrics, board, states_reader, nursery, sse_buffer, fleet)
            nursery.start_soon(_follow, events, ctx)
            url = await _listen(nursery, build_app(ctx), host, port)
            logger.info("control API and dashboard on %s", url)
            task_status.started(ControlEndpoint(url, secret))


async def serve_server_control(
    servers: Sequence[ServerView],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    allow_remote: bool = False,
    task_status: trio.TaskStatus[ControlEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` for AIP ``servers`` (``serve --control``) until cancelled.

    The same rules as :func:`serve_control`: loopback unless ``allow_remote``, ``/metrics`` needs the bearer
    ``token`` (generated when not given: read it from the returned :class:`ControlEndpoint`), the health probes
    need none and show no data. There is no manager here, hence no API and no dashboard.
    """
    check_bind(host, allow_remote=allow_remote)
    secret = token or new_token()
    app = build_server_app(ControlToken(secret), ServerMetrics(servers), servers)
    async with trio.open_nursery() as nursery:
        url = await _listen(nursery, app, host, port)
        logger.info("AIP server metrics and health on %s", url)
        task_status.started(ControlEndpoint(url, secret))


async def _listen(nursery: trio.Nursery, app: object, host: str, port: int) -> str:
    """Serve ``app`` with Hypercorn's trio worker in ``nursery``; the URL it listens on, once it does."""
    config = HypercornConfig()
    config.bind = [f"{format_host(host)}:{port}"]
    config.accesslog = None  # request lines are never logged (an Authorization header never is anyway)
    config.errorlog = _http_log()
    config.graceful_timeout = 1.0
    # Starlette's __call__ is typed with its own Scope/Receive/Send aliases; the protocol is the same ASGI 3.
    asgi = cast(ASGIFramework, app)
    try:
        binds: list[str] = await nursery.start(partial(hypercorn_serve, asgi, config, mode="asgi"))
    except (OSError, BaseExceptionGroup) as exc:
        raise _listen_error(exc, host, port) from None
    return binds[0].rstrip("/") + "/"


async def _follow(events: EventSubscription, ctx: ControlContext) -> None:
    """Feed every manager event to the metrics, the task board and the SSE clients."""
    ctx.metrics.watch("core", events)
    try:
        while True:
            try:
                first = await events.receive()
            except trio.EndOfChannel:
                return
            # Everything already buffered in one go: a burst costs one wake-up, not one per event.
            for event in (first, *events.pending()):
                ctx.metrics.observe(event)
                ctx.tasks.observe(event)
                ctx.publish(event)
    finally:
        ctx.broadcast.close()


def _http_log() -> logging.Logger:
    """Hypercorn's own log: warnings and errors only unless configured (its "Running on …" repeats our line)."""
    log = logging.getLogger("galaxy_trio.control.http")
    if log.level == logging.NOTSET:
        log.setLevel(logging.WARNING)
    return log


def _listen_error(exc: BaseException, host: str, port: int) -> BaseException:
    os_error = _os_error(exc)
    if os_error is None:
        return exc
    where = f"{host}:{port}"
    if os_error.errno == errno.EADDRINUSE:
        return ControlServeError(f"control address {where} is already in use; choose another port (0: any free one)")
    if os_error.errno == errno.EADDRNOTAVAIL:
        return ControlServeError(f"control address {where}: {host} is not an address of this machine")
    if os_error.errno == errno.EACCES:
        return ControlServeError(f"no permission to listen on {where}; ports below 1024 need privileges")
    return ControlServeError(f"cannot listen on {where}: {os_error.strerror or os_error}")


def _os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _os_error(exc.exceptions[0])
    return None
