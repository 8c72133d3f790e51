"""One fleet member in a process of its own, for the fleet soak's "a manager killed" fault (SIGKILL).

    python -m tests.soak.member_process CONFIG_JSON

``CONFIG_JSON``: ``{"redis": url, "devices": [{"device_id": id, "server_url": url}, ...], "member_id": id,
"namespace": ns, "lease_ttl": s, "task_name": name, "settings": {manager settings}}``. The process joins the fleet
and then writes to stdout, one line each: ``ready`` once joined, then ``claims <at> <json list>`` — the devices
its manager holds a registered link to (IDLE or BUSY), and the wall-clock time of the event that changed the set —
every time that set changes. The soak reads those lines to check that no device is driven by two members at once.
It ends the process with SIGKILL (no lease released, no link closed politely: what a crashed host does), or with
SIGTERM at the end of the run (a graceful leave).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any

import trio

from galaxy_trio import DeviceConfig, DeviceStatus
from galaxy_trio.fleet import open_fleet_member
from galaxy_trio.manager import ConstellationDeviceManager, EventKind, EventSubscription

REGISTERED = (DeviceStatus.IDLE, DeviceStatus.BUSY)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_member(config: dict[str, Any]) -> None:
    devices = [DeviceConfig(**device) for device in config["devices"]]
    async with ConstellationDeviceManager(task_name=config["task_name"], **config["settings"]) as manager:
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
                _say("ready")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_report_claims, manager, events)
                    async for _ in signals:
                        break  # leave the fleet gracefully (hand every device back)
                    nursery.cancel_scope.cancel()


async def _report_claims(manager: ConstellationDeviceManager, events: EventSubscription) -> None:
    """Write ``claims <at> <json>`` whenever the set of devices with a registered link changes (from the events; from
    the manager's states again if events were dropped)."""
    claims: set[str] = set()
    dropped = 0
    while True:
        event = await events.receive()
        if events.dropped != dropped:
            dropped = events.dropped
            now = {d for d, state in manager.get_all_device_states().items() if state.status in REGISTERED}
            at = time.time()
        elif event.kind is EventKind.STATUS and event.new_status is not None:
            now = claims | {event.device_id} if event.new_status in REGISTERED else claims - {event.device_id}
            at = event.at
        else:
            continue
        if now != claims:
            claims = now
            _say(f"claims {at!r} {json.dumps(sorted(claims))}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="member %(name)s %(levelname)s %(message)s")
    trio.run(run_member, json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()
