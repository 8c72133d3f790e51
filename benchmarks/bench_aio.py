"""Guest-mode cost: galaxy_trio driven from asyncio (galaxy_trio.aio) against the trio API, in the same run.

Usage::

    python benchmarks/bench_aio.py [--devices 1000] [--rounds 3] [--single 20] [--tasks 200] [--out FILE]

One device side (``_device_side.py``: an AIP server and N agents in a process of their own) serves every
measurement. Each measurement runs in a fresh worker process, the trio API (``trio.run``) and the asyncio one
(``asyncio.run`` + ``galaxy_trio.aio``) alternating round by round (the order flips each round), so both see the
same machine load; the figures to read are the aio/trio ratios. Per worker:

- *one device to IDLE*: ``register_device`` of one device, ``--single`` times, each with a fresh manager (median);
- *N devices to IDLE*: ``add_devices`` of all N, then ``wait_until_settled`` (one timing per round);
- *task round trip*: ``assign_task_to_device`` of an echo task on one IDLE device, ``--tasks`` times (median, p95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _device_side
import trio

from galaxy_trio import ConstellationDeviceManager, DeviceConfig, DeviceStatus, aio

SCRIPT = Path(__file__).resolve()
ECHO = '{"tool_name": "echo", "parameters": {"text": "x"}}'
APIS = ("trio", "aio")


def _url(spec: dict[str, Any]) -> str:
    return f"{spec['url']}?token={os.environ[_device_side.TOKEN_ENV]}"


def _configs(spec: dict[str, Any], count: int) -> list[DeviceConfig]:
    return [DeviceConfig(device_id=f"{spec['prefix']}{i}", server_url=_url(spec)) for i in range(count)]


def _check(profiles: dict[str, Any]) -> None:
    bad = [i for i, p in profiles.items() if p.status is not DeviceStatus.IDLE]
    if bad:
        raise RuntimeError(f"{len(bad)} devices did not reach IDLE, e.g. {bad[0]}")


# --- the two workers: the same steps, once through each API ------------------------------------------------------


async def _trio_worker(spec: dict[str, Any]) -> dict[str, Any]:
    tag, first = spec["tag"], f"{spec['prefix']}0"
    single = []
    for run in range(spec["single"]):
        async with ConstellationDeviceManager(task_name=f"{tag}s{run}") as manager:
            started = time.perf_counter()
            if not await manager.register_device(first, _url(spec)):
                raise RuntimeError("the device did not reach IDLE")
            single.append(time.perf_counter() - started)
    async with ConstellationDeviceManager(task_name=f"{tag}f", event_buffer=1) as manager:
        started = time.perf_counter()
        manager.add_devices(_configs(spec, spec["devices"]))
        profiles = await manager.wait_until_settled()
        fleet = time.perf_counter() - started
        _check(profiles)
        tasks = []
        for n in range(spec["tasks"]):
            started = time.perf_counter()
            result = await manager.assign_task_to_device(f"t{n}", first, ECHO)
            tasks.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"task failed: {result.error}")
    return {"single": single, "fleet": fleet, "tasks": tasks}


async def _aio_worker(spec: dict[str, Any]) -> dict[str, Any]:
    tag, first = spec["tag"], f"{spec['prefix']}0"
    single = []
    for run in range(spec["single"]):
        async with aio.open_manager(task_name=f"{tag}s{run}") as manager:
            started = time.perf_counter()
            if not await manager.register_device(first, _url(spec)):
                raise RuntimeError("the device did not reach IDLE")
            single.append(time.perf_counter() - started)
    async with aio.open_manager(task_name=f"{tag}f", event_buffer=1) as manager:
        started = time.perf_counter()
        await manager.add_devices(_configs(spec, spec["devices"]))
        profiles = await manager.wait_until_settled()
        fleet = time.perf_counter() - started
        _check(profiles)
        tasks = []
        for n in range(spec["tasks"]):
            started = time.perf_counter()
            result = await manager.assign_task_to_device(f"t{n}", first, ECHO)
            tasks.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"task failed: {result.error}")
    return {"single": single, "fleet": fleet, "tasks": tasks}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["api"] == "trio":
        return trio.run(_trio_worker, spec)
    return asyncio.run(_aio_worker(spec))


# --- the orchestrator --------------------------------------------------------------------------------------------


async def orchestrate(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    token = secrets.token_urlsafe(24)
    side = await _device_side.start_device_side(
        ["--devices", str(args.devices), "--port", "0", "--prefix", "dev-"],
        token=token,
        log_path=Path(args.logs) / "bench_aio_device_side.log",
        ready_within=60.0 + args.devices * 0.02,
    )
    runs: dict[str, list[dict[str, Any]]] = {api: [] for api in APIS}
    try:
        for round_no in range(args.rounds):
            for api in APIS if round_no % 2 == 0 else tuple(reversed(APIS)):
                spec = {
                    "api": api,
                    "url": side.url,
                    "prefix": "dev-",
                    "devices": args.devices,
                    "single": args.single,
                    "tasks": args.tasks,
                    "tag": f"r{round_no}{api}",
                }
                done = await trio.run_process(
                    [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
                    env={**os.environ, _device_side.TOKEN_ENV: token},
                    capture_stdout=True,
                    check=True,
                )
                runs[api].append(json.loads(done.stdout.decode().strip().splitlines()[-1]))
                print(f"round {round_no + 1}/{args.rounds}: {api} done", file=sys.stderr)
    finally:
        await side.stop()
    return runs


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarise(runs: dict[str, list[dict[str, Any]]], devices: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for api, results in runs.items():
        single = [s for r in results for s in r["single"]]
        tasks = [t for r in results for t in r["tasks"]]
        figures[api] = {
            "one_device_median_s": statistics.median(single),
            "fleet_median_s": statistics.median(r["fleet"] for r in results),
            "task_median_s": statistics.median(tasks),
            "task_p95_s": _p95(tasks),
        }
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=1000, metavar="N", help="fleet size (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R", help="rounds of (trio, aio) workers")
    parser.add_argument("--single", type=int, default=20, metavar="S", help="one-device registrations per worker")
    parser.add_argument("--tasks", type=int, default=200, metavar="T", help="task round trips per worker")
    parser.add_argument("--logs", default=str(Path(__file__).parent / "results"), metavar="DIR", help="device log")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if min(args.devices, args.rounds, args.single, args.tasks) < 1:
        parser.error("--devices, --rounds, --single and --tasks must be >= 1")
    runs = trio.run(orchestrate, args)
    figures = summarise(runs, args.devices)
    trio_f, aio_f = figures["trio"], figures["aio"]
    rows = [
        [label, _ms(trio_f[key]), _ms(aio_f[key]), f"{aio_f[key] / trio_f[key]:.2f}x"]
        for label, key in (
            ("one device to IDLE (median)", "one_device_median_s"),
            (f"{args.devices} devices to IDLE (median)", "fleet_median_s"),
            ("task round trip (median)", "task_median_s"),
            ("task round trip (p95)", "task_p95_s"),
        )
    ]
    print(_common.markdown_table(["measure", "trio API", "asyncio (galaxy_trio.aio)", "aio / trio"], rows))
    if args.out:
        _common.write_json(
            Path(args.out),
            {
                "environment": _common.environment(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "figures": figures,
                "runs": runs,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
