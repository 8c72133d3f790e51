"""The chaos soak (issue 15, item 2) for as long as you like: ``tests/soak/engine.py`` with the figures printed.

    python benchmarks/soak.py [--minutes 20] [--devices 50] [--callers 8] [--seed 1] [--fault-every 4]
        [--warmup 60] [--fault-warmup 180] [--out FILE]
    python benchmarks/soak.py --fleet [--lease-ttl 3] [...]

Everything (AIP server, fault proxy, device agents, the manager and its callers) runs in this one process on the
real clock, so RSS and descriptors are the process's. With ``--fleet``, ``tests/soak/fleet_engine.py``: three
fleet members on a redis-server this script starts (two in this process, carrying the callers; one in a process of
its own, SIGKILLed and started again, and cut off from Redis), with Redis restarts, member kills and member
partitions added to the faults; the member process's RSS and descriptors are reported per incarnation. The exit
status is 1 when an invariant broke (the violations are printed), never because of a timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import _common
import trio

from tests.soak.engine import FAULTS, SoakReport, run_soak
from tests.soak.fleet_engine import FLEET_FAULTS, run_fleet_soak


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long faults are injected (default 20)")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--callers", type=int, default=8, help="concurrent callers of assign_task_to_device")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule and the load")
    parser.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the first fault")
    parser.add_argument(
        "--fault-warmup",
        type=float,
        default=180.0,
        help="seconds of faults before the RSS/fd baseline, and not before every kind has been injected once "
        "(default 180; 0: the baseline before the first fault). The first storms raise the allocators' high-water "
        "marks; a leak climbs after them (tests/soak/engine.py, run_schedule)",
    )
    parser.add_argument("--fleet", action="store_true", help="three members on Redis (tests/soak/fleet_engine.py)")
    parser.add_argument("--lease-ttl", type=float, default=3.0, help="--fleet: the members' lease TTL (default 3)")
    parser.add_argument(
        "--faults", nargs="+", metavar="KIND", help="draw only these kinds of fault (default: all of the mode's)"
    )
    parser.add_argument(
        "--trace-memory",
        nargs="?",
        type=int,
        const=8,
        metavar="FRAMES",
        help="add where memory went to the report: live object types that grew, malloc's in-use and free bytes, "
        "RSS before/after malloc_trim, and tracemalloc's top growth sites with FRAMES frames each (default 8; 0: "
        "no tracemalloc, which slows a big run several-fold). See tests/soak/memory.py",
    )
    _common.add_out_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common = {
        "seconds": 60 * args.minutes,
        "devices": args.devices,
        "callers": args.callers,
        "seed": args.seed,
        "fault_every": args.fault_every,
        "warmup": args.warmup,
        "fault_warmup": args.fault_warmup,
        "trace_memory": args.trace_memory,
    }
    if args.faults:
        known = FLEET_FAULTS if args.fleet else FAULTS
        unknown = sorted(set(args.faults) - set(known))
        if unknown:
            print(f"unknown faults {unknown}; this mode has {list(known)}", file=sys.stderr)
            return 2
        common["faults"] = tuple(args.faults)
    if args.fleet:
        report: SoakReport = trio.run(lambda: run_fleet_soak(**common, lease_ttl=args.lease_ttl))
    else:
        report = trio.run(lambda: run_soak(**common))
    figures = {"environment": _common.environment(), **report.figures()}
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        _common.write_json(args.out, figures)
    return 1 if report.violations() else 0


if __name__ == "__main__":
    sys.exit(main())
