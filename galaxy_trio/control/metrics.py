"""Prometheus metrics of one manager, for ``GET /metrics`` (text format by ``prometheus_client``).

Three sources: gauges read the fleet's state at scrape time (devices by status, queue depth, heartbeat age), so
they can never drift from it; the heartbeat counters and round-trip histogram, and the AIP servers' own figures
(clients, sessions, frames in/out, frames refused by rule), are read at scrape time from the counters the manager
(``manager.heartbeat_stats``) and each server (``server.stats``) keep from their start; the rest follows the
manager's event stream (attempts, failures by reason class, phase durations, time to IDLE, tasks). Each control
server has its own registry: two managers in one process do not mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..manager import DeviceEvent, DeviceStatus, EventKind
from ..manager.state import HEARTBEAT_RTT_BUCKETS, HeartbeatStats
from .reasons import STOP_REASONS, reason_class
from .state import DeviceState

__all__ = ["CONTENT_TYPE", "ControlMetrics", "ServerMetrics", "ServerView"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from sub-second local handshakes to a device that needed minutes of backoff.
_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_TASK_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_ENDED: Final = frozenset({DeviceStatus.DISCONNECTED, DeviceStatus.FAILED})


class Counted(Protocol):
    """A consumer that counts the events it had to drop (a subscription, an SSE client's queue)."""

    @property
    def dropped(self) -> int: ...


class ServerCounts(Protocol):
    """An AIP server's own counters (``galaxy_trio.server.stats.ServerStats``)."""

    @property
    def frames_in(self) -> int: ...
    @property
    def frames_out(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...


class ServerView(Protocol):
    """What the metrics read of an AIP server (``galaxy_trio.server.AIPServer``) running in the same process."""

    @property
    def url(self) -> str | None: ...

    @property
    def stats(self) -> ServerCounts: ...

    def online_clients(self) -> Mapping[str, Any]: ...

    def running_sessions(self) -> Mapping[str, str]: ...


class _ServerCollector(Collector):
    """The device side, for AIP servers served by this process: clients by type, sessions, frames in/out and
    frames refused by rule (``server`` label: the server's URL, never with the token)."""

    def __init__(self, servers: Sequence[ServerView]) -> None:
        self._servers = list(servers)

    def collect(self) -> Iterable[Metric]:
        clients = GaugeMetricFamily(
            "galaxy_trio_server_clients", "Clients registered with an AIP server, by type", labels=["server", "type"]
        )
        sessions = GaugeMetricFamily(
            "galaxy_trio_server_sessions_running",
            "Sessions (tasks) running or waiting on an AIP server",
            labels=["server"],
        )
        frames = CounterMetricFamily(
            "galaxy_trio_server_frames",
            "Frames an AIP server received (in) and sent (out)",
            labels=["server", "direction"],
        )
        rejected = CounterMetricFamily(
            "galaxy_trio_server_frames_rejected",
            "Frames an AIP server refused, by the rule that refused them",
            labels=["server", "rule"],
        )
        for server in self._servers:
            name = server.url or "not listening"
            by_type: dict[str, int] = {"device": 0, "constellation": 0}
            for role in server.online_clients().values():
                key = str(getattr(role, "value", role))
                by_type[key] = by_type.get(key, 0) + 1
            for kind, count in by_type.items():
                clients.add_metric([name, kind], count)
            sessions.add_metric([name], len(server.running_sessions()))
            stats = server.stats
            frames.add_metric([name, "in"], stats.frames_in)
            frames.add_metric([name, "out"], stats.frames_out)
            for rule, count in sorted(stats.rejected.items()):
                rejected.add_metric([name, rule], count)
        return [clients, sessions, frames, rejected]


class _HeartbeatCollector(Collector):
    """The manager's heartbeats since it started: sent, missed, and the round-trip histogram."""

    def __init__(self, stats: HeartbeatStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        sent = CounterMetricFamily("galaxy_trio_heartbeats_sent", "Heartbeats sent, every device of this manager")
        sent.add_metric([], stats.sent)
        missed = CounterMetricFamily(
            "galaxy_trio_heartbeats_missed", "Heartbeats that got no frame back within heartbeat_timeout (link dropped)"
        )
        missed.add_metric([], stats.missed)
        rtt = HistogramMetricFamily(
            "galaxy_trio_heartbeat_rtt_seconds", "From a heartbeat to the server's ack, as the manager's loop saw it"
        )
        buckets, total = [], 0
        for bound, count in zip((*HEARTBEAT_RTT_BUCKETS, float("inf")), stats.rtt_buckets, strict=True):
            total += count
            buckets.append((_le(bound), total))
        rtt.add_metric([], buckets, stats.rtt_sum)
        return [sent, missed, rtt]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _FleetCollector(Collector):
    """Gauges computed from the manager's current state at each scrape."""

    def __init__(self, states: Callable[[], Mapping[str, DeviceState]]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        states = self._states()
        by_status = GaugeMetricFamily("galaxy_trio_devices", "Registered devices by status", labels=["status"])
        counts = dict.fromkeys(DeviceStatus, 0)
        for state in states.values():
            counts[state.status] += 1
        for status, count in counts.items():
            by_status.add_metric([status.value], count)
        queue = GaugeMetricFamily("galaxy_trio_task_queue_depth", "Tasks waiting for a device, fleet-wide")
        queue.add_metric([], sum(state.queue_depth for state in states.values()))
        running = GaugeMetricFamily("galaxy_trio_tasks_running", "Tasks running on a device")
        running.add_metric([], sum(1 for state in states.values() if state.current_task is not None))
        now = time.time()
        ages = [now - s.last_heartbeat_at for s in states.values() if s.last_heartbeat_at is not None and _live(s)]
        oldest = GaugeMetricFamily(
            "galaxy_trio_heartbeat_age_max_seconds", "Age of the stalest heartbeat among IDLE and BUSY devices"
        )
        oldest.add_metric([], max(ages, default=0.0))
        return [by_status, queue, running, oldest]


def _live(state: DeviceState) -> bool:
    return state.status in (DeviceStatus.IDLE, DeviceStatus.BUSY)


class _Progress:
    """Per-device bookkeeping for the histograms (when the current phase and the current streak began)."""

    __slots__ = ("phase", "phase_at", "streak_at")

    def __init__(self) -> None:
        self.phase: str | None = None
        self.phase_at = 0.0
        self.streak_at: float | None = None


class ControlMetrics:
    """The registry behind ``/metrics``; feed it every manager event with :meth:`observe`."""

    def __init__(
        self,
        states: Callable[[], Mapping[str, DeviceState]],
        servers: Sequence[ServerView] = (),
        heartbeats: HeartbeatStats | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        r.register(_FleetCollector(states))
        if heartbeats is not None:
            r.register(_HeartbeatCollector(heartbeats))
        if servers:
            r.register(_ServerCollector(servers))
        self.attempts = Counter("galaxy_trio_connection_attempts", "Connection attempts started", registry=r)
        self.failures = Counter(
            "galaxy_trio_connection_failures",
            "Connection attempts or live links that ended in failure, by reason class",
            ["reason_class"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "galaxy_trio_phase_duration_seconds",
            "How long each phase (connect, register, telemetry, active) lasted",
            ["phase"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.time_to_idle = Histogram(
            "galaxy_trio_time_to_idle_seconds",
            "From the first attempt of a streak (backoff included) to IDLE",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.tasks = Counter("galaxy_trio_tasks", "Finished tasks by outcome", ["outcome"], registry=r)
        self.task_seconds = Histogram(
            "galaxy_trio_task_duration_seconds",
            "Task latency, from queued to finished",
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.events_dropped = Counter(
            "galaxy_trio_control_events_dropped",
            "Manager events a slow control-plane consumer missed (its buffer was full)",
            ["consumer"],
            registry=r,
        )
        self.sse_clients = Gauge("galaxy_trio_control_sse_clients", "Open /api/events streams", registry=r)
        self._progress: dict[str, _Progress] = {}
        self._task_queued_at: dict[str, float] = {}
        #: Live subscriptions whose drops are counted, with how many of them are already in the counter.
        self._watched: dict[Counted, tuple[str, int]] = {}

    def render(self) -> bytes:
        for subscription in list(self._watched):
            self.count_drops(subscription)
        return generate_latest(self.registry)

    def watch(self, consumer: str, subscription: Counted) -> None:
        """Count this subscription's dropped events (at each scrape, and at :meth:`unwatch`)."""
        self._watched[subscription] = (consumer, subscription.dropped)

    def unwatch(self, subscription: Counted) -> None:
        self.count_drops(subscription)
        self._watched.pop(subscription, None)

    def count_drops(self, subscription: Counted) -> None:
        """Bring the drop counter up to date with this subscription (events are dropped at once, counted later)."""
        watched = self._watched.get(subscription)
        if watched is not None and subscription.dropped > watched[1]:
            consumer, counted = watched
            self.events_dropped.labels(consumer).inc(subscription.dropped - counted)
            self._watched[subscription] = (consumer, subscription.dropped)

    def observe(self, event: DeviceEvent) -> None:
        kind = event.kind
        if kind is EventKind.STATUS:
            self._on_status(event)
        elif kind is EventKind.PHASE:
            progress = self._progress.setdefault(event.device_id, _Progress())
            self._end_phase(progress, event.at)
            progress.phase, progress.phase_at = event.reason, event.at
        elif kind is EventKind.TASK_QUEUED and event.task_id is not None:
            self._task_queued_at[event.task_id] = event.at
        elif kind is EventKind.TASK_FINISHED and event.task_id is not None:
            self.tasks.labels(event.error_type or "completed").inc()
            queued_at = self._task_queued_at.pop(event.task_id, None)
            if queued_at is not None:
                self.task_seconds.observe(max(0.0, event.at - queued_at))

    def _on_status(self, event: DeviceEvent) -> None:
        progress = self._progress.setdefault(event.device_id, _Progress())
        new = event.new_status
        if new is DeviceStatus.CONNECTING:
            self.attempts.inc()
            if progress.streak_at is None:
                progress.streak_at = event.at
        elif new is DeviceStatus.IDLE and event.old_status is not DeviceStatus.BUSY:
            if progress.streak_at is not None:
                self.time_to_idle.observe(max(0.0, event.at - progress.streak_at))
            progress.streak_at = None
        elif new in _ENDED:
            self._end_phase(progress, event.at)
            stopped = event.reason in STOP_REASONS
            if not stopped and event.old_status is not DeviceStatus.FAILED:
                self.failures.labels(reason_class(event.reason)).inc()
            if stopped or new is DeviceStatus.FAILED:
                progress.streak_at = None  # the streak ended without reaching IDLE

    def _end_phase(self, progress: _Progress, at: float) -> None:
        if progress.phase is not None:
            self.phase_seconds.labels(progress.phase).observe(max(0.0, at - progress.phase_at))
            progress.phase = None


class ServerMetrics:
    """The registry behind ``serve --control``'s ``/metrics``: the AIP servers' own figures, nothing of a manager."""

    def __init__(self, servers: Sequence[ServerView]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_ServerCollector(servers))

    def render(self) -> bytes:
        return generate_latest(self.registry)
