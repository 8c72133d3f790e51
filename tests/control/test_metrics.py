"""``/metrics`` parsed with prometheus_client's own parser and checked against the fleet's real state."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from galaxy_trio import DeviceStatus

from .rig import Rig, device, open_rig

IDS = ("m1", "m2", "m3", "m4")


async def _scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _status_counts(rig: Rig) -> dict[str, int]:
    counts = {status.value: 0 for status in DeviceStatus}
    for profile in rig.manager.get_all_devices().values():
        counts[profile.status.value] += 1
    return counts


async def test_device_gauges_match_the_fleet_and_follow_a_failure() -> None:
    async with open_rig(IDS, dormant=("idle-later",)) as rig, rig.client() as client:
        samples = await _scrape(client)
        for status, count in _status_counts(rig).items():
            assert samples[("galaxy_trio_devices", (("status", status),))] == count
        assert samples[("galaxy_trio_devices", (("status", "idle"),))] == 4
        assert samples[("galaxy_trio_connection_attempts_total", ())] == 4
        assert samples[("galaxy_trio_time_to_idle_seconds_count", ())] == 4
        for phase in ("connect", "register", "telemetry"):
            assert samples[("galaxy_trio_phase_duration_seconds_count", (("phase", phase),))] == 4
        assert samples[("galaxy_trio_task_queue_depth", ())] == 0
        assert 0 <= samples[("galaxy_trio_heartbeat_age_max_seconds", ())] < 30

        rig.kill_agent("m2")  # its link is dropped by the server; its one retry is refused: FAILED
        await rig.wait_status("m2", DeviceStatus.FAILED)
        samples = await _scrape(client)
        assert samples[("galaxy_trio_devices", (("status", "failed"),))] == 1
        assert samples[("galaxy_trio_devices", (("status", "idle"),))] == 3
        failures = {
            labels: v for (name, labels), v in samples.items() if name == "galaxy_trio_connection_failures_total"
        }
        assert sum(failures.values()) == 2  # the live link lost, then the attempt the server rejected
        assert samples[("galaxy_trio_phase_duration_seconds_count", (("phase", "active"),))] == 1
        profile = rig.manager.get_device_info("m2")
        assert profile is not None and profile.failure_reason


async def test_task_outcomes_and_latency() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        echo = json.dumps({"tool_name": "echo", "parameters": {"text": "x"}})
        for _ in range(3):
            assert (await client.post("/api/tasks", json={"device_id": "m1", "request": echo})).json()["status"] == (
                "completed"
            )
        assert (await client.post("/api/tasks", json={"device_id": "m1", "request": "nope"})).json()["status"] == (
            "failed"
        )
        samples = await _scrape(client)
        assert samples[("galaxy_trio_tasks_total", (("outcome", "completed"),))] == 3
        assert samples[("galaxy_trio_tasks_total", (("outcome", "task_failed"),))] == 1
        assert samples[("galaxy_trio_task_duration_seconds_count", ())] == 4
        assert samples[("galaxy_trio_task_duration_seconds_sum", ())] > 0


async def test_queue_depth_and_running_tasks_are_read_from_the_manager() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        hold = json.dumps({"tool_name": "hold", "parameters": {"gate": "g"}})
        for n in range(3):
            response = await client.post(
                "/api/tasks?wait=false", json={"device_id": "m3", "task_id": f"h{n}", "request": hold}
            )
            assert response.status_code == 202
        await rig.wait_status("m3", DeviceStatus.BUSY)
        samples = await _scrape(client)
        assert samples[("galaxy_trio_tasks_running", ())] == 1
        assert samples[("galaxy_trio_task_queue_depth", ())] == 2
        assert samples[("galaxy_trio_devices", (("status", "busy"),))] == 1
        server = rig.server
        assert server is not None and server.url
        # One session: the manager sends a device one task at a time (the other two wait in its queue).
        assert samples[("galaxy_trio_server_sessions_running", (("server", server.url),))] == 1
        assert samples[("galaxy_trio_server_clients", (("server", server.url), ("type", "device")))] == 4
        # The constellation side: this manager's four links (one per device it drives).
        assert samples[("galaxy_trio_server_clients", (("server", server.url), ("type", "constellation")))] == 4
        rig.gates["g"].set()
        for n in range(3):
            assert (await client.get(f"/api/tasks/h{n}?wait=true")).json()["status"] == "completed"
        samples = await _scrape(client)
        assert samples[("galaxy_trio_tasks_total", (("outcome", "completed"),))] == 3
        assert samples[("galaxy_trio_tasks_running", ())] == 0


async def test_a_burst_that_overflows_an_sse_client_is_counted_as_dropped() -> None:
    async with open_rig(IDS, sse_buffer=4) as rig, rig.client() as client:
        async with client.stream("GET", "/api/events") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("event: snapshot")
            # Ten devices added at once: ten CONNECTING events with no checkpoint between them.
            rig.manager.add_devices(device(f"burst{n}", rig.aip_url, max_retries=1) for n in range(10))
            seen = []
            async for line in lines:
                seen.append(line)
                if line.startswith("event: snapshot"):
                    break
            assert "event: dropped" in seen
            samples = await _scrape(client)
            assert samples[("galaxy_trio_control_events_dropped_total", (("consumer", "sse"),))] >= 6
            assert samples[("galaxy_trio_control_sse_clients", ())] == 1
