"""The floor: galaxy_trio's manager against a minimal client doing the same wire work, in one run (issue #16).

Usage: ``python benchmarks/bench_floor.py [--devices N] [--repeat R] [--out FILE]``

One device side (``_device_side.py``: one AIP server and N agents, one process) serves both clients. Then, R
times and alternating (so that a machine whose speed drifts bills both alike), a fresh process brings all N
devices to "ready" and reports its CPU seconds (``time.process_time``) and wall seconds for it:

- **manager**: a :class:`ConstellationDeviceManager`, ``add_devices`` until every device is IDLE (phases 2-5:
  connect, REGISTER + verdict, DEVICE_INFO, heartbeats scheduled);
- **minimal**: :func:`minimal_device`, per device a trio task that does only the wire work — TCP connect, a
  canned HTTP upgrade (bytes built once, the answer checked for ``101``), a constellation REGISTER and its
  verdict, a DEVICE_INFO request and its response; frames built by hand (masked as RFC 6455 requires), JSON by
  msgspec. No retries, no phases, no events, no heartbeats: what the same work costs with nothing else.

It also reports the device side's CPU seconds over each run (psutil, the whole process: its server does the
REGISTER and DEVICE_INFO work for both clients; its agents are idle meanwhile), i.e. the server's CPU per
constellation registration under a fixed client load. Targets: manager CPU per device <= 1.2x the minimal
client's. Only failures change the exit status (a device not ready, a worker that failed), never a timing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _device_side
import msgspec
import psutil
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig, ManagerSettings
from galaxy_trio.manager import DeviceStatus
from galaxy_trio.redact import url_with_token
from galaxy_trio.runtime import tune_gc

SCRIPT = Path(__file__).resolve()
#: Deadlines so generous that nothing times out and retries.
GENEROUS_S = 300.0
#: The manager's CPU per device may be at most this many times the minimal client's.
TARGET_RATIO = 1.2


# --- the minimal client -------------------------------------------------------------------------------------


class _Reply(msgspec.Struct):
    """The fields of a server frame the minimal client looks at."""

    type: str
    status: str | None = None
    response_id: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode
_encode = msgspec.json.Encoder().encode


def _upgrade_request(host_header: str, resource: str) -> bytes:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    return (
        f"GET {resource} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _text_frame(payload: bytes) -> bytes:
    """One masked client text frame (FIN, opcode 1)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = secrets.token_bytes(4)
    repeated = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")
    return header + mask + masked


class _Frames:
    """Server frames (unmasked) out of a byte stream; pings answered with a pong."""

    __slots__ = ("_buffer", "_stream")

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self._stream = stream
        self._buffer = bytearray(leftover)

    async def next_text(self) -> bytes:
        while True:
            frame = self._take()
            if frame is None:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise ConnectionError("the server hung up")
                self._buffer += data
                continue
            opcode, payload = frame
            if opcode == 0x1:
                return payload
            if opcode == 0x9:
                await self._stream.send_all(bytes((0x8A, 0x80)) + b"\0\0\0\0")  # an empty masked pong
            elif opcode == 0x8:
                raise ConnectionError(f"the server closed the link: {payload[2:].decode(errors='replace')}")

    def _take(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                return None
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + size:
            return None
        opcode = buffer[0] & 0x0F
        payload = bytes(buffer[start : start + size])
        del buffer[: start + size]
        return opcode, payload


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


async def minimal_device(
    host: str, port: int, upgrade: bytes, task_name: str, device_id: str, done: trio.Event, hold: trio.Event
) -> None:
    """One device through the wire work of phases 2-4; the socket is held open until ``hold`` is set."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(upgrade)
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("the server hung up during the upgrade")
            head += data
        head, _, leftover = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise ConnectionError(f"upgrade refused: {status_line}")
        frames = _Frames(stream, leftover)
        client_id = f"{task_name}@{device_id}"
        register = {
            "type": "register",
            "status": "ok",
            "client_type": "constellation",
            "client_id": client_id,
            "target_id": device_id,
            "timestamp": _now(),
            "metadata": {
                "type": "constellation_client",
                "task_name": task_name,
                "targeted_device_id": device_id,
                "capabilities": ["task_distribution", "session_management", "device_coordination"],
                "version": "2.0",
            },
        }
        await stream.send_all(_text_frame(_encode(register)))
        verdict = _decode_reply(await frames.next_text())
        if verdict.type != "heartbeat" or verdict.status != "ok":
            raise ConnectionError(f"REGISTER refused: {verdict.error}")
        request_id = f"device_info_{device_id}_{time.time()}"
        info_request = {
            "type": "device_info_request",
            "status": "ok",
            "client_type": "constellation",
            "client_id": client_id,
            "target_id": device_id,
            "timestamp": _now(),
            "request_id": request_id,
        }
        await stream.send_all(_text_frame(_encode(info_request)))
        info = _decode_reply(await frames.next_text())
        if info.type != "device_info_response" or info.response_id != request_id or info.result is None:
            raise ConnectionError(f"no device info: {info.type} {info.error}")
        done.set()
        await hold.wait()


async def run_minimal(url: str, token: str, device_ids: Sequence[str], task_name: str) -> dict[str, Any]:
    parts = url.split("/", 3)  # ws://host:port/ws
    host, port_text = parts[2].rsplit(":", 1)
    upgrade = _upgrade_request(parts[2], f"/{parts[3]}?token={token}")
    hold = trio.Event()
    dones = [trio.Event() for _ in device_ids]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for device_id, done in zip(device_ids, dones, strict=True):
            nursery.start_soon(minimal_device, host, int(port_text), upgrade, task_name, device_id, done, hold)
        for done in dones:
            await done.wait()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        hold.set()
    return {"cpu_s": cpu, "wall_s": wall, "ready": len(dones)}


# --- the manager ---------------------------------------------------------------------------------------------


async def run_manager(url: str, token: str, device_ids: Sequence[str], task_name: str) -> dict[str, Any]:
    settings = ManagerSettings(
        task_name=task_name, connect_timeout=GENEROUS_S, register_timeout=GENEROUS_S, telemetry_timeout=GENEROUS_S
    )
    configs = [
        DeviceConfig(device_id=device_id, server_url=url_with_token(url, token), max_retries=3)
        for device_id in device_ids
    ]
    async with ConstellationDeviceManager(settings=settings) as manager:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        manager.add_devices(configs)
        ready = 0
        for device_id in device_ids:
            profile = await manager.wait_for_device(device_id)
            ready += profile.status is DeviceStatus.IDLE
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_s": cpu, "wall_s": wall, "ready": ready}


RUNNERS = {"manager": run_manager, "minimal": run_minimal}


def worker_main(spec_json: str) -> int:
    _device_side.raise_nofile_limit()
    tune_gc()  # both clients run with the collector tuned as `python -m galaxy_trio run` does
    spec = json.loads(spec_json)
    token = os.environ[_device_side.TOKEN_ENV]
    ids = [f"{spec['prefix']}{index}" for index in range(spec["devices"])]
    runner = RUNNERS[spec["kind"]]
    # A one-device warm-up, so that first-use costs (imports, caches) are not billed to the fleet.
    trio.run(runner, spec["url"], token, ids[:1], f"{spec['task']}w")
    result = trio.run(runner, spec["url"], token, ids, spec["task"])
    print(json.dumps(result), flush=True)
    return 0 if result["ready"] == len(ids) else 1


# --- the orchestrator ----------------------------------------------------------------------------------------


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def orchestrate(devices: int, repeat: int, logs: Path) -> list[dict[str, Any]]:
    token = secrets.token_urlsafe(24)
    side = await _device_side.start_device_side(
        ["--devices", str(devices), "--port", "0", "--log-level", "WARNING"],
        token=token,
        log_path=logs / f"floor_device_side_{devices}.log",
        ready_within=60.0 + devices * 0.02,
    )
    runs: list[dict[str, Any]] = []
    try:
        device_process = psutil.Process(side.process.pid)
        for index in range(repeat):
            for kind in ("minimal", "manager") if index % 2 == 0 else ("manager", "minimal"):
                spec = {
                    "kind": kind,
                    "url": side.url,
                    "prefix": side.ready["prefix"],
                    "devices": devices,
                    "task": f"{kind}{index}",
                }
                server_cpu0 = _cpu(device_process)
                completed = await trio.run_process(
                    [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)],
                    env={**os.environ, _device_side.TOKEN_ENV: token},
                    capture_stdout=True,
                    check=False,
                )
                server_cpu = _cpu(device_process) - server_cpu0
                lines = completed.stdout.decode().strip().splitlines()
                if completed.returncode != 0 or not lines:
                    raise RuntimeError(f"the {kind} worker exited with {completed.returncode}")
                run = json.loads(lines[-1])
                run.update(kind=kind, repeat=index, device_side_cpu_s=server_cpu)
                runs.append(run)
                await trio.sleep(1.0)  # let the device side drop the closed links before the next client
    finally:
        with trio.CancelScope(shield=True):
            await side.stop()
    return runs


def summarise(devices: int, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def median(kind: str, key: str) -> float:
        return statistics.median(run[key] for run in runs if run["kind"] == kind)

    summary: dict[str, Any] = {"devices": devices, "repeat": len(runs) // 2}
    for kind in RUNNERS:
        summary[kind] = {
            "cpu_ms_per_device": median(kind, "cpu_s") * 1000 / devices,
            "wall_s": median(kind, "wall_s"),
            "device_side_cpu_ms_per_registration": median(kind, "device_side_cpu_s") * 1000 / devices,
        }
    # The ratio of each alternating pair, then the median: both members of a pair ran a few seconds apart.
    pairs = [
        next(r["cpu_s"] for r in runs if r["repeat"] == index and r["kind"] == "manager")
        / next(r["cpu_s"] for r in runs if r["repeat"] == index and r["kind"] == "minimal")
        for index in range(summary["repeat"])
    ]
    summary["cpu_ratio_pairs"] = pairs
    summary["cpu_ratio"] = statistics.median(pairs)
    return summary


def render(summary: dict[str, Any]) -> str:
    rows = [
        [
            kind,
            summary["devices"],
            f"{summary[kind]['cpu_ms_per_device']:.3f}",
            f"{summary[kind]['wall_s']:.3f}",
            f"{summary[kind]['device_side_cpu_ms_per_registration']:.3f}",
        ]
        for kind in ("minimal", "manager")
    ]
    table = _common.markdown_table(
        ["client", "devices", "client CPU ms/device", "to all ready s", "device side CPU ms/registration"], rows
    )
    met = "met" if summary["cpu_ratio"] <= TARGET_RATIO else "missed"
    pairs = ", ".join(f"{ratio:.2f}" for ratio in summary["cpu_ratio_pairs"])
    return (
        f"{table}\n\nmanager CPU per device / minimal client's: {summary['cpu_ratio']:.2f}x "
        f"(median of pairs {pairs}; target <= {TARGET_RATIO}x: {met})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating pairs of runs (default 3)")
    parser.add_argument("--logs", type=Path, default=None, help="directory for the device side's stderr")
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    _device_side.raise_nofile_limit()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="bench_floor_"))
    runs = trio.run(orchestrate, args.devices, args.repeat, logs)
    summary = summarise(args.devices, runs)
    print(render(summary))
    if args.out is not None:
        _common.write_json(args.out, {"environment": _common.environment(), "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
