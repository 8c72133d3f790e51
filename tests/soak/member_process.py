"""One fleet member in a process of its own, for the fleet soak's "a manager killed" fault (SIGKILL).

    python -m tests.soak.member_process CONFIG_JSON

``CONFIG_JSON``: ``{"redis": url, "devices": [{"device_id": id, "server_url": url}, ...], "member_id": id,
"namespace": ns, "lease_ttl": s, "task_name": name, "settings": {manager settings}}``. The process joins the fleet
and then writes to stdout, one line each: ``ready`` once joined, then ``claim <at> <device>`` when its manager gets
a registered link to a device (IDLE or BUSY) and ``release <at> <device>`` when it no longer has one, with the
wall-clock time of the event; ``claims <at> <json list>``, the whole set, after events were dropped. The soak reads
those lines to check that no device is driven by two members at once. (Until 2026-12-07 each change wrote the
whole set with a blocking write: in a 500-device run's rebalancing that was hundreds of KB, the pipe filled while the
parent was busy, and this member's event loop froze for seconds — heartbeats, renewals and all — which the soak
then saw as two members driving a device for 2-8 s.)
It ends the process with SIGKILL (no lease released, no link closed politely: what a crashed host does), or with
SIGTERM at the end of the run (a graceful leave).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import trio

from galaxy_trio import DeviceConfig, DeviceStatus
from galaxy_trio.fleet import open_fleet_member
from galaxy_trio.manager import ConstellationDeviceManager, EventKind, EventSubscription

REGISTERED = (DeviceStatus.IDLE, DeviceStatus.BUSY)


async def run_member(config: dict[str, Any]) -> None:
    devices = [DeviceConfig(**device) for device in config["devices"]]
    async with (
        trio.lowlevel.FdStream(os.dup(sys.stdout.fileno())) as out,  # (non-blocking: see _report_claims)
        ConstellationDeviceManager(task_name=config["task_name"], **config["settings"]) as manager,
    ):
        events = manager.subscribe(max(1024, 8 * len(devices)))
        with events, trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with open_fleet_member(
                manager,
                config["redis"],
                devices,
                member_id=config["member_id"],
                lease_ttl=config["lease_ttl"],
                namespace=config["namespace"],
            ):
                await out.send_all(b"ready\n")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_report_claims, manager, events, out)
                    async for _ in signals:
                        break  # leave the fleet gracefully (hand every device back)
                    nursery.cancel_scope.cancel()


async def _report_claims(
    manager: ConstellationDeviceManager, events: EventSubscription, out: trio.abc.SendStream
) -> None:
    """Write a line whenever a device gains or loses its registered link (from the events), or the whole set again
    (from the manager's states) if events were dropped. The write is awaited, never blocking: a parent slow to
    read must not freeze this member's event loop (its heartbeats, its lease renewals)."""
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
        await out.send_all(line.encode() + b"\n")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="member-c %(asctime)s %(levelname)s %(message)s")
    trio.run(run_member, json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
