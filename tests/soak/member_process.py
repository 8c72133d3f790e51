"""One fleet member in a process of its own, for the fleet soak's "a manager killed" fault (SIGKILL).

    python -m tests.soak.member_process CONFIG_JSON

``CONFIG_JSON``: ``{"redis": url, "devices": [{"device_id": id, "server_url": url}, ...], "member_id": id,
"namespace": ns, "lease_ttl": s, "task_name": name, "settings": {manager settings}, "callers": [number, ...],
"caller_seed": n}``. The process joins the fleet and then writes to stdout, one line each:

- ``ready`` once joined;
- ``claim <at> <device>`` when its manager gets a registered link to a device (IDLE or BUSY) and
  ``release <at> <device>`` when it no longer has one, with the wall-clock time of the event; ``claims <at> <json
  list>``, the whole set, after events were dropped. The soak reads those lines to check that no device is driven
  by two members at once;
- for each of its callers' calls (one caller per number in ``callers``, tasks one after another on random devices
  of the fleet, as the soak's own callers make them): ``call <token>`` as it begins, then one end — ``result
  <token> <kind>`` (``completed``, or ``failed/<error type>``), ``refused <token> <exception type>`` (a documented
  refusal: ``RegistryUnavailable``, ``DeviceNotConnected``) or ``raised <token> <text>`` (anything else: a
  violation). Two thirds of its calls go to devices another member owns, through Redis: one begun while this
  member is cut off from Redis is refused (``RegistryUnavailable``); one already waiting for its owner's reply
  waits for it, bounded by its deadline (the task may be running: failing it early would invite a retry).

(Until 2026-12-07 each claim change wrote the whole set with a blocking write: in a 500-device run's rebalancing
that was hundreds of KB, the pipe filled while the parent was busy, and this member's event loop froze for seconds
— heartbeats, renewals and all — which the soak then saw as two members driving a device for 2-8 s. Every line now
goes through one writer, never blocking the loop.) It ends the process with SIGKILL (no lease released, no link
closed politely: what a crashed host does), or with SIGTERM at the end of the run (a graceful leave, its callers
stopped first).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from typing import Any

import trio

from galaxy_trio import DeviceConfig, DeviceStatus
from galaxy_trio.fleet import FleetMember, open_fleet_member
from galaxy_trio.manager import ConstellationDeviceManager, EventKind, EventSubscription

from .engine import next_task, result_kind
from .fleet_engine import REFUSALS
from .lines import write_lines

REGISTERED = (DeviceStatus.IDLE, DeviceStatus.BUSY)


async def run_member(config: dict[str, Any]) -> None:
    devices = [DeviceConfig(**device) for device in config["devices"]]
    lines_in, lines = trio.open_memory_channel[bytes](1 << 14)
    async with (
        trio.lowlevel.FdStream(os.dup(sys.stdout.fileno())) as out,  # (non-blocking: see the module docstring)
        trio.open_nursery() as writing,
        ConstellationDeviceManager(task_name=config["task_name"], **config["settings"]) as manager,
    ):
        writing.start_soon(write_lines, out, lines)
        events = manager.subscribe(max(1024, 8 * len(devices)))
        with events, trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with (
                lines_in,
                open_fleet_member(
                    manager,
                    config["redis"],
                    devices,
                    member_id=config["member_id"],
                    lease_ttl=config["lease_ttl"],
                    namespace=config["namespace"],
                ) as member,
            ):
                await lines_in.send(b"ready\n")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_report_claims, manager, events, lines_in)
                    ids = [device.device_id for device in devices]
                    rng = random.Random(config.get("caller_seed", 0))
                    for number in config.get("callers", []):
                        nursery.start_soon(_call, member, number, ids, random.Random(rng.random()), lines_in)
                    async for _ in signals:
                        break  # leave the fleet gracefully (callers stopped, every device handed back)
                    nursery.cancel_scope.cancel()


async def _report_claims(
    manager: ConstellationDeviceManager, events: EventSubscription, lines: trio.MemorySendChannel[bytes]
) -> None:
    """A line whenever a device gains or loses its registered link (from the events), or the whole set again (from
    the manager's states) if events were dropped."""
    claims: set[str] = set()
    dropped = 0
    while True:
        event = await events.receive()
        if events.dropped != dropped:
            dropped = events.dropped
            claims = {d for d, state in manager.get_all_device_states().items() if state.status in REGISTERED}
            line = f"claims {time.time()!r} {json.dumps(sorted(claims))}"
        elif event.kind is EventKind.STATUS and event.new_status is not None:
            device_id = event.device_id
            if event.new_status in REGISTERED and device_id not in claims:
                claims.add(device_id)
                line = f"claim {event.at!r} {device_id}"
            elif event.new_status not in REGISTERED and device_id in claims:
                claims.discard(device_id)
                line = f"release {event.at!r} {device_id}"
            else:
                continue
        else:
            continue
        await lines.send(line.encode() + b"\n")


async def _call(
    member: FleetMember, number: int, ids: list[str], rng: random.Random, lines: trio.MemorySendChannel[bytes]
) -> None:
    """One caller: tasks one after another on random devices until cancelled, each call's start and end a line."""
    n = 0
    while True:
        n += 1
        token, device_id, request = next_task(number, n, ids, rng)
        await lines.send(f"call {token}\n".encode())
        try:
            result = await member.assign_task_to_device(token, device_id, request)
        except REFUSALS as exc:
            await lines.send(f"refused {token} {type(exc).__name__}\n".encode())
            await trio.sleep(0.1)
            continue
        except Exception as exc:
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            await lines.send(f"raised {token} {text}\n".encode())
            await trio.sleep(0.1)
            continue
        await lines.send(f"result {token} {result_kind(result)}\n".encode())
        await trio.sleep(rng.uniform(0.0, 0.05))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="member-c %(asctime)s %(levelname)s %(message)s")
    trio.run(run_member, json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
