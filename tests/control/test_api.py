"""The control API over real HTTP (httpx) against a real manager driving local device agents."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import trio

from galaxy_trio import DeviceStatus

from .rig import CONTROL_TOKEN, open_rig

IDS = ("alpha", "beta", "gamma")


async def test_unauthenticated_and_wrong_token_requests_get_401_and_no_data() -> None:
    async with open_rig(IDS) as rig:
        for token in (None, "wrong-token", CONTROL_TOKEN + "x", ""):
            async with rig.client(token) as client:
                for method, path in (
                    ("GET", "/api/devices"),
                    ("GET", "/api/devices/alpha"),
                    ("POST", "/api/devices/alpha/disconnect"),
                    ("POST", "/api/tasks"),
                    ("GET", "/api/events"),
                    ("GET", "/metrics"),
                ):
                    response = await client.request(method, path)
                    assert response.status_code == 401, (token, path)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                    assert b"alpha" not in response.content and b"idle" not in response.content
        async with httpx.AsyncClient(base_url=rig.url, headers={"Authorization": f"Basic {CONTROL_TOKEN}"}) as c:
            assert (await c.get("/api/devices")).status_code == 401
        # Nothing was changed by the refused POST.
        profile = rig.manager.get_device_info("alpha")
        assert profile is not None and profile.status is DeviceStatus.IDLE


async def test_healthz_and_readyz_need_no_token_and_carry_no_data() -> None:
    async with open_rig(IDS) as rig, rig.client(None) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.text == "ok\n"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.text == "ready\n"


async def test_readyz_is_503_while_a_device_is_still_on_its_way_up() -> None:
    async with open_rig((), dormant=("late",)) as rig, rig.client(None) as client:
        assert (await client.get("/readyz")).status_code == 200  # a dormant device is settled
        rig.kill_agent("late")  # so the attempt keeps failing and backing off
        # A device that cannot register (its agent is gone) with retries left stays on its way up.
        rig.manager.add_device(_late_device(rig.aip_url))
        await rig.wait_status("late2", DeviceStatus.DISCONNECTED)
        assert (await client.get("/readyz")).status_code == 503
        await rig.manager.disconnect_device("late2")


def _late_device(url: str):  # type: ignore[no-untyped-def]
    from .rig import device

    return device("late2", url, max_retries=1000)


async def test_devices_list_profiles_and_live_state() -> None:
    async with open_rig(IDS, dormant=("sleeper",)) as rig, rig.client() as client:
        before = time.time()
        response = await client.get("/api/devices")
        assert response.status_code == 200
        rows = {row["device_id"]: row for row in response.json()}
        assert set(rows) == {*IDS, "sleeper"}
        for device_id in IDS:
            row = rows[device_id]
            profile = rig.manager.get_device_info(device_id)
            assert profile is not None
            assert row["status"] == "idle" == profile.status.value
            assert row["capabilities"] == profile.capabilities and "configured" in row["capabilities"]
            assert row["os"] == profile.os and row["os"]
            assert row["metadata"]["system_info"]["cpu_count"] > 0
            assert row["server_url"].endswith("?token=***")
            assert row["phase"] == "active" and row["attempt"] == 0
            assert row["queue_depth"] == 0 and row["current_task"] is None
            assert 0 <= row["heartbeat_age_s"] < 30 and row["last_heartbeat_at"] <= before + 1
            assert row["time_in_phase_s"] >= 0
        assert rows["sleeper"]["status"] == "disconnected" and rows["sleeper"]["phase"] is None
        one = await client.get("/api/devices/beta")
        assert one.status_code == 200 and one.json()["device_id"] == "beta"
        assert AIP_SECRET_NOT_IN(response.content) and AIP_SECRET_NOT_IN(one.content)


def AIP_SECRET_NOT_IN(body: bytes) -> bool:
    from .rig import AIP_TOKEN

    return AIP_TOKEN.encode() not in body and CONTROL_TOKEN.encode() not in body


async def test_unknown_device_is_404_with_the_librarys_reason() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        for method, path in (
            ("GET", "/api/devices/nope"),
            ("POST", "/api/devices/nope/connect"),
            ("POST", "/api/devices/nope/disconnect"),
        ):
            response = await client.request(method, path)
            assert response.status_code == 404
            assert response.json()["error"].startswith("unknown device 'nope'; registered devices: 'alpha'")
        task = await client.post("/api/tasks", json={"device_id": "nope", "request": "x"})
        assert task.status_code == 404 and "unknown device 'nope'" in task.json()["error"]


async def test_disconnect_then_connect_brings_a_device_back() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        down = await client.post("/api/devices/alpha/disconnect")
        assert down.status_code == 200 and down.json()["status"] == "disconnected"
        profile = rig.manager.get_device_info("alpha")
        assert profile is not None and profile.status is DeviceStatus.DISCONNECTED
        up = await client.post("/api/devices/alpha/connect")
        assert up.status_code == 200 and up.json()["status"] == "idle"


async def test_connect_brings_a_failed_device_back() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        rig.kill_agent("gamma")
        await rig.wait_status("gamma", DeviceStatus.FAILED)
        failed = (await client.get("/api/devices/gamma")).json()
        assert failed["status"] == "failed" and failed["failure_reason"]
        await rig.start_agent("gamma")
        back = await client.post("/api/devices/gamma/connect")
        assert back.status_code == 200 and back.json()["status"] == "idle" and back.json()["failure_reason"] is None


async def test_connect_without_waiting_answers_202_and_the_device_comes_up() -> None:
    async with open_rig((), dormant=("sleeper",)) as rig, rig.client() as client:
        response = await client.post("/api/devices/sleeper/connect?wait=false")
        assert response.status_code == 202
        await rig.wait_status("sleeper", DeviceStatus.IDLE)


ECHO = json.dumps({"tool_name": "echo", "parameters": {"text": "ping"}})


async def test_a_task_waited_for_returns_the_librarys_task_result() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        response = await client.post("/api/tasks", json={"device_id": "alpha", "task_id": "t-1", "request": ECHO})
        assert response.status_code == 200
        body = response.json()
        assert body["task_id"] == "t-1" and body["device_id"] == "alpha" and body["status"] == "completed"
        assert body["result"] == [{"request": ECHO, "result": "ping"}]
        assert body["timings"]["total_s"] >= body["timings"]["run_s"] >= 0
        again = await client.get("/api/tasks/t-1")
        assert again.status_code == 200 and again.json() == body
        failed = await client.post("/api/tasks", json={"device_id": "alpha", "request": "no_such_tool"})
        assert failed.status_code == 200 and failed.json()["error_type"] == "task_failed"
        assert failed.json()["task_id"].startswith("ctl-")


async def test_a_task_without_waiting_is_202_then_readable_by_id() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        slow = json.dumps({"tool_name": "hold", "parameters": {"gate": "bg"}})
        started = await client.post(
            "/api/tasks?wait=false", json={"device_id": "beta", "task_id": "bg", "request": slow}
        )
        assert started.status_code == 202
        assert started.json() == {"task_id": "bg", "device_id": "beta", "status": "pending"}
        pending = await client.get("/api/tasks/bg")
        assert pending.status_code == 202 and pending.json()["status"] == "pending"
        assert (await client.get("/api/devices/beta")).json()["current_task"] == "bg"
        rig.gates["bg"].set()
        await rig.wait_status("beta", DeviceStatus.IDLE)
        done = await client.get("/api/tasks/bg")
        assert done.status_code == 200 and done.json()["status"] == "completed"
        assert done.json()["result"][0]["result"] == "bg opened"
        assert (await client.get("/api/tasks/never")).status_code == 404


async def test_task_refusals_are_4xx_with_the_librarys_reason() -> None:
    async with open_rig(IDS, dormant=("sleeper",)) as rig, rig.client() as client:
        not_connected = await client.post("/api/tasks", json={"device_id": "sleeper", "request": ECHO})
        assert not_connected.status_code == 409
        assert "device 'sleeper' is disconnected and not connecting" in not_connected.json()["error"]
        for body in ({"device_id": "alpha"}, {"device_id": "alpha", "request": ECHO, "bogus": 1}, [1, 2]):
            bad = await client.post("/api/tasks", json=body)
            assert bad.status_code == 400 and bad.json()["error"].startswith("bad task request")
        bad_timeout = await client.post("/api/tasks", json={"device_id": "alpha", "request": ECHO, "timeout": -1})
        assert bad_timeout.status_code == 400 and "timeout" in bad_timeout.json()["error"]
        not_json = await client.post("/api/tasks", content=b"\xff\x00")
        assert not_json.status_code == 400
        huge = await client.post("/api/tasks", json={"device_id": "alpha", "request": "x" * (2 << 20)})
        assert huge.status_code == 413 and "larger than 1048576 bytes" in huge.json()["error"]


async def test_a_full_queue_is_429_with_the_librarys_reason() -> None:
    async with open_rig(IDS) as rig, rig.client() as client:
        size = rig.manager.settings.task_queue_size
        slow = json.dumps({"tool_name": "hold", "parameters": {"gate": "never"}})
        async with trio.open_nursery() as nursery:
            # One running, then `size` queued: the next is refused.
            for n in range(size + 1):
                response = await client.post(
                    "/api/tasks?wait=false", json={"device_id": "alpha", "task_id": f"q{n}", "request": slow}
                )
                assert response.status_code == 202
            full = await client.post("/api/tasks", json={"device_id": "alpha", "task_id": "over", "request": ECHO})
            assert full.status_code == 429
            assert full.json()["error"] == (
                f"device 'alpha' already has {size} queued tasks (task_queue_size={size}); task 'over' refused"
            )
            duplicate = await client.post(
                "/api/tasks?wait=false", json={"device_id": "alpha", "task_id": "q1", "request": ECHO}
            )
            assert duplicate.status_code == 409 and "already pending" in duplicate.json()["error"]
            nursery.cancel_scope.cancel()
        await rig.manager.disconnect_device("alpha")  # ends the queued tasks now


async def test_no_token_reaches_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_rig(IDS) as rig:
        async with rig.client() as client:
            await client.get("/api/devices")
            await client.post("/api/tasks", json={"device_id": "alpha", "request": ECHO})
            await client.post("/api/devices/nope/connect")
            async with client.stream("GET", "/api/events") as stream:
                await anext(stream.aiter_lines())
        async with rig.client("wrong-token-value") as client:
            await client.get("/metrics")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "control API and dashboard on http://127.0.0.1:" in text  # the server did log
    assert CONTROL_TOKEN not in text and "wrong-token-value" not in text
