"""Does the control plane slow registration? 1,000 devices to IDLE with and without 100 SSE clients that never read.

Usage: ``python benchmarks/bench_control.py [--devices N] [--clients C] [--repeat R] [--out FILE]``

The device side (an AIP server and N agents) runs in a process of its own (``_device_side.py``). In this
process, R rounds alternate three set-ups, each with a fresh manager: **bare** (no control server), **control**
(``serve_control`` running, nobody watching) and **control + C stalled** (C clients opened ``/api/events``, read
its first bytes, and then never read again, with a 1 KiB receive buffer: the worst browser tab there is). For
each it reports the median time from ``add_devices`` to every device IDLE, this process's CPU seconds over the
same span, and, with stalled clients, the events the control server dropped for them (counted in its metrics).
The manager never waits for a client, so the figure to look at is the ratio of the last set-up to the second.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import _common
import _device_side
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig, ManagerSettings
from galaxy_trio.control import ControlEndpoint, serve_control
from galaxy_trio.manager import DeviceStatus
from galaxy_trio.redact import url_with_token

SETUPS = ("bare", "control", "control + stalled clients")


async def _stalled_client(endpoint: ControlEndpoint) -> trio.SocketStream:
    host, port = endpoint.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    request = f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {endpoint.token}\r\n\r\n"
    await stream.send_all(request.encode())
    received = b""
    while b"event: snapshot" not in received:
        received += await stream.receive_some(256)
    return stream


def _dropped(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('galaxy_trio_control_events_dropped_total{consumer="sse"}')
    )


async def one_run(setup: str, configs: list[DeviceConfig], clients: int) -> dict[str, Any]:
    settings = ManagerSettings(task_name=f"bench{secrets.token_hex(3)}", connect_timeout=300, register_timeout=300)
    async with trio.open_nursery() as nursery, ConstellationDeviceManager(settings=settings) as manager:
        endpoint: ControlEndpoint | None = None
        stalled: list[trio.SocketStream] = []
        if setup != "bare":
            endpoint = await nursery.start(partial(serve_control, manager, port=0))
        if setup == "control + stalled clients":
            assert endpoint is not None
            stalled = [await _stalled_client(endpoint) for _ in range(clients)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        manager.add_devices(configs)
        profiles = await manager.wait_until_settled()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        idle = sum(1 for p in profiles.values() if p.status is DeviceStatus.IDLE)
        dropped = 0.0
        if endpoint is not None:
            import httpx

            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {endpoint.token}"}) as http:
                dropped = _dropped((await http.get(endpoint.url + "metrics")).text)
        for stream in stalled:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return {"setup": setup, "seconds": wall, "cpu_s": cpu, "idle": idle, "dropped": dropped}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    _device_side.raise_nofile_limit()
    token = secrets.token_urlsafe(24)
    logs = Path(tempfile.mkdtemp(prefix="bench_control_"))
    side = await _device_side.start_device_side(
        ["--devices", str(args.devices), "--port", "0", "--prefix", "c-dev-", "--log-level", "ERROR"],
        token=token,
        log_path=logs / "device_side.log",
        ready_within=60.0 + args.devices * 0.02,
    )
    try:
        configs = [
            DeviceConfig(device_id=f"c-dev-{n}", server_url=url_with_token(side.url, token), max_retries=3)
            for n in range(args.devices)
        ]
        await one_run("bare", configs[:10], 0)  # warm-up: imports and lazily built state
        runs: list[dict[str, Any]] = []
        for round_ in range(args.repeat):
            order = SETUPS if round_ % 2 == 0 else tuple(reversed(SETUPS))
            for setup in order:
                runs.append(await one_run(setup, configs, args.clients))
    finally:
        with trio.CancelScope(shield=True):
            await side.stop()
    summary = {}
    for setup in SETUPS:
        mine = [r for r in runs if r["setup"] == setup]
        summary[setup] = {
            "median_s": statistics.median(r["seconds"] for r in mine),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in mine),
            "all_idle": all(r["idle"] == args.devices for r in mine),
            "dropped_median": statistics.median(r["dropped"] for r in mine),
            "runs_s": [round(r["seconds"], 3) for r in mine],
        }
    return {"devices": args.devices, "clients": args.clients, "repeat": args.repeat, "summary": summary, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100, help="SSE clients that never read")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each runs every set-up once, order alternating")
    _common.add_out_argument(parser)
    args = parser.parse_args()
    load = _device_side.host_load()
    result = trio.run(main_async, args)
    result["environment"] = _common.environment()
    result["load"] = load
    print(_device_side.describe_load(load))
    base = result["summary"]["control"]["median_s"]
    rows = [
        [
            setup,
            f"{s['median_s']:.3f}",
            f"{s['median_cpu_s']:.3f}",
            f"{s['median_s'] / base:.2f}x",
            f"{s['dropped_median']:.0f}",
            "yes" if s["all_idle"] else "NO",
            " ".join(f"{v:.3f}" for v in s["runs_s"]),
        ]
        for setup, s in result["summary"].items()
    ]
    print(f"{args.devices} devices to IDLE; {args.clients} stalled SSE clients; {args.repeat} rounds (alternating)")
    print(
        _common.markdown_table(
            ["set-up", "median s", "CPU s", "vs control", "SSE events dropped", "all IDLE", "runs (s)"], rows
        )
    )
    if args.out:
        _common.write_json(Path(args.out), result)
    return 0 if all(s["all_idle"] for s in result["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
