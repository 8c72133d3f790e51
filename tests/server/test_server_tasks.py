"""TASK sessions end to end (PROTOCOL.md §8.6, §8.8): a constellation peer, a scripted device peer, the server."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio

from galaxy_trio.aip import (
    ClientType,
    Result,
    ResultStatus,
    ServerMessage,
    ServerMessageType,
    TaskStatus,
    builders,
)
from galaxy_trio.server import AIPServer, DeviceLoad, ServerSettings, serve_aip

from ._peers import (
    TOKEN,
    Peer,
    assert_like_recorded,
    assert_uuid,
    client_frame,
    frame,
    normalized,
    ok,
    open_peer,
    results_for,
    serve_device,
    server_frame,
    start_server,
)

DEVICE_DISCONNECTED = "Task was cancelled because target device disconnected"


def recorded_task(scenario: str, step: int, **changes: Any) -> str:
    """A recorded TASK frame with some fields changed (e.g. a request the default driver understands)."""
    message = json.loads(frame(scenario, step))
    message.update(changes)
    return json.dumps(message, separators=(",", ":"))


async def connect_pair(server: AIPServer, device: Peer, constellation: Peer, device_id: str = "dev") -> str:
    """Register ``device_id`` (linux) and a constellation scoped to it; returns the constellation's id."""
    await device.register(
        builders.device_register(device_id, platform="linux", system_info={"device_id": device_id, "cpu_count": 4})
    )
    await constellation.register(builders.constellation_register("job", device_id))
    return f"job@{device_id}"


def task(constellation_id: str, device_id: str, request: str, session_id: str = "job@t1") -> Any:
    return builders.task_request(
        constellation_id, device_id, session_id=session_id, task_name="galaxy/job/t1", request=request
    )


# --- the recorded round trip ---------------------------------------------------------------------------------------


async def test_recorded_round_trip_with_the_default_driver(server: AIPServer) -> None:
    request = '{"tool_name":"execute_command","parameters":{"command":"uname -s","api_key":"<redacted>"}}'
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(frame("device_registration", 1))  # capdev, linux, the real UFO device
        await constellation.register(frame("task_roundtrip", 1))  # rt@capdev
        await constellation.send_raw(recorded_task("task_roundtrip", 3, request=request))
        assert_like_recorded(await constellation.receive(), "task_roundtrip", 4)  # ack with session_id

        list_tools = await device.receive()
        assert normalized(list_tools) == normalized(server_frame("task_roundtrip", 5))
        recorded_tools = client_frame("task_roundtrip", 6)
        assert recorded_tools.action_results is not None
        await device.send(results_for(list_tools, "capdev", recorded_tools.action_results))

        tool_call = await device.receive()
        assert normalized(tool_call) == normalized(server_frame("task_roundtrip", 7))
        assert tool_call.response_id != list_tools.response_id
        recorded_result = client_frame("task_roundtrip", 8)
        assert recorded_result.action_results is not None
        await device.send(results_for(tool_call, "capdev", recorded_result.action_results))

        final = await device.receive()
        assert normalized(final) == normalized(server_frame("task_roundtrip", 9))  # actions: []
        await device.send(results_for(final, "capdev", []))

        to_constellation = await constellation.expect(ServerMessageType.TASK_END)
        to_device = await device.expect(ServerMessageType.TASK_END)
        expected_result = [{"request": request, "result": recorded_result.action_results[0].result}]
        assert to_constellation.result == expected_result
        recorded_end = normalized(server_frame("task_roundtrip", 11))
        recorded_end["result"] = expected_result
        assert normalized(to_constellation) == recorded_end
        assert to_device.response_id == to_constellation.response_id
        assert normalized(to_device, keep_response_id=True) == normalized(to_constellation, keep_response_id=True)

        assert server.running_sessions() == {}
        assert server.device_load("capdev") == DeviceLoad(active=0, peak=1, queued=0)


async def test_bare_tool_name_request_and_null_ids(server: AIPServer) -> None:
    """session_id and task_name null: the server makes uuid4s; a bare tool name runs without parameters."""
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send_raw(
            json.dumps(
                {
                    "type": "task",
                    "status": "continue",
                    "client_type": "constellation",
                    "client_id": cid,
                    "target_id": "dev",
                    "request": "get_system_info",
                }
            )
        )
        ack = await constellation.expect(ServerMessageType.HEARTBEAT, status=TaskStatus.OK)
        assert ack.session_id is not None
        assert_uuid(ack.session_id)
        calls: list[dict[str, Any] | None] = []

        def get_system_info(parameters: dict[str, Any] | None) -> Result:
            calls.append(parameters)
            return ok({"os": "linux"})

        frames = await serve_device(device, "dev", {"get_system_info": get_system_info})
        assert calls == [None]
        commands = [f for f in frames if f.type is ServerMessageType.COMMAND]
        assert all(c.session_id == ack.session_id for c in commands)
        assert commands[0].task_name is not None
        assert_uuid(commands[0].task_name)  # a uuid4 is already a sanitised name
        end = await constellation.expect(ServerMessageType.TASK_END, session_id=ack.session_id)
        assert (end.status, end.error) == (TaskStatus.COMPLETED, None)
        assert end.result == [{"request": "get_system_info", "result": {"os": "linux"}}]


# --- failures of the default driver ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "error"),
    [
        ("no_such_tool", "Unknown tool 'no_such_tool' on device 'dev'; available tools: get_system_info, take_note"),
        ('{"tool_name":"rm_rf"}', "Unknown tool 'rm_rf' on device 'dev'; available tools: get_system_info, take_note"),
        ("List the files in the current directory", "The default driver cannot interpret the request"),
        ('{"tool_name":"take_note","parameters":[1]}', "The request is not a valid tool call: Expected `object"),
        ('{"tool":"take_note"}', "The request is not a valid tool call:"),
    ],
)
async def test_default_driver_failures_end_the_task_failed(server: AIPServer, request_text: str, error: str) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", request_text))
        await constellation.expect_ack("job@t1")
        frames = await serve_device(device, "dev", {"get_system_info": ok, "take_note": ok})
        # list_tools, then UFO's final empty COMMAND, then TASK_END: the named tool never ran.
        assert [f.actions and f.actions[0].tool_name for f in frames[:-1]] == ["list_tools", []]
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED, result=[])
        assert end.error is not None and end.error.startswith(error)
        assert frames[-1].response_id == end.response_id and frames[-1].error == end.error


async def test_tool_failure_fails_the_task_with_the_tools_error(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", '{"tool_name":"run","parameters":{"cmd":"false"}}'))
        await constellation.expect_ack("job@t1")

        def run(parameters: dict[str, Any] | None) -> Result:
            assert parameters == {"cmd": "false"}
            return Result(status=ResultStatus.FAILURE, error="exit status 1")

        await serve_device(device, "dev", {"run": run})
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED)
        assert end.error == "Tool 'run' failed on device 'dev': exit status 1"


async def test_list_tools_failure_fails_the_task(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", "anything"))
        await constellation.expect_ack("job@t1")
        command = await device.expect(ServerMessageType.COMMAND)
        await device.send(results_for(command, "dev", [Result(status=ResultStatus.FAILURE, error="no MCP server")]))
        final = await device.expect(ServerMessageType.COMMAND, actions=[])
        await device.send(results_for(final, "dev", []))
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED)
        assert end.error == "list_tools failed on device 'dev': no MCP server"


async def test_wrong_number_of_results_fails_the_task(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", "anything"))
        await constellation.expect_ack("job@t1")
        command = await device.expect(ServerMessageType.COMMAND)
        answer = builders.command_results(
            "dev", session_id=command.session_id, prev_response_id=command.response_id, results=[]
        )
        await device.send(answer)
        final = await device.expect(ServerMessageType.COMMAND, actions=[])
        await device.send(results_for(final, "dev", []))
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED)
        assert end.error == "Device 'dev' answered a COMMAND of 1 action(s) with 0 result(s)"


# --- disconnects and deadlines (§8.8) ---------------------------------------------------------------------------------


async def test_device_disconnect_mid_task_fails_it_at_once(
    server: AIPServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_peer(server) as constellation:
        async with open_peer(server) as device:
            await device.register(frame("device_disconnect_midtask", 1))  # raw_dropper
            await constellation.register(frame("device_disconnect_midtask", 3))
            await constellation.send_raw(frame("device_disconnect_midtask", 5))
            assert_like_recorded(await constellation.receive(), "device_disconnect_midtask", 6)
            command = await device.receive()
            assert normalized(command) == normalized(server_frame("device_disconnect_midtask", 7))
            closed_at = trio.current_time()
        # The device closed (1000) without answering.
        end = await constellation.expect(ServerMessageType.TASK_END)
        assert_like_recorded(end, "device_disconnect_midtask", 8)
        assert end.error == DEVICE_DISCONNECTED and end.result == []
        assert trio.current_time() - closed_at < 1  # not at the command deadline (300 s)
        assert server.running_sessions() == {}
        # Then the scoped constellation, whose device is gone, is told and closed (UFO leaves it idle and open).
        await constellation.expect_error("Target device 'raw_dropper' disconnected")
        reason = await constellation.expect_closed()
        assert (reason.code, reason.reason) == (1000, "target device disconnected")
        assert server.online_clients() == {}


async def test_queued_sessions_fail_too_when_the_device_disconnects(server: AIPServer) -> None:
    async with open_peer(server) as constellation:
        async with open_peer(server) as device:
            cid = await connect_pair(server, device, constellation)
            for n in (1, 2, 3):
                await constellation.send(task(cid, "dev", "x", session_id=f"s{n}"))
                await constellation.expect_ack(f"s{n}")
            await device.expect(ServerMessageType.COMMAND, session_id="s1")
            assert server.device_load("dev") == DeviceLoad(active=1, peak=1, queued=2)
        ends = [await constellation.expect(ServerMessageType.TASK_END) for _ in range(3)]
        assert sorted(str(e.session_id) for e in ends) == ["s1", "s2", "s3"]
        assert all(e.status is TaskStatus.FAILED and e.error == DEVICE_DISCONNECTED for e in ends)
        assert server.running_sessions() == {}
        await constellation.expect_error("Target device 'dev' disconnected")
        assert (await constellation.expect_closed()).code == 1000


async def test_constellation_disconnect_cancels_the_session_and_tells_the_device(server: AIPServer) -> None:
    """UFO cancels silently and leaves the device uninformed (§11.13); the device gets TASK_END here."""
    async with open_peer(server) as device:
        async with open_peer(server) as constellation:
            cid = await connect_pair(server, device, constellation)
            await constellation.send(task(cid, "dev", "anything"))
            await constellation.expect_ack("job@t1")
            command = await device.expect(ServerMessageType.COMMAND, session_id="job@t1")
        end = await device.expect(ServerMessageType.TASK_END, session_id="job@t1", status=TaskStatus.FAILED)
        assert end.error == "Task was cancelled because the requesting client 'job@dev' disconnected"
        assert end.result == []
        assert server.running_sessions() == {}
        assert server.device_load("dev") == DeviceLoad(active=0, peak=1, queued=0)
        # A late answer for the cancelled session is dropped without a reply.
        await device.send(results_for(command, "dev", [ok([])]))
        await device.assert_quiet("dev", ClientType.DEVICE)
        assert server.online_clients() == {"dev": ClientType.DEVICE}


async def test_the_next_session_waits_for_the_command_a_cancelled_session_left_running(server: AIPServer) -> None:
    """Found by the chaos soak: a requester that went away cancelled its session while the device was still
    running its COMMAND, and the next session's COMMAND reached the device at once, so two tasks ran on it at
    the same time. The device's next session now starts only once that COMMAND is answered."""
    async with open_peer(server) as device, open_peer(server) as second:
        async with open_peer(server) as first:
            cid = await connect_pair(server, device, first)
            await first.send(task(cid, "dev", "anything"))
            await first.expect_ack("job@t1")
            running = await device.expect(ServerMessageType.COMMAND, session_id="job@t1")
        await device.expect(ServerMessageType.TASK_END, session_id="job@t1", status=TaskStatus.FAILED)
        await second.register(builders.constellation_register("other", "dev"))
        await second.send(task("other@dev", "dev", "get_system_info", session_id="other@t2"))
        await second.expect_ack("other@t2")
        await device.assert_quiet("dev", ClientType.DEVICE)  # no COMMAND for other@t2 while job@t1's one runs
        assert server.device_load("dev") == DeviceLoad(active=0, peak=1, queued=1)
        await device.send(results_for(running, "dev", [ok([])]))  # the cancelled COMMAND ends on the device
        await serve_device(device, "dev", {"get_system_info": lambda _: ok({"os": "linux"})})
        end = await second.expect(ServerMessageType.TASK_END, session_id="other@t2")
        assert end.status is TaskStatus.COMPLETED, end


async def test_a_device_that_goes_away_mid_command_lets_its_queue_go_on(server: AIPServer) -> None:
    """The wait for an abandoned COMMAND ends when its device disconnects: the queued sessions fail at once."""
    async with open_peer(server) as second:
        async with open_peer(server) as device:
            async with open_peer(server) as first:
                cid = await connect_pair(server, device, first)
                await first.send(task(cid, "dev", "anything"))
                await first.expect_ack("job@t1")
                await device.expect(ServerMessageType.COMMAND, session_id="job@t1")
            await device.expect(ServerMessageType.TASK_END, session_id="job@t1")
            await second.register(builders.constellation_register("other", "dev"))
            await second.send(task("other@dev", "dev", "get_system_info", session_id="other@t2"))
            await second.expect_ack("other@t2")
        end = await second.expect(ServerMessageType.TASK_END, session_id="other@t2", status=TaskStatus.FAILED)
        assert end.error == DEVICE_DISCONNECTED
        assert server.running_sessions() == {}


async def test_device_that_never_answers_fails_the_task_at_the_command_deadline(
    server: AIPServer, autojump_clock: trio.testing.MockClock
) -> None:
    """UFO's server waits 6000 s per COMMAND (§11.4); ours fails the task at its per-command deadline."""
    deadline = server.settings.command_deadline
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", "anything"))
        await constellation.expect_ack("job@t1")
        command = await device.expect(ServerMessageType.COMMAND)
        sent_at = trio.current_time()
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED, result=[])
        assert trio.current_time() - sent_at == pytest.approx(deadline, abs=0.01)
        assert end.error == f"Device 'dev' did not answer the COMMAND (list_tools) within {deadline:g} s"
        # No final COMMAND to a device that stopped answering: its next frame is the TASK_END.
        to_device = await device.expect(ServerMessageType.TASK_END, response_id=end.response_id)
        assert to_device.error == end.error
        await device.send(results_for(command, "dev", [ok([])]))  # too late: dropped
        await device.assert_quiet("dev", ClientType.DEVICE)
        assert server.online_clients() == {"dev": ClientType.DEVICE, cid: ClientType.CONSTELLATION}


async def test_command_deadline_is_per_command(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = await start_server(nursery, settings=ServerSettings(command_deadline=30))
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", "slow"))
        await constellation.expect_ack("job@t1")
        command = await device.expect(ServerMessageType.COMMAND)
        await trio.sleep(29)  # each answer comes just in time
        await device.send(results_for(command, "dev", [ok([{"tool_name": "slow"}])]))
        command = await device.expect(ServerMessageType.COMMAND)
        await trio.sleep(29)
        await device.send(results_for(command, "dev", [ok("done")]))
        command = await device.expect(ServerMessageType.COMMAND, actions=[])
        await device.send(results_for(command, "dev", []))
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.COMPLETED)
        assert end.result == [{"request": "slow", "result": "done"}]


async def test_server_shutdown_tells_the_requester(nursery: trio.Nursery) -> None:
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[AIPServer]) -> None:
        with server_scope:
            await serve_aip(port=0, token=TOKEN, task_status=task_status)

    server: AIPServer = await nursery.start(run_server)
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", "anything"))
        await constellation.expect_ack("job@t1")
        await device.expect(ServerMessageType.COMMAND)
        server_scope.cancel()
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.FAILED)
        assert end.error == "Task was cancelled because the server is shutting down"
        assert (await constellation.expect_closed()).code == 1000
        # The device may be told of the cancelled session first: whichever of the session's delivery and the
        # device connection's own shutdown the scheduler runs first.
        told, closed = await device.expect_closed_maybe_after(ServerMessageType.TASK_END)
        assert told is None or told.error == end.error, told
        assert closed.code == 1000


async def test_scoped_constellations_are_closed_when_their_device_leaves(server: AIPServer) -> None:
    async with open_peer(server) as scoped, open_peer(server) as unscoped, open_peer(server) as other_scoped:
        async with open_peer(server) as device, open_peer(server) as other_device:
            await device.register(frame("device_registration", 1))  # capdev
            await other_device.register(frame("device_registration", 3))  # raw_dev_1
            await scoped.register(frame("task_roundtrip", 1))  # rt@capdev
            await other_scoped.register(builders.constellation_register("rt", "raw_dev_1"))
            await unscoped.register(frame("errors", 19))
            await device.send(builders.heartbeat("capdev", ClientType.DEVICE))
            await device.expect_ack()
            await other_device.assert_quiet("raw_dev_1", ClientType.DEVICE)
            await device.ws.aclose()
            await scoped.expect_error("Target device 'capdev' disconnected")
            assert (await scoped.expect_closed()).code == 1000
            # Constellations of other devices, and unscoped ones, are not affected.
            assert server.online_clients() == {
                "raw_dev_1": ClientType.DEVICE,
                "rt@raw_dev_1": ClientType.CONSTELLATION,
                "err_notarget": ClientType.CONSTELLATION,
            }
            await unscoped.assert_quiet("err_notarget", ClientType.CONSTELLATION)
            await other_scoped.assert_quiet("rt@raw_dev_1", ClientType.CONSTELLATION)
            # The device comes back: a constellation can register for it again.
            async with open_peer(server) as device_again, open_peer(server) as scoped_again:
                await device_again.register(frame("device_registration", 1))
                await scoped_again.register(frame("task_roundtrip", 1))


async def test_a_closed_constellation_does_not_outlive_its_registration(server: AIPServer) -> None:
    """A constellation that left on its own is forgotten by its device: the device leaving later closes no one."""
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 1))
        async with open_peer(server) as scoped:
            await scoped.register(frame("task_roundtrip", 1))
        async with open_peer(server) as scoped_again:
            await scoped_again.register(frame("task_roundtrip", 1))
            await device.ws.aclose()
            await scoped_again.expect_error("Target device 'capdev' disconnected")
            assert (await scoped_again.expect_closed()).code == 1000
    assert server.online_clients() == {}


# --- one device, several tasks ------------------------------------------------------------------------------------


async def test_sessions_on_one_device_never_overlap_and_run_fifo(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as first, open_peer(server) as second:
        await device.register(builders.device_register("dev", platform="linux", system_info=None))
        await first.register(builders.constellation_register("a", "dev"))
        await second.register(builders.constellation_register("b", "dev"))
        await first.send(task("a@dev", "dev", "echo", session_id="A"))
        await first.expect_ack("A")
        a_list_tools = await device.expect(ServerMessageType.COMMAND, session_id="A")  # left unanswered for now
        await second.send(task("b@dev", "dev", "echo", session_id="B"))
        await second.expect_ack("B")
        assert server.device_load("dev") == DeviceLoad(active=1, peak=1, queued=1)
        # B waits: only finishing A on the device lets B's first COMMAND out.
        log: list[ServerMessage] = []
        await device.send(results_for(a_list_tools, "dev", [ok([{"tool_name": "echo", "tool_type": "action"}])]))
        await serve_device(device, "dev", {"echo": lambda parameters: ok("echoed")}, task_ends=2, log=log)
        sessions = [(f.type.value, f.session_id) for f in log]
        a_end = sessions.index(("task_end", "A"))
        assert all(s == "A" for _, s in sessions[: a_end + 1])
        assert all(s == "B" for _, s in sessions[a_end + 1 :])
        assert sessions[a_end + 1] == ("command", "B")
        end_a = await first.expect(ServerMessageType.TASK_END, session_id="A", status=TaskStatus.COMPLETED)
        end_b = await second.expect(ServerMessageType.TASK_END, session_id="B", status=TaskStatus.COMPLETED)
        assert end_a.response_id != end_b.response_id
        assert server.device_load("dev") == DeviceLoad(active=0, peak=1, queued=0)


# --- who may send a TASK, and for which device ---------------------------------------------------------------------


async def test_recorded_task_refusals(server: AIPServer) -> None:
    async with open_peer(server) as constellation:
        await constellation.register(frame("errors", 19))  # unscoped err_notarget
        await constellation.send_raw(frame("errors", 21))  # no target_id
        assert_like_recorded(await constellation.expect(ServerMessageType.ERROR), "errors", 22)
        await constellation.send_raw(frame("errors", 23))  # ghost
        assert_like_recorded(await constellation.expect(ServerMessageType.ERROR), "errors", 24)
        await constellation.assert_quiet("err_notarget", ClientType.CONSTELLATION)  # the connection stays open
        assert server.running_sessions() == {}


async def test_scoped_constellation_may_only_task_its_own_device(server: AIPServer) -> None:
    """UFO scopes DEVICE_INFO but not TASK (§11.14); here a scoped constellation cannot reach another device."""
    async with open_peer(server) as d1, open_peer(server) as d2, open_peer(server) as scoped:
        await d1.register(builders.device_register("d1", platform="linux", system_info=None))
        await d2.register(builders.device_register("d2", platform="linux", system_info=None))
        await scoped.register(builders.constellation_register("job", "d1"))
        await scoped.send(task("job@d1", "d2", "x"))
        await scoped.expect_error(
            "Constellation 'job@d1' is registered for device 'd1' and may not send tasks to device 'd2'"
        )
        await d2.assert_quiet("d2", ClientType.DEVICE)  # d2 got no COMMAND
        assert server.running_sessions() == {}


async def test_unscoped_constellation_may_task_any_device_but_not_a_constellation(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as unscoped, open_peer(server) as other:
        await device.register(builders.device_register("d2", platform="windows", system_info=None))
        await unscoped.register(frame("errors", 19))
        await other.register(builders.constellation_register("job", "d2"))
        await unscoped.send(task("err_notarget", "job@d2", "x"))
        await unscoped.expect_error("Constellation tasks may only target device clients")
        await unscoped.send(task("err_notarget", "d2", "x", session_id="u1"))
        await unscoped.expect_ack("u1")
        command = await device.expect(ServerMessageType.COMMAND, session_id="u1")
        assert command.agent_name == "WindowsAgent"
        assert server.running_sessions() == {"u1": "d2"}


async def test_session_ids_are_owned_by_one_client(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as first, open_peer(server) as second:
        await device.register(builders.device_register("dev", platform="linux", system_info=None))
        await first.register(builders.constellation_register("a", "dev"))
        await second.register(builders.constellation_register("b", "dev"))
        await first.send(task("a@dev", "dev", "x", session_id="s1"))
        await first.expect_ack("s1")
        await second.send(task("b@dev", "dev", "x", session_id="s1"))
        await second.expect_error("session_id 's1' is owned by another client")
        await first.send(task("a@dev", "dev", "x", session_id="s1"))
        await first.expect_error("session_id 's1' already has a task running; wait for its TASK_END")
        assert server.running_sessions() == {"s1": "dev"}
        assert server.device_load("dev") == DeviceLoad(active=1, peak=1, queued=0)


async def test_task_without_request_is_refused(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await constellation.send(task(cid, "dev", ""))
        await constellation.expect_error("Task requests require a non-empty request (the task text)")


async def test_tasks_per_device_are_limited(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, settings=ServerSettings(max_tasks_per_device=2))
    async with open_peer(server) as device, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        for n in (1, 2):
            await constellation.send(task(cid, "dev", "x", session_id=f"s{n}"))
            await constellation.expect_ack(f"s{n}")
        await constellation.send(task(cid, "dev", "x", session_id="s3"))
        await constellation.expect_error(
            "Device 'dev' already has 2 tasks running or queued (the limit is 2); try again later"
        )
        assert server.device_load("dev") == DeviceLoad(active=1, peak=1, queued=1)


async def test_device_task_for_itself(server: AIPServer) -> None:
    """A device may send a TASK for itself (§8.7 step 2); its TASK_END comes once, on its own link."""
    async with open_peer(server) as device:
        await device.register(frame("device_registration", 3))  # raw_dev_1, linux
        await device.send_raw(
            '{"type":"task","status":"continue","client_type":"device","task_name":"my task",'
            '"client_id":"raw_dev_1","request":"hostname","metadata":{"platform":"linux"}}'
        )
        ack = await device.expect(ServerMessageType.HEARTBEAT, status=TaskStatus.OK)
        assert ack.session_id is not None
        assert_uuid(ack.session_id)
        frames = await serve_device(device, "raw_dev_1", {"hostname": lambda parameters: ok("vm")})
        commands = frames[:-1]
        assert [c.task_name for c in commands] == ["my_task"] * 3  # sanitised
        assert all(c.agent_name == "LinuxAgent" and c.session_id == ack.session_id for c in commands)
        end = frames[-1]
        assert (end.type, end.status, end.session_id) == (
            ServerMessageType.TASK_END,
            TaskStatus.COMPLETED,
            ack.session_id,
        )
        assert end.result == [{"request": "hostname", "result": "vm"}]
        await device.assert_quiet("raw_dev_1", ClientType.DEVICE)  # exactly one TASK_END


async def test_results_from_another_device_never_reach_a_session(server: AIPServer) -> None:
    async with open_peer(server) as device, open_peer(server) as intruder, open_peer(server) as constellation:
        cid = await connect_pair(server, device, constellation)
        await intruder.register(builders.device_register("intruder", platform="linux", system_info=None))
        await constellation.send(task(cid, "dev", "echo"))
        await constellation.expect_ack("job@t1")
        command = await device.expect(ServerMessageType.COMMAND)
        await intruder.send(results_for(command, "intruder", [ok([{"tool_name": "rm"}])]))
        await intruder.assert_quiet("intruder", ClientType.DEVICE)  # dropped, no reply
        # The session still waits for its own device, and a wrong session_id from it is dropped as well.
        wrong_session = msgspec.structs.replace(
            results_for(command, "dev", [ok([{"tool_name": "rm"}])]), session_id="other"
        )
        await device.send(wrong_session)
        await device.assert_quiet("dev", ClientType.DEVICE)
        await device.send(results_for(command, "dev", [ok([{"tool_name": "echo"}])]))
        frames = await serve_device(device, "dev", {"echo": lambda parameters: ok("hi")})
        assert frames[0].actions is not None and frames[0].actions[0].tool_name == "echo"
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.COMPLETED)
        assert end.result == [{"request": "echo", "result": "hi"}]
