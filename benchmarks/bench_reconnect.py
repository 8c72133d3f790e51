"""How fast a fleet comes back after its AIP server restarts, and whether the reconnects are spread by jitter.

Usage: ``python benchmarks/bench_reconnect.py --devices N [--reconnect-delay S] [--backoff-cap S] [--downtime S]
[--bucket S] [--timeout S] [--out FILE]``

The device side runs as two processes started with ``benchmarks/_device_side.py``: the AIP server alone, and the
N device agents, so that the server can be killed and restarted on its own. This script is the manager: it
brings the N devices to IDLE, then SIGKILLs the server process (a crash: the kernel closes its sockets and every
link drops at the same instant), waits ``--downtime`` seconds and starts a new server on the same port. The
agents come back by themselves with their own backoff; the manager's devices reconnect with theirs
(``reconnect_delay`` doubling up to ``backoff_cap``, full jitter) and must first see their agent registered
again ("target device not connected" is retried).

Reported: the time from the new server listening (and from the kill) until every device is IDLE again — the
moment of the last device's IDLE event in the manager's event stream — and the distribution of the manager's
reconnect attempts (its CONNECTING status events) over time, in ``--bucket`` (250 ms) buckets, as a table and an
ASCII histogram. Full jitter should show attempts spread over each backoff window, not synchronised spikes.

Target: every device IDLE again within ``backoff_cap + 3 s`` of the restart. Only a failure (devices not IDLE
again within ``--timeout``) changes the exit status, never a figure.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _device_side
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig
from galaxy_trio.manager import DeviceEvent, DeviceStatus, EventKind
from galaxy_trio.redact import url_with_token

#: Extra time over the backoff cap that the fleet may take to be IDLE again after the restart.
TARGET_MARGIN_S = 3.0
#: Histogram bars are scaled to at most this many characters.
BAR_WIDTH = 50
#: Deadline for each phase of an attempt: a dead port refuses at once, so this never paces the reconnects.
PHASE_TIMEOUT_S = 30.0


class Recorder:
    """Keeps the manager's events (status changes only) and notices when every device is IDLE after a mark."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.device_ids = frozenset(device_ids)
        self.statuses: list[DeviceEvent] = []
        self.mark = math.inf  # wall-clock time of the kill; IDLE events after it count as "back"
        self.back: dict[str, float] = {}
        self.all_back = trio.Event()

    def arm(self, mark: float) -> None:
        self.mark = mark
        self.back.clear()
        self.all_back = trio.Event()

    async def run(self, events: trio.MemoryReceiveChannel[DeviceEvent]) -> None:
        async for event in events:
            if event.kind is not EventKind.STATUS:
                continue
            self.statuses.append(event)
            if event.new_status is DeviceStatus.IDLE and event.at >= self.mark and event.device_id not in self.back:
                self.back[event.device_id] = event.at
                if len(self.back) == len(self.device_ids):
                    self.all_back.set()


def histogram(times: Sequence[float], *, bucket: float, end: float) -> list[int]:
    """Counts of ``times`` (seconds from the kill) per ``bucket``-second bucket, from 0 up to ``end``."""
    counts = [0] * max(1, math.ceil(end / bucket))
    for t in times:
        index = min(max(int(t // bucket), 0), len(counts) - 1)
        counts[index] += 1
    return counts


def ascii_histogram(counts: Sequence[int], *, bucket: float, marks: dict[float, str]) -> str:
    """One line per bucket: start time, a bar scaled to :data:`BAR_WIDTH`, the count and any mark in it."""
    peak = max(counts) or 1
    lines = []
    for index, count in enumerate(counts):
        start = index * bucket
        labels = [label for at, label in marks.items() if start <= at < start + bucket]
        bar = "#" * math.ceil(count * BAR_WIDTH / peak) if count else ""
        note = f"  <- {', '.join(labels)}" if labels else ""
        lines.append(f"{start:6.2f}s |{bar:<{BAR_WIDTH}}| {count:5d}{note}")
    return "\n".join(lines)


_DEVICE_IN_REASON = re.compile(r"'[^']*'|\"[^\"]*\"")


def _reason_kind(reason: str | None) -> str:
    """A failure reason with device ids and details removed, so that reasons can be counted by kind."""
    if not reason:
        return "(none)"
    text = _DEVICE_IN_REASON.sub("<id>", reason)
    text = re.sub(r"Target device \S+ is not connected", "Target device <id> is not connected", text)
    text = re.sub(r"\(.*\)", "(...)", text)
    return text[:100]


def _spread(counts: Sequence[int]) -> dict[str, float]:
    """How concentrated the attempts are: the busiest bucket's share, and its ratio to the mean busy bucket."""
    busy = [c for c in counts if c]
    total = sum(counts)
    if not total:
        return {"busiest_bucket_share": 0.0, "peak_to_mean": 0.0, "busy_buckets": 0}
    return {
        "busiest_bucket_share": max(counts) / total,
        "peak_to_mean": max(counts) / statistics.fmean(busy),
        "busy_buckets": len(busy),
    }


async def measure(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Start the device side, bring the fleet up, crash and restart the server, and time the recovery."""
    token = secrets.token_urlsafe(24)
    ready_within = 60.0 + args.devices * 0.02
    server = await _device_side.start_device_side(
        ["--devices", "0", "--port", "0"], token=token, log_path=logs / "server.log", ready_within=ready_within
    )
    sides = [server]
    try:
        agents = await _device_side.start_device_side(
            [
                "--devices",
                str(args.devices),
                "--agents-only",
                "--server-url",
                server.url,
                "--reconnect-delay",
                str(args.reconnect_delay),
                "--backoff-cap",
                str(args.backoff_cap),
            ],
            token=token,
            log_path=logs / "agents.log",
            ready_within=ready_within,
        )
        sides.append(agents)
        prefix = str(agents.ready["prefix"])
        configs = [
            DeviceConfig(device_id=f"{prefix}{index}", server_url=url_with_token(server.url, token), max_retries=10**6)
            for index in range(args.devices)
        ]
        recorder = Recorder([config.device_id for config in configs])
        async with ConstellationDeviceManager(
            task_name="reconnect",
            reconnect_delay=args.reconnect_delay,
            backoff_cap=args.backoff_cap,
            connect_timeout=PHASE_TIMEOUT_S,
            register_timeout=PHASE_TIMEOUT_S,
            telemetry_timeout=PHASE_TIMEOUT_S,
        ) as manager:
            with manager.subscribe(buffer=64 * args.devices + 1024) as events:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(recorder.run, events.channel)
                    started = time.perf_counter()
                    with trio.fail_after(args.timeout):
                        manager.add_devices(configs)
                        profiles = await manager.wait_until_settled()
                    first_up_s = time.perf_counter() - started
                    not_idle = [i for i, p in profiles.items() if p.status is not DeviceStatus.IDLE]
                    if not_idle:
                        raise RuntimeError(f"{len(not_idle)} devices not IDLE before the restart, e.g. {not_idle[0]}")

                    cpu_before = time.process_time()
                    killed_at = time.time()
                    recorder.arm(killed_at)
                    server.kill()
                    await server.process.wait()
                    if args.downtime > 0:
                        await trio.sleep(args.downtime)  # the outage itself, as asked for
                    spawned_at = time.time()
                    server = await _device_side.start_device_side(
                        ["--devices", "0", "--port", str(server.port)],
                        token=token,
                        log_path=logs / "server_restarted.log",
                        ready_within=ready_within,
                    )
                    sides.append(server)
                    listening_at = float(server.ready["listening_at"])
                    recovered = True
                    with trio.move_on_after(args.timeout):
                        await recorder.all_back.wait()
                    if not recorder.all_back.is_set():
                        recovered = False
                    cpu_s = time.process_time() - cpu_before
                    statuses = Counter(p.status.value for p in manager.get_all_devices().values())
                    dropped = events.dropped
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as stopping:
                for side in sides:
                    stopping.start_soon(side.stop)

    after_kill = [event for event in recorder.statuses if event.at >= killed_at]
    connecting = [event.at - killed_at for event in after_kill if event.new_status is DeviceStatus.CONNECTING]
    attempts = Counter(event.device_id for event in after_kill if event.new_status is DeviceStatus.CONNECTING)
    first_at: dict[str, float] = {}
    noticed_at: dict[str, float] = {}
    for event in after_kill:
        if event.new_status is DeviceStatus.CONNECTING:
            first_at.setdefault(event.device_id, event.at - killed_at)
        elif event.new_status is DeviceStatus.DISCONNECTED:
            noticed_at.setdefault(event.device_id, event.at - killed_at)
    first_attempt = sorted(first_at.values())
    noticed = sorted(noticed_at.values())
    # Drawn uniformly in [0, reconnect_delay]; more than that is time the manager's loop was too busy to wake it.
    first_wait = sorted(first_at[i] - noticed_at[i] for i in first_at if i in noticed_at)
    reasons = Counter(
        _reason_kind(event.reason) for event in after_kill if event.new_status is DeviceStatus.DISCONNECTED
    )
    back = sorted(recorder.back.values())
    last_back = back[-1] if recovered and back else math.nan
    end = max([*connecting, (last_back - killed_at) if recovered else 0.0, listening_at - killed_at]) + args.bucket
    counts = histogram(connecting, bucket=args.bucket, end=end)
    target_s = args.backoff_cap + TARGET_MARGIN_S
    restart_to_idle = last_back - listening_at
    per_device_count = sorted(attempts.values()) or [0]
    return {
        "devices": args.devices,
        "reconnect_delay_s": args.reconnect_delay,
        "backoff_cap_s": args.backoff_cap,
        "downtime_s": args.downtime,
        "first_up_s": first_up_s,
        "recovered": recovered,
        "statuses_after": dict(statuses),
        "devices_back": len(recorder.back),
        "restart_to_all_idle_s": restart_to_idle,
        "kill_to_all_idle_s": last_back - killed_at,
        "spawn_to_listening_s": listening_at - spawned_at,
        "kill_to_listening_s": listening_at - killed_at,
        "target_s": target_s,
        "meets_target": recovered and restart_to_idle <= target_s,
        "idle_again_after_restart_s": {
            "p50": statistics.median(back) - listening_at if back else math.nan,
            "max": restart_to_idle,
        },
        "reconnect_attempts": len(connecting),
        "attempts_per_device": {
            "min": per_device_count[0],
            "median": statistics.median(per_device_count),
            "max": per_device_count[-1],
        },
        "link_loss_noticed_after_kill_s": {
            "min": noticed[0] if noticed else math.nan,
            "p50": statistics.median(noticed) if noticed else math.nan,
            "max": noticed[-1] if noticed else math.nan,
        },
        "first_backoff_observed_s": {
            "p50": statistics.median(first_wait) if first_wait else math.nan,
            "p95": first_wait[int(0.95 * (len(first_wait) - 1))] if first_wait else math.nan,
            "max": first_wait[-1] if first_wait else math.nan,
        },
        "first_attempt_after_kill_s": {
            "min": first_attempt[0] if first_attempt else math.nan,
            "p50": statistics.median(first_attempt) if first_attempt else math.nan,
            "max": first_attempt[-1] if first_attempt else math.nan,
        },
        "disconnect_reasons": dict(reasons.most_common(5)),
        "bucket_s": args.bucket,
        "histogram": counts,
        "spread": _spread(counts),
        "manager_cpu_s": cpu_s,
        "manager_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "events_dropped": dropped,
        "device_side": [
            {key: side.ready[key] for key in ("pid", "devices", "server", "startup_s", "nofile")} for side in sides
        ],
    }


def _s(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def render(result: dict[str, Any]) -> str:
    verdict = "met" if result["meets_target"] else "MISSED"
    table = _common.markdown_table(
        [
            "devices",
            "backoff",
            "downtime",
            "restart -> all IDLE",
            "target",
            "kill -> all IDLE",
            "attempts",
            "per device (med/max)",
            "busiest 250 ms",
            "manager CPU s",
        ],
        [
            [
                result["devices"],
                f"{result['reconnect_delay_s']:g}..{result['backoff_cap_s']:g} s",
                f"{result['downtime_s']:g} s",
                _s(result["restart_to_all_idle_s"]),
                f"<= {result['target_s']:g} s ({verdict})",
                _s(result["kill_to_all_idle_s"]),
                result["reconnect_attempts"],
                f"{result['attempts_per_device']['median']:g}/{result['attempts_per_device']['max']}",
                f"{100 * result['spread']['busiest_bucket_share']:.1f}%",
                f"{result['manager_cpu_s']:.2f}",
            ]
        ],
    )
    listening = result["kill_to_listening_s"]
    marks = {0.0: "server killed", listening: "new server listening"}
    if result["recovered"]:
        marks[result["kill_to_all_idle_s"]] = "all IDLE again"
    first = result["first_attempt_after_kill_s"]
    noticed = result["link_loss_noticed_after_kill_s"]
    wait = result["first_backoff_observed_s"]
    lines = [
        table,
        "",
        f"Server restart: killed (SIGKILL) at 0 s, new server listening at {listening:.2f} s (its process started "
        f"{result['spawn_to_listening_s']:.2f} s before listening). The manager saw each link drop (DISCONNECTED) "
        f"after min {_s(noticed['min'])}, median {_s(noticed['p50'])}, max {_s(noticed['max'])}; first reconnect "
        f"attempt per device: min {_s(first['min'])}, median {_s(first['p50'])}, max {_s(first['max'])} (backoff "
        f"for a first failure: uniform in [0, {result['reconnect_delay_s']:g}] s; observed from each drop to its "
        f"first attempt: median {_s(wait['p50'])}, p95 {_s(wait['p95'])}, max {_s(wait['max'])}). Devices IDLE again, "
        f"after the restart: median {_s(result['idle_again_after_restart_s']['p50'])}, "
        f"last {_s(result['idle_again_after_restart_s']['max'])}.",
        "Why links failed while the server was away: "
        + "; ".join(f"{count} x {reason}" for reason, count in result["disconnect_reasons"].items()),
        "",
        f"Manager reconnect attempts (CONNECTING events) per {result['bucket_s'] * 1000:g} ms, from the kill "
        f"({result['spread']['busy_buckets']} busy buckets, peak/mean {result['spread']['peak_to_mean']:.2f}):",
        "",
        ascii_histogram(result["histogram"], bucket=result["bucket_s"], marks=marks),
    ]
    if not result["recovered"]:
        lines.append(
            f"FAILED: only {result['devices_back']} of {result['devices']} devices IDLE again within the timeout; "
            f"statuses {result['statuses_after']}"
        )
    if result["events_dropped"]:
        lines.append(f"note: {result['events_dropped']} events dropped; the histogram is partial")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000, metavar="N", help="fleet size (default 1000)")
    parser.add_argument("--reconnect-delay", type=float, default=0.5, metavar="S", help="first backoff (0.5)")
    parser.add_argument("--backoff-cap", type=float, default=5.0, metavar="S", help="largest backoff (5)")
    parser.add_argument("--downtime", type=float, default=0.0, metavar="S", help="wait S s before the restart")
    parser.add_argument("--bucket", type=float, default=0.25, metavar="S", help="histogram bucket (0.25 s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S s per stage")
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if not 0 < args.reconnect_delay <= args.backoff_cap or not math.isfinite(args.backoff_cap):
        parser.error("need 0 < --reconnect-delay <= --backoff-cap")
    if args.downtime < 0 or not args.bucket > 0:
        parser.error("--downtime must be >= 0 and --bucket > 0")
    if args.timeout is None:
        args.timeout = 30.0 + 3 * args.backoff_cap + args.downtime + args.devices * 0.01
    elif not args.timeout > 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = _device_side.raise_nofile_limit()
    needed = {
        "manager": args.devices + _device_side.FD_OVERHEAD,
        "server": _device_side.fds_needed(agents=0, server_links=2 * args.devices),
        "agents": _device_side.fds_needed(agents=args.devices, server_links=0),
    }
    short = {name: fds for name, fds in needed.items() if fds > hard}
    if short:
        print(f"cannot run {args.devices} devices: open files needed {short}, hard limit {hard}", file=sys.stderr)
        return 2
    load = _device_side.host_load()
    with tempfile.TemporaryDirectory(prefix="bench_reconnect_") as logs:
        result = trio.run(measure, args, Path(logs))
    print(
        f"Reconnect after a server restart: {args.devices} devices, loopback; manager in this process, server and "
        f"agents in one process each; open files raised to {soft} (hard {hard})\n"
    )
    print(render(result))
    print(_device_side.describe_load(load))
    if args.out is not None:
        _common.write_json(
            args.out,
            {
                "benchmark": "reconnect",
                "environment": {**_common.environment(), "load_before": load},
                "nofile": {"soft": soft, "hard": hard, "needed": needed},
                **result,
            },
        )
    return 0 if result["recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
