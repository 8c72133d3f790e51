"""``GET /api/events``: the manager's events as Server-Sent Events, per-client bounded."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator

import httpx
import trio

from galaxy_trio import DeviceStatus

from .rig import CONTROL_TOKEN, device, open_rig

IDS = ("e1", "e2", "e3")


async def _messages(stream: httpx.Response) -> AsyncIterator[tuple[str, dict | list]]:  # type: ignore[type-arg]
    """(event name, decoded data) per SSE message; comments skipped."""
    name = "message"
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))
            name = "message"


async def test_the_stream_starts_with_a_snapshot_then_carries_status_changes_with_the_device_row() -> None:
    async with open_rig(IDS) as rig, rig.client() as client, client.stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        messages = _messages(stream)
        name, snapshot = await anext(messages)
        assert name == "snapshot"
        assert isinstance(snapshot, list)
        assert {row["device_id"]: row["status"] for row in snapshot} == dict.fromkeys(IDS, "idle")
        rig.kill_agent("e2")
        async for name, data in messages:
            assert isinstance(data, dict)
            if name == "status" and data["event"]["new_status"] == "failed":
                assert data["event"]["device_id"] == "e2" and data["event"]["reason"]
                assert data["device"]["status"] == "failed"
                assert data["device"]["failure_reason"] == data["event"]["reason"]
                break


async def _never_reading_client(url: str) -> trio.SocketStream:
    """A client that reads the stream's first bytes (so the server has it) and then never reads again."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    request = f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CONTROL_TOKEN}\r\n\r\n"
    await stream.send_all(request.encode())
    received = b""
    while b"event: snapshot" not in received:
        received += await stream.receive_some(256)
    return stream


async def test_clients_that_never_read_do_not_hold_the_manager_back() -> None:
    async with open_rig(IDS, sse_buffer=4) as rig, rig.client() as client:
        stalled = [await _never_reading_client(rig.url) for _ in range(20)]
        try:
            assert "galaxy_trio_control_sse_clients 20.0" in (await client.get("/metrics")).text
            # Thirty more devices come up and a task runs while twenty clients read nothing.
            for n in range(30):
                await rig.start_agent(f"more{n}")
            rig.manager.add_devices(device(f"more{n}", rig.aip_url, max_retries=1) for n in range(30))
            with trio.fail_after(30):
                profiles = await rig.manager.wait_until_settled()
            assert all(p.status is DeviceStatus.IDLE for p in profiles.values()), profiles
            echo = json.dumps({"tool_name": "echo", "parameters": {"text": "still here"}})
            task = await client.post("/api/tasks", json={"device_id": "more7", "request": echo})
            assert task.json()["status"] == "completed"
            metrics = (await client.get("/metrics")).text
            dropped = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith('galaxy_trio_control_events_dropped_total{consumer="sse"}')
            )
            assert dropped >= 20 * 30  # each stalled client missed at least the thirty CONNECTING events
        finally:
            for stream in stalled:
                await stream.aclose()
