"""Loading a large ``devices.yaml``: time and peak memory, under three garbage-collector settings.

The loader composes one device entry at a time from the parser's events and drops its nodes once the entry is a
Struct, and leaves the collector alone (a library call must not change process-wide state). This prints what each
collector setting costs, each load in a fresh subprocess (peak RSS is per process)::

    PYTHONPATH=$PWD python benchmarks/bench_config.py --mib 1 7.9

``--mib`` sizes the generated file; the loader refuses files over ``MAX_CONFIG_BYTES`` (8 MiB), in no time (the
size is checked before reading: ``refused`` in the table). ``--tree DIR`` loads with the galaxy_trio of another
checkout too (e.g. ``git archive`` of main), so that before and after are measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICE = """\
  - device_id: device-{index:07d}
    server_url: "ws://10.{a}.{b}.{c}:5005/ws"
    os: linux
    capabilities: [shell_commands, file_management, server_monitoring]
    metadata:
      location: rack-{a}-{b}
      performance: medium
      description: build and test server number {index}
    max_retries: 5
    auto_connect: true
"""


def write_config(path: Path, mib: float) -> int:
    """Write a config of about ``mib`` MiB; returns the number of devices."""
    target = int(mib * 1024 * 1024)
    parts = ["manager:\n  task_name: bench\ndevices:\n"]
    size = len(parts[0])
    index = 0
    while True:
        entry = DEVICE.format(index=index, a=index >> 16 & 255, b=index >> 8 & 255, c=index & 255)
        if size + len(entry) > target:
            break
        parts.append(entry)
        size += len(entry)
        index += 1
    path.write_text("".join(parts), encoding="utf-8")
    return index


def measure(path: str, mode: str) -> dict[str, float]:
    """In this process: load ``path`` once with the collector set up as ``mode``; time and peak RSS."""
    from galaxy_trio.config import ConfigError, load_config
    from galaxy_trio.runtime import tune_gc

    if mode == "disabled":
        gc.disable()
    elif mode == "tuned":
        tune_gc()
    start = time.perf_counter()
    try:
        devices = len(load_config(path).devices)
    except ConfigError:
        devices = -1  # refused (over the size cap)
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "peak_mib": peak_mib, "devices": devices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, nargs="+", default=[1.0, 7.9], help="file sizes to generate")
    parser.add_argument("--modes", nargs="+", default=["default", "tuned", "disabled"])
    parser.add_argument("--tree", action="append", default=[], help="also load with the galaxy_trio under DIR")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for mib in args.mib:
            path = Path(tmp) / f"devices-{mib}.yaml"
            devices = write_config(path, mib)
            size = path.stat().st_size / 1024 / 1024
            print(f"{size:.2f} MiB, {devices:,} devices")
            for tree in [str(Path(__file__).resolve().parents[1]), *args.tree]:
                print(f"  {tree}")
                baseline = None
                for mode in args.modes:
                    child = [sys.executable, __file__, "--child", str(path), mode]
                    env = {**os.environ, "PYTHONPATH": tree}
                    out = subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout
                    result = json.loads(out)
                    baseline = baseline or result["seconds"]
                    ratio = result["seconds"] / baseline
                    outcome = "refused" if result["devices"] < 0 else f"{result['devices']:,} devices"
                    print(
                        f"    gc {mode:<8} {result['seconds']:6.2f} s  ({ratio:4.2f}x of {args.modes[0]})"
                        f"  peak RSS {result['peak_mib']:6.0f} MiB  {outcome}"
                    )


if __name__ == "__main__":
    main()
