"""The control API and dashboard as a Starlette app (ASGI; served on trio by :mod:`.server`).

Every route but ``/healthz``, ``/readyz`` and the dashboard's static files needs ``Authorization: Bearer
<token>``; without it the answer is 401 and no data. Handlers only read snapshots and call the manager's public
methods: the manager never waits for the control plane (events reach it through bounded subscriptions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib.resources import files
from typing import Any, Final

import msgspec
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import GalaxyTrioError
from ..manager import (
    ConstellationDeviceManager,
    DeviceEvent,
    DeviceNotConnected,
    DeviceStatus,
    DuplicateTaskId,
    TaskQueueFull,
    TaskRefused,
    UnknownDevice,
)
from . import sse
from .auth import ControlToken
from .broadcast import Broadcast, QueueClosed
from .fleet import FleetControl
from .metrics import CONTENT_TYPE, ControlMetrics, ServerMetrics, ServerView
from .state import DeviceState, StateReader
from .tasks import TaskBoard, TaskRecord, TaskSpec
from .view import device_row

__all__ = ["ControlContext", "build_app", "build_server_app"]

logger = logging.getLogger("galaxy_trio.control")

#: A comment line this often keeps an idle stream open through proxies and lets the client notice a dead one.
SSE_KEEPALIVE: Final = 15.0
#: A client that dropped events gets a fresh snapshot once it has caught up, at most this often (seconds): a
#: snapshot is the whole fleet, and a client that never catches up (never reads) must not cost one per burst.
SSE_RESYNC_INTERVAL: Final = 1.0
#: How long a device listing waits for the fleet registry before showing this member's view only (seconds).
FLEET_READ_BOUND: Final = 2.0
#: The largest ``POST /api/tasks`` body read (the AIP server's default frame bound).
MAX_TASK_BODY: Final = 1 << 20

_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_ON_THE_WAY: Final = frozenset({DeviceStatus.CONNECTING, DeviceStatus.CONNECTED, DeviceStatus.REGISTERING})


def _settling(state: DeviceState) -> bool:
    """In an attempt, or DISCONNECTED between two attempts of a streak (backing off)."""
    return state.status in _ON_THE_WAY or (state.status is DeviceStatus.DISCONNECTED and state.attempt > 0)


class ControlContext:
    """What the handlers share: the manager, the token, the metrics, the tasks and the device states."""

    def __init__(
        self,
        manager: ConstellationDeviceManager,
        token: ControlToken,
        metrics: ControlMetrics,
        tasks: TaskBoard,
        states_reader: StateReader,
        nursery: trio.Nursery,
        sse_buffer: int,
        fleet: FleetControl | None = None,
    ) -> None:
        self.manager = manager
        self.fleet = fleet
        self.sse_buffer = sse_buffer
        #: Manager events as SSE frames, encoded once and sent to every SSE client (see broadcast.py).
        self.broadcast: Broadcast[bytes] = Broadcast()
        self.token = token
        self.metrics = metrics
        self.tasks = tasks
        self.states_reader = states_reader
        self.nursery = nursery

    def states(self) -> dict[str, DeviceState]:
        return self.states_reader.states()

    def device(self, device_id: str, now: float) -> dict[str, Any] | None:
        """This manager's row of a device (in fleet mode with ``owner``: this member, or None if another's)."""
        profile = self.manager.get_device_info(device_id)
        if profile is None:
            return None
        row = device_row(profile, self.states_reader.state(device_id), now)
        if self.fleet is not None:
            row["owner"] = self.fleet.member_id if self.fleet.owns(device_id) else None
        return row

    def devices(self, now: float) -> list[dict[str, Any]]:
        states = self.states()
        rows = [device_row(p, states.get(i), now) for i, p in self.manager.get_all_devices().items()]
        if self.fleet is not None:
            for row in rows:
                row["owner"] = self.fleet.member_id if self.fleet.owns(row["device_id"]) else None
        return rows

    async def fleet_devices(self, now: float) -> list[dict[str, Any]]:
        """:meth:`devices`; in fleet mode, another member's device shows its owner and the status it reported."""
        rows = self.devices(now)
        if self.fleet is None:
            return rows
        snapshot = None
        with trio.move_on_after(FLEET_READ_BOUND):
            try:
                snapshot = await self.fleet.read_fleet()
            except GalaxyTrioError as exc:  # the registry is down: this member's view, with owner unknown
                logger.warning("fleet registry unreachable, showing this member's devices only: %s", exc)
        if snapshot is None:
            return rows
        records = {record.device_id: record for record in snapshot.devices}
        for row in rows:
            record = records.get(row["device_id"])
            if row["owner"] is not None or record is None:
                continue
            row["owner"] = record.owner
            row["reported_at"] = record.updated_at
            if record.status is not None:
                row["status"] = record.status
            if record.profile is not None:
                row["failure_reason"] = record.profile.get("failure_reason")
        return rows

    def publish(self, event: DeviceEvent) -> None:
        """Send ``event`` (with its device's row as it is now) to every SSE client that is keeping up.

        Encoded here, once, not once per client; not at all when no client would receive it. The SSE ``id`` is
        the broadcast's sequence number, so a client can tell a gap. In fleet mode the row is left out for a
        device another member drives (this manager's view of it says nothing).
        """
        if not self.broadcast.has_receivers:
            self.broadcast.skip()
            return
        mine = self.fleet is None or self.fleet.owns(event.device_id)
        row = self.device(event.device_id, time.time()) if mine else None
        payload = {"event": event, "device": row}
        self.broadcast.publish(sse.frame(event.kind.value, msgspec.json.encode(payload), self.broadcast.published + 1))


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _refusal(exc: Exception) -> Response:
    """The library's refusal as a 4xx, with its own message."""
    if isinstance(exc, UnknownDevice):
        return _error(404, str(exc))
    if isinstance(exc, TaskQueueFull):
        return _error(429, str(exc))
    if isinstance(exc, DeviceNotConnected | DuplicateTaskId | TaskRefused):
        return _error(409, str(exc))
    raise exc


Handler = Callable[[Request], Awaitable[Response]]


def build_app(ctx: ControlContext) -> Starlette:
    """The Starlette app for one manager."""

    def authed(handler: Callable[[Request, ControlContext], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not ctx.token.accepts(request.headers.get("authorization")):
                return _unauthorized()
            return await handler(request, ctx)

        return endpoint

    routes = [
        Route("/healthz", _healthz),
        Route("/readyz", _readyz_of(ctx)),
        Route("/metrics", authed(_metrics)),
        Route("/api/devices", authed(_devices)),
        Route("/api/devices/{device_id}", authed(_device)),
        Route("/api/devices/{device_id}/connect", authed(_connect), methods=["POST"]),
        Route("/api/devices/{device_id}/disconnect", authed(_disconnect), methods=["POST"]),
        Route("/api/tasks", authed(_post_task), methods=["POST"]),
        Route("/api/tasks/{task_id}", authed(_get_task)),
        Route("/api/events", authed(_events)),
    ]
    routes += [Route(path, _static_of(name, media)) for path, (name, media) in _STATIC.items()]
    return Starlette(routes=routes)


def build_server_app(token: ControlToken, metrics: ServerMetrics, servers: Sequence[ServerView]) -> Starlette:
    """The Starlette app of ``serve --control``: ``/metrics`` (bearer token, as the manager's), ``/healthz`` and
    ``/readyz`` (no token, no data; ready while every AIP server listens)."""

    async def metrics_endpoint(request: Request) -> Response:
        if not token.accepts(request.headers.get("authorization")):
            return _unauthorized()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def readyz(_request: Request) -> Response:
        if servers and all(server.url for server in servers):
            return Response(b"ready\n", media_type="text/plain")
        return Response(b"not ready\n", status_code=503, media_type="text/plain")

    return Starlette(
        routes=[Route("/healthz", _healthz), Route("/readyz", readyz), Route("/metrics", metrics_endpoint)]
    )


def _unauthorized() -> Response:
    return Response(
        b'{"error":"missing or wrong bearer token"}',
        status_code=401,
        media_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="galaxy_trio"'},
    )


def _static_of(name: str, media_type: str) -> Handler:
    body = files(__package__).joinpath("static", name).read_bytes()

    async def static(_request: Request) -> Response:
        # The dashboard shell holds no data (it asks for the token, then calls the API): served without auth.
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return static


async def _healthz(_request: Request) -> Response:
    return Response(b"ok\n", media_type="text/plain")


def _readyz_of(ctx: ControlContext) -> Handler:
    async def readyz(_request: Request) -> Response:
        """Ready once no device is on its way up: each is IDLE, BUSY, FAILED, or stopped (not backing off)."""
        settling = sum(1 for s in ctx.states().values() if _settling(s))
        if settling:
            return Response(b"not ready\n", status_code=503, media_type="text/plain")
        return Response(b"ready\n", media_type="text/plain")

    return readyz


async def _metrics(_request: Request, ctx: ControlContext) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


async def _devices(_request: Request, ctx: ControlContext) -> Response:
    return _json(await ctx.fleet_devices(time.time()))


async def _device(request: Request, ctx: ControlContext) -> Response:
    device_id = request.path_params["device_id"]
    if ctx.fleet is None:
        row = ctx.device(device_id, time.time())
    else:
        row = next((r for r in await ctx.fleet_devices(time.time()) if r["device_id"] == device_id), None)
    if row is None:
        return _refusal(UnknownDevice(device_id, ctx.manager.get_all_devices()))
    return _json(row)


def _wants_wait(request: Request) -> bool:
    return request.query_params.get("wait", "true").lower() not in ("false", "0", "no")


async def _connect(request: Request, ctx: ControlContext) -> Response:
    """Bring a FAILED or never-connected device back; waits until it settles unless ``?wait=false``."""
    device_id = request.path_params["device_id"]
    if ctx.manager.get_device_info(device_id) is None:
        return _refusal(UnknownDevice(device_id, ctx.manager.get_all_devices()))
    if (refused := _not_ours(ctx, device_id)) is not None:
        return refused
    if _wants_wait(request):
        await ctx.manager.connect_device(device_id)
    else:
        ctx.nursery.start_soon(ctx.manager.connect_device, device_id)
        await trio.lowlevel.checkpoint()
    return _json(ctx.device(device_id, time.time()), 200 if _wants_wait(request) else 202)


def _not_ours(ctx: ControlContext, device_id: str) -> Response | None:
    """Fleet mode: only the owner connects or disconnects a device (its fleet driver would undo anything else)."""
    if ctx.fleet is None or ctx.fleet.owns(device_id):
        return None
    return _error(409, f"device {device_id!r} is not driven by this fleet member; use its owner's control server")


async def _disconnect(request: Request, ctx: ControlContext) -> Response:
    device_id = request.path_params["device_id"]
    if ctx.manager.get_device_info(device_id) is not None and (refused := _not_ours(ctx, device_id)) is not None:
        return refused
    try:
        await ctx.manager.disconnect_device(device_id)
    except UnknownDevice as exc:
        return _refusal(exc)
    return _json(ctx.device(device_id, time.time()))


def _task_body(record: TaskRecord) -> tuple[Any, int]:
    if record.result is not None:
        return record.result, 200
    return {"task_id": record.task_id, "device_id": record.device_id, "status": "pending"}, 202


async def _post_task(request: Request, ctx: ControlContext) -> Response:
    """Run a task: ``{device_id, request, task_id?, timeout?, task_data?}``; the TaskResult, or 202 + id."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_TASK_BODY:
            return _error(413, f"task request larger than {MAX_TASK_BODY} bytes")
    try:
        spec = msgspec.json.decode(bytes(body), type=TaskSpec)
    except msgspec.DecodeError as exc:
        return _error(400, f"bad task request: {exc}")
    if spec.timeout is not None and not spec.timeout > 0:
        return _error(400, f"bad task request: timeout must be a positive number of seconds, got {spec.timeout}")
    record = ctx.tasks.start(spec)
    await (record.done.wait() if _wants_wait(request) else record.accepted.wait())
    if record.refusal is not None:
        return _refusal(record.refusal)
    body, status = _task_body(record)
    return _json(body, status)


async def _get_task(request: Request, ctx: ControlContext) -> Response:
    """A task's TaskResult (200), or 202 while it runs; ``?wait=true`` waits for the result."""
    task_id = request.path_params["task_id"]
    record = ctx.tasks.get(task_id)
    if record is None:
        return _error(404, f"no task {task_id!r} started through this control server (or it finished long ago)")
    if request.query_params.get("wait", "false").lower() in ("true", "1", "yes"):
        await record.done.wait()
    if record.refusal is not None:
        return _refusal(record.refusal)
    body, status = _task_body(record)
    return _json(body, status)


async def _events(_request: Request, ctx: ControlContext) -> Response:
    """The manager's events as SSE: a ``snapshot`` first, then one message per event (with the device's row).

    Each client has its own bounded queue: a client that reads slowly, or not at all, only loses events itself
    (the manager never waits, see broadcast.py). What it lost is counted in the metrics and announced to it at
    once as a ``dropped`` message; once it has caught up it gets a fresh ``snapshot`` (at most one a second).
    """
    queue = ctx.broadcast.open(ctx.sse_buffer)
    ctx.metrics.watch("sse", queue)

    async def stream() -> AsyncIterator[bytes]:
        ctx.metrics.sse_clients.inc()
        announced = 0
        resync_due = False
        last_snapshot = trio.current_time()
        try:
            yield sse.frame("snapshot", msgspec.json.encode(await ctx.fleet_devices(time.time())))
            while True:
                now = trio.current_time()
                resync_at = last_snapshot + SSE_RESYNC_INTERVAL
                if resync_due and not queue and now >= resync_at:
                    # Caught up after a loss: the whole fleet again, so that nothing missed stays wrong.
                    resync_due = False
                    last_snapshot = now
                    yield sse.frame("snapshot", msgspec.json.encode(await ctx.fleet_devices(time.time())))
                    continue
                wait = min(SSE_KEEPALIVE, resync_at - now) if resync_due else SSE_KEEPALIVE
                messages: list[bytes] = []
                ended = False
                with trio.move_on_after(max(0.0, wait)):
                    try:
                        messages = await queue.get_all()
                    except QueueClosed:
                        ended = True
                if ended:
                    yield sse.frame("closed", b'{"reason":"manager closed"}')
                    return
                if not messages:
                    if not resync_due:
                        yield sse.comment("keepalive")
                    continue
                if queue.dropped > announced:
                    ctx.metrics.count_drops(queue)
                    announced = queue.dropped
                    resync_due = True
                    yield sse.frame("dropped", msgspec.json.encode({"dropped": announced}))
                yield b"".join(messages)
        finally:
            ctx.broadcast.leave(queue)
            ctx.metrics.unwatch(queue)
            ctx.metrics.sse_clients.dec()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
