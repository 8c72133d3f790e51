"""Our AIP server's constellation registrations per core under a fixed client load, two servers in one run (#16).

Usage: ``python benchmarks/bench_server.py [--devices N] [--repeat R] [--baseline DIR] [--out FILE]``

A constellation registration is what a manager asks of the server for each device: the HTTP upgrade, a
constellation REGISTER and its verdict, a DEVICE_INFO request and its answer, and, when the manager goes, the
close. The load is fixed: ``bench_floor.py``'s minimal client (a fresh process each time, the same code whichever
server it talks to) brings N devices to "ready", holds them, and exits. The server is measured: the CPU seconds
(psutil, user + system) of the device-side process (``_device_side.py``: the server and N idle agents) from the
client's start until 1 s after it exited, so that the closes are billed too.

With ``--baseline DIR`` (a checkout of another version of the repository, e.g. ``git worktree add /tmp/base
main``), that checkout's ``benchmarks/_device_side.py`` serves as a second device side, started beside ours, and
the client alternates between the two, R times each, the order flipped every round: both servers see the same
machine. Reported: server CPU ms per registration, registrations per server CPU second, and ours / baseline
(the target: >= 3x the rate of the trio-websocket server). Only failures change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _device_side
import bench_floor
import psutil
import trio

SCRIPT = Path(__file__).resolve()
#: How long after the client exits the server's CPU is still counted (it tears down the client's links).
SETTLE_S = 1.0
TARGET_RATE_RATIO = 3.0


#: The kernel counts a process's CPU time in clock ticks: a smaller figure is "less than one tick", kept as one
#: (only tiny smoke-test runs get there), so that rates and ratios stay finite.
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def _one_run(
    side: _device_side.DeviceSide, devices: int, token: str, task: str, profile: Path | None = None
) -> dict[str, Any]:
    process = psutil.Process(side.process.pid)
    spec = {"kind": "minimal", "url": side.url, "prefix": side.ready["prefix"], "devices": devices, "task": task}
    spy = None
    if profile is not None:
        # py-spy samples the device side from outside (no profiler inside the measured process): collapsed stacks.
        spy = await trio.lowlevel.open_process(
            [
                "py-spy",
                "record",
                "--pid",
                str(side.process.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--output",
                str(profile),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await trio.sleep(0.5)  # py-spy attaches
    cpu0 = _cpu(process)
    completed = await trio.run_process(
        [sys.executable, str(bench_floor.SCRIPT), "--worker", json.dumps(spec)],
        env={**os.environ, _device_side.TOKEN_ENV: token},
        capture_stdout=True,
        check=False,
    )
    lines = completed.stdout.decode().strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"the minimal client exited with {completed.returncode} against {side.url}")
    cpu_during = _cpu(process) - cpu0
    await trio.sleep(SETTLE_S)
    cpu_total = _cpu(process) - cpu0
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await spy.wait()
    client = json.loads(lines[-1])
    return {
        "server_cpu_s": max(cpu_total, _TICK_S),
        "server_cpu_during_s": max(cpu_during, _TICK_S),
        "client_wall_s": client["wall_s"],
        "client_cpu_s": client["cpu_s"],
        "ready": client["ready"],
    }


async def orchestrate(
    devices: int, repeat: int, scripts: dict[str, Path], logs: Path, profile_dir: Path | None = None
) -> list[dict[str, Any]]:
    """R runs of the client against each device side (``scripts``: name → its ``_device_side.py``)."""
    token = secrets.token_urlsafe(24)
    sides: dict[str, _device_side.DeviceSide] = {}
    runs: list[dict[str, Any]] = []
    try:
        for name, script in scripts.items():
            sides[name] = await _device_side.start_device_side(
                ["--devices", str(devices), "--port", "0", "--log-level", "WARNING"],
                token=token,
                log_path=logs / f"server_{name}_{devices}.log",
                ready_within=60.0 + devices * 0.02,
                script=script,
            )
        names = list(sides)
        for index in range(repeat):
            # Each round in another order (reversed every other round, rotated): no side always goes first.
            order = names[index // 2 % len(names) :] + names[: index // 2 % len(names)]
            for name in order if index % 2 == 0 else order[::-1]:
                run = await _one_run(sides[name], devices, token, f"srv{name[0]}{index}")
                run.update(server=name, repeat=index)
                runs.append(run)
        if profile_dir is not None:  # one more run each, profiled (not among the figures: py-spy costs CPU too)
            for name in names:
                await _one_run(sides[name], devices, token, f"prof{name[0]}", profile_dir / f"server_{name}.txt")
    finally:
        with trio.CancelScope(shield=True):
            for side in sides.values():
                await side.stop()
    return runs


def summarise(devices: int, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"devices": devices, "repeat": max(run["repeat"] for run in runs) + 1}
    for name in dict.fromkeys(run["server"] for run in runs):
        mine = [run for run in runs if run["server"] == name]
        cpu = statistics.median(run["server_cpu_s"] for run in mine)
        summary[name] = {
            "server_cpu_ms_per_registration": cpu * 1000 / devices,
            "server_cpu_during_ms_per_registration": statistics.median(r["server_cpu_during_s"] for r in mine)
            * 1000
            / devices,
            "registrations_per_cpu_s": devices / cpu,
            "client_wall_s": statistics.median(run["client_wall_s"] for run in mine),
        }
    if "baseline" in summary:
        # Ratio of each round's pair (both ran a few seconds apart), then the median; for every side but the baseline.
        def pairs(name: str) -> list[float]:
            return [
                next(r["server_cpu_s"] for r in runs if r["repeat"] == i and r["server"] == "baseline")
                / next(r["server_cpu_s"] for r in runs if r["repeat"] == i and r["server"] == name)
                for i in range(summary["repeat"])
            ]

        summary["rate_ratio_pairs"] = pairs("ours")
        summary["rate_ratio"] = statistics.median(summary["rate_ratio_pairs"])
        summary["rate_ratios"] = {
            name: statistics.median(pairs(name))
            for name in dict.fromkeys(run["server"] for run in runs)
            if name != "baseline"
        }
    return summary


def render(summary: dict[str, Any]) -> str:
    names = [name for name in ("baseline", *summary.get("rate_ratios", {})) if name in summary]
    names = [*(n for n in names if n != "ours"), "ours"] if "ours" in summary else names
    rows = [
        [
            name,
            summary["devices"],
            f"{summary[name]['server_cpu_ms_per_registration']:.3f}",
            f"{summary[name]['server_cpu_during_ms_per_registration']:.3f}",
            f"{summary[name]['registrations_per_cpu_s']:.0f}",
            f"{summary[name]['client_wall_s']:.3f}",
        ]
        for name in names
    ]
    table = _common.markdown_table(
        [
            "server",
            "registrations",
            "server CPU ms/registration (with close)",
            "until client exit",
            "registrations per CPU s",
            "client to all ready s",
        ],
        rows,
    )
    if "rate_ratio" not in summary:
        return table
    met = "met" if summary["rate_ratio"] >= TARGET_RATE_RATIO else "missed"
    pairs = ", ".join(f"{ratio:.2f}" for ratio in summary["rate_ratio_pairs"])
    steps = "".join(
        f"\n  {name} / baseline: {ratio:.2f}x" for name, ratio in summary["rate_ratios"].items() if name != "ours"
    )
    return (
        f"{table}\n\nregistrations per server CPU second, ours / baseline: {summary['rate_ratio']:.2f}x "
        f"(median of pairs {pairs}; target >= {TARGET_RATE_RATIO:g}x: {met}){steps}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="registrations per run (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="a checkout whose server to compare with")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="more checkouts to measure in the same run (each step of a series of changes), repeatable",
    )
    parser.add_argument("--logs", type=Path, default=None, help="directory for the device sides' stderr")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        dest="profile_dir",
        help="after the measured runs, one more run per server under py-spy (collapsed stacks in DIR)",
    )
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.repeat < 1:
        parser.error("--devices and --repeat must be >= 1")
    if args.baseline is not None and not (args.baseline / "benchmarks" / "_device_side.py").is_file():
        parser.error(f"--baseline {args.baseline}: no benchmarks/_device_side.py there")
    others: dict[str, Path] = {}
    for item in args.also:
        name, equals, directory = item.partition("=")
        if not equals or not name or name in ("ours", "baseline") or name in others:
            parser.error(f"--also {item}: expected NAME=DIR with a new NAME")
        if not (Path(directory) / "benchmarks" / "_device_side.py").is_file():
            parser.error(f"--also {item}: no benchmarks/_device_side.py there")
        others[name] = Path(directory).resolve() / "benchmarks" / "_device_side.py"
    _device_side.raise_nofile_limit()
    print(_device_side.describe_load(_device_side.host_load()), file=sys.stderr)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="bench_server_"))
    scripts = {"ours": _device_side.SCRIPT}
    if args.baseline is not None:
        scripts["baseline"] = args.baseline.resolve() / "benchmarks" / "_device_side.py"
    scripts.update(others)
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    runs = trio.run(orchestrate, args.devices, args.repeat, scripts, logs, args.profile_dir)
    summary = summarise(args.devices, runs)
    print(render(summary))
    if args.out is not None:
        _common.write_json(args.out, {"environment": _common.environment(), "summary": summary, "runs": runs})
    return 0 if all(run["ready"] == args.devices for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
