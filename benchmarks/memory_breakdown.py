"""Where an idle managed device's memory goes: tracemalloc, grouped by the code that allocated it.

Usage: ``python benchmarks/memory_breakdown.py [--devices N] [--top K] [--only TEXT] [--out FILE]``

``bench_registration.py`` reports RSS per device; this script says what that memory is. It starts the device side
(``_device_side.py``: one AIP server and N agents) in another process, runs one untimed single-device warm-up in
this one, then takes a tracemalloc snapshot before a fresh manager and another once all N devices are IDLE
(after a full collection), and prints the difference per device: by file, then by allocation line (``--only``
keeps lines whose file name contains TEXT, e.g. ``galaxy_trio``). tracemalloc sees the Python heap only; RSS adds
the allocator's overhead (and tracemalloc's own, so RSS is not reported here).
"""

from __future__ import annotations

import argparse
import gc
import linecache
import secrets
import sys
import tempfile
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _device_side
import trio

from galaxy_trio import ConstellationDeviceManager
from galaxy_trio.config import DeviceConfig, ManagerSettings
from galaxy_trio.manager import DeviceStatus
from galaxy_trio.redact import url_with_token

#: Deadlines far above the run time, so nothing retries (a retry would leave a second link's garbage).
GENEROUS_S = 300.0


def _site(path: str) -> str:
    """A short, machine-independent name for a source file."""
    for marker in ("site-packages/", "/galaxy_trio/"):
        if marker in path:
            tail = path.rpartition(marker)[2]
            return ("galaxy_trio/" if marker == "/galaxy_trio/" else "") + tail
    return path.rsplit("/", 1)[-1] if path.startswith("/") else path


def breakdown(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, devices: int, *, top: int, only: str
) -> dict[str, Any]:
    """Per-device growth between two snapshots, by file and by line."""
    by_file = after.compare_to(before, "filename")
    by_line = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in by_file)
    files = [
        {
            "file": _site(stat.traceback[0].filename),
            "bytes": stat.size_diff / devices,
            "objects": stat.count_diff / devices,
        }
        for stat in by_file[:top]
    ]
    lines = []
    for stat in by_line:
        frame = stat.traceback[0]
        if only and only not in frame.filename:
            continue
        lines.append(
            {
                "site": f"{_site(frame.filename)}:{frame.lineno}",
                "code": linecache.getline(frame.filename, frame.lineno).strip()[:72],
                "bytes": stat.size_diff / devices,
                "objects": stat.count_diff / devices,
            }
        )
        if len(lines) == top:
            break
    return {"devices": devices, "traced_kib_per_device": total / devices / 1024, "files": files, "lines": lines}


async def measure(devices: int, *, top: int, only: str) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as logs:
        side = await _device_side.start_device_side(
            ["--devices", str(devices), "--port", "0", "--prefix", "mem-"],
            token=token,
            log_path=Path(logs) / "device_side.log",
            ready_within=60.0 + devices * 0.02,
        )
        try:
            url = url_with_token(side.url, token)
            configs = [DeviceConfig(device_id=f"mem-{i}", server_url=url) for i in range(devices)]
            settings = ManagerSettings(
                task_name="memory",
                connect_timeout=GENEROUS_S,
                register_timeout=GENEROUS_S,
                telemetry_timeout=GENEROUS_S,
            )
            async with ConstellationDeviceManager(settings=settings) as warm_up:  # lazily built module state
                warm_up.add_devices(configs[:1])
                await warm_up.wait_for_device(configs[0].device_id)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                async with ConstellationDeviceManager(settings=settings) as manager:
                    manager.add_devices(configs)
                    for config in configs:
                        await manager.wait_for_device(config.device_id)
                    gc.collect()
                    after = tracemalloc.take_snapshot()
                    idle = sum(p.status is DeviceStatus.IDLE for p in manager.get_all_devices().values())
            finally:
                tracemalloc.stop()
        finally:
            await side.stop()
    if idle != devices:
        raise RuntimeError(f"only {idle} of {devices} devices were IDLE when measured")
    return breakdown(before, after, devices, top=top, only=only)


def render(result: dict[str, Any]) -> str:
    files = _common.markdown_table(
        ["file", "bytes/device", "objects/device"],
        [[row["file"], f"{row['bytes']:.0f}", f"{row['objects']:.1f}"] for row in result["files"]],
    )
    lines = _common.markdown_table(
        ["allocated at", "code", "bytes/device", "objects/device"],
        [[row["site"], row["code"], f"{row['bytes']:.0f}", f"{row['objects']:.1f}"] for row in result["lines"]],
    )
    return (
        f"Idle managed device, {result['devices']} devices: {result['traced_kib_per_device']:.2f} KiB of traced "
        f"Python heap per device\n\nBy file:\n\n{files}\n\nBy line:\n\n{lines}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=500, metavar="N")
    parser.add_argument("--top", type=int, default=15, metavar="K", help="rows per table")
    parser.add_argument("--only", default="", metavar="TEXT", help="by-line rows only from files containing TEXT")
    _common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.top < 1:
        parser.error("--devices and --top must be at least 1")
    _device_side.raise_nofile_limit()
    result = trio.run(lambda: measure(args.devices, top=args.top, only=args.only))
    print(render(result))
    if args.out is not None:
        _common.write_json(args.out, {"benchmark": "memory_breakdown", "environment": _common.environment(), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
