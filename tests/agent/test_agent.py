"""DeviceAgent against scripted fake servers: registration, COMMANDs, heartbeats, liveness, reconnects, shutdown.

Time-dependent behaviour runs on trio's MockClock (``autojump_clock``), so intervals, timeouts and backoff
delays are asserted exactly in virtual time. Backoff jitter is made reproducible with a seeded ``rng``: the test
draws the same sequence from its own ``Backoff`` and checks both the exact delays and the jitter bounds.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from galaxy_trio.agent import (
    AgentState,
    AuthenticationRejected,
    DeviceAgent,
    DeviceInfoProvider,
    RetriesExhausted,
    ServerUnusable,
    SystemProbes,
    ToolExecutor,
    ToolRegistry,
    add_builtin_tools,
    serve_device_agent,
)
from galaxy_trio.aip import (
    ClientMessage,
    ClientMessageType,
    ClientType,
    Command,
    Result,
    ResultStatus,
    ServerMessage,
    ServerMessageType,
    TaskStatus,
    ToolType,
    builders,
    decode_client_message,
    decode_server_message,
    encode_text,
)
from galaxy_trio.backoff import Backoff
from galaxy_trio.transport import CLOSE_GRACE

from ..frames import raw as recorded_raw
from .fakes import FakeConnection, FakeServer

TOKEN = "s3cret-token"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
DUPLICATE = "client_id 'dev-1' is already registered; duplicate registrations are not allowed"


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every agent test also checks that the server token never reached a log line."""
    caplog.set_level(logging.DEBUG, logger="galaxy_trio")
    yield
    assert TOKEN not in caplog.text


@pytest.fixture
async def server(nursery: trio.Nursery) -> FakeServer:
    fake = FakeServer()
    await fake.start(nursery)
    return fake


def make_agent(server: FakeServer, seed: int = 1, **options: Any) -> DeviceAgent:
    options.setdefault("heartbeat_interval", 30.0)
    options.setdefault("heartbeat_timeout", 10.0)
    return DeviceAgent(server.url, "dev-1", rng=random.Random(seed), **options)


def expected_delays(seed: int, failures: list[int], initial: float = 1.0, cap: float = 30.0) -> list[float]:
    """The delays an agent with ``rng=Random(seed)`` draws after these consecutive-failure counts."""
    reference = Backoff(initial, cap, rng=random.Random(seed))
    return [reference.delay(n) for n in failures]


def command(*actions: Command, status: TaskStatus = TaskStatus.CONTINUE) -> ServerMessage:
    message = builders.command(
        session_id="rt@task_001", task_name="galaxy_rt_task_001", actions=actions, agent_name="LinuxAgent"
    )
    return msgspec.structs.replace(message, status=status) if status is not message.status else message


def action(tool_name: str, parameters: dict[str, Any] | None = None, call_id: str | None = None) -> Command:
    return Command(
        tool_name=tool_name, parameters=parameters, tool_type=ToolType.ACTION, call_id=call_id or f"call-{tool_name}"
    )


async def confirm(conn: FakeConnection, agent: DeviceAgent) -> ClientMessage:
    """Confirm the REGISTER on ``conn`` and wait until the agent has seen the confirmation."""
    register = await conn.register()
    await agent.wait_until(lambda a: a.registered)
    return register


async def connect(server: FakeServer, agent: DeviceAgent, nursery: trio.Nursery) -> tuple[FakeConnection, float]:
    """Start ``agent``, take its connection and confirm its registration; returns the connection and the time."""
    nursery.start_soon(agent.run)
    conn = await server.accept()
    await confirm(conn, agent)
    return conn, trio.current_time()


# --- registration ----------------------------------------------------------------------------------------------


async def test_register_frame_shape(server: FakeServer, nursery: trio.Nursery) -> None:
    agent = make_agent(server, custom_metadata={"room": "lab"})
    nursery.start_soon(agent.run)
    conn = await server.accept()

    register = await conn.receive_type(ClientMessageType.REGISTER)

    assert register.status is TaskStatus.OK
    assert register.client_type is ClientType.DEVICE
    assert register.client_id == "dev-1"
    assert register.session_id is None and register.target_id is None and register.request_id is None
    assert register.timestamp is not None and register.timestamp.endswith("+00:00")
    assert register.metadata is not None
    assert list(register.metadata) == ["system_info", "registration_time", "platform"]
    system_info = register.metadata["system_info"]
    assert list(system_info)[:2] == ["device_id", "platform"] and len(system_info) == 11
    assert system_info["device_id"] == "dev-1"
    assert system_info["custom_metadata"] == {"room": "lab"}
    assert register.metadata["platform"] == system_info["platform"] == agent.system_info()["platform"]


async def test_platform_override_reaches_system_info_and_metadata(server: FakeServer, nursery: trio.Nursery) -> None:
    nursery.start_soon(make_agent(server, platform="Windows").run)
    conn = await server.accept()

    register = await conn.receive_type(ClientMessageType.REGISTER)

    assert register.metadata is not None
    assert register.metadata["platform"] == "windows"
    assert register.metadata["system_info"]["supported_features"][-1] == "windows_apps"


async def test_started_only_after_the_registration_is_confirmed(server: FakeServer, nursery: trio.Nursery) -> None:
    agent = make_agent(server)
    returned: list[DeviceAgent] = []

    async def start_agent() -> None:
        returned.append(await nursery.start(agent.run))

    nursery.start_soon(start_agent)
    conn = await server.accept()
    await conn.receive_type(ClientMessageType.REGISTER)
    await trio.testing.wait_all_tasks_blocked()

    assert returned == [] and agent.connected and not agent.registered and agent.registrations == 0

    await conn.send(builders.registration_confirmation())
    await agent.wait_until(lambda a: a.registered)
    await trio.testing.wait_all_tasks_blocked()

    assert returned == [agent]
    assert agent.registrations == 1


async def test_serve_device_agent_returns_the_registered_agent(server: FakeServer, nursery: trio.Nursery) -> None:
    async def accept_one() -> None:
        conn = await server.accept()
        await conn.register()

    nursery.start_soon(accept_one)

    agent = await nursery.start(serve_device_agent, server.url, "dev-1")

    assert isinstance(agent, DeviceAgent) and agent.registered and agent.device_id == "dev-1"
    assert agent.state is AgentState.REGISTERED


async def test_handshake_403_stops_at_once_with_a_clear_error(nursery: trio.Nursery) -> None:
    server = FakeServer(reject_status=403)
    await server.start(nursery)

    with pytest.raises(AuthenticationRejected) as raised:
        await nursery.start(make_agent(server).run)

    message = str(raised.value)
    assert raised.value.status_code == 403
    assert "HTTP 403" in message and "token is wrong or missing" in message and "not retrying" in message
    assert "token=***" in message and TOKEN not in message
    assert server.handshakes == 1


async def test_handshake_404_stops_naming_the_path_not_retried_forever(nursery: trio.Nursery) -> None:
    server = FakeServer(reject_status=404)
    await server.start(nursery)

    with pytest.raises(ServerUnusable) as raised:
        await make_agent(server).run()

    message = str(raised.value)
    assert "HTTP 404" in message and "/ws" in message and "not retrying" in message and TOKEN not in message
    assert server.handshakes == 1


async def test_a_port_out_of_range_stops_at_once_naming_the_url() -> None:
    agent = DeviceAgent(f"ws://127.0.0.1:70000/ws?token={TOKEN}", "dev-1", reconnect_delay=0.01, backoff_cap=0.01)
    with trio.fail_after(5), pytest.raises(ServerUnusable) as raised:
        await agent.run()
    message = str(raised.value)
    assert "Port out of range" in message and "server URL" in message and TOKEN not in message
    assert agent.stats.connect_attempts == 1


async def test_handshake_401_is_permanent_too(nursery: trio.Nursery) -> None:
    server = FakeServer(reject_status=401)
    await server.start(nursery)

    with pytest.raises(AuthenticationRejected):
        await make_agent(server).run()

    assert server.handshakes == 1


async def test_other_handshake_statuses_are_retried(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server.reject_next = [503, 500]
    agent = make_agent(server)

    await connect(server, agent, nursery)

    assert server.handshakes == 3
    assert agent.registrations == 1 and agent.stats.connect_attempts == 3


async def test_rejected_registrations_are_retried_with_full_jitter_backoff(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(server, seed=3, reconnect_delay=1.0, backoff_cap=4.0)
    nursery.start_soon(agent.run)
    delays: list[float] = []
    rejected_at = 0.0
    for attempt in range(5):
        conn = await server.accept()
        if attempt:
            delays.append(conn.accepted_at - rejected_at)
        await conn.receive_type(ClientMessageType.REGISTER)
        await conn.send(builders.server_error(DUPLICATE))
        assert (await conn.drain_until_closed()).code == 1000  # the agent closes after the rejection
        rejected_at = trio.current_time()
        conn.done.set()

    assert delays == pytest.approx(expected_delays(3, [1, 2, 3, 4], cap=4.0), abs=1e-9)
    for failures, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(4.0, 2.0 ** (failures - 1))
    assert agent.stats.rejections == 5 and agent.registrations == 0
    assert f"registration rejected by the server: {DUPLICATE}" in caplog.text

    # A successful registration resets the count: the next failure backs off from the initial delay again.
    conn = await server.accept()
    await confirm(conn, agent)
    await conn.aclose()
    closed_at = trio.current_time()
    conn = await server.accept()

    assert conn.accepted_at - closed_at == pytest.approx(expected_delays(3, [1, 2, 3, 4, 5, 1], cap=4.0)[-1], abs=1e-9)
    assert conn.accepted_at - closed_at <= 1.0


async def test_max_retries_ends_run_with_retries_exhausted(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def reject_all() -> None:
        while True:
            conn = await server.accept()
            await conn.receive_type(ClientMessageType.REGISTER)
            await conn.send(builders.server_error(DUPLICATE))
            await conn.aclose()

    nursery.start_soon(reject_all)

    with pytest.raises(RetriesExhausted) as raised:
        await make_agent(server, max_retries=2).run()

    assert raised.value.failures == 3
    assert DUPLICATE in str(raised.value)
    assert server.handshakes == 3


async def test_an_unconfirmed_registration_times_out_and_is_retried(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, seed=5, registration_timeout=7.0)
    nursery.start_soon(agent.run)
    silent = await server.accept()
    await silent.receive_type(ClientMessageType.REGISTER)

    await silent.drain_until_closed()
    gave_up_at = trio.current_time()
    conn = await server.accept()
    await confirm(conn, agent)

    assert gave_up_at - silent.accepted_at == pytest.approx(7.0)
    assert conn.accepted_at - gave_up_at == pytest.approx(expected_delays(5, [1])[0], abs=1e-9)
    assert agent.registrations == 1


@pytest.mark.parametrize(
    ("reply", "close_code"),
    [
        (encode_text(builders.command(session_id="s", task_name="t", actions=[], agent_name="LinuxAgent")), 1008),
        ("hello", 1008),
        (b"\x00\x01binary", 1003),
    ],
)
async def test_a_first_reply_that_is_not_a_confirmation_is_a_protocol_violation(
    server: FakeServer,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    reply: str | bytes,
    close_code: int,
) -> None:
    agent = make_agent(server)
    nursery.start_soon(agent.run)
    conn = await server.accept()
    await conn.receive_type(ClientMessageType.REGISTER)

    await conn.send_raw(reply)

    assert (await conn.drain_until_closed()).code == close_code
    conn2 = await server.accept()
    await confirm(conn2, agent)
    assert agent.stats.invalid_frames == 1 and agent.registrations == 1


# --- COMMAND / COMMAND_RESULTS -----------------------------------------------------------------------------------


async def test_list_tools_command_is_answered_with_the_tool_list(server: FakeServer, nursery: trio.Nursery) -> None:
    agent = make_agent(server)
    conn, _ = await connect(server, agent, nursery)
    list_tools = ServerMessage(
        type=ServerMessageType.COMMAND,
        status=TaskStatus.CONTINUE,
        agent_name="LinuxAgent",
        process_name="",
        root_name="",
        actions=[action("list_tools", {"tool_type": "action"}, call_id="78685b1c-14e4-48f8-bb34-cc58f23fa13d")],
        session_id="rt@task_001",
        task_name="galaxy_rt_task_001",
        response_id="10c6caf9-c8e2-46c3-8a1e-abf8350b96d5",
    )

    await conn.send(list_tools)
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert reply.status is TaskStatus.CONTINUE
    assert reply.client_type is ClientType.DEVICE
    assert reply.client_id == "dev-1"
    assert reply.session_id == "rt@task_001"
    assert reply.prev_response_id == "10c6caf9-c8e2-46c3-8a1e-abf8350b96d5"
    assert reply.request_id is not None and UUID4.match(reply.request_id)
    assert (reply.task_name, reply.target_id, reply.request, reply.error, reply.metadata) == (None,) * 5
    assert reply.action_results is not None and len(reply.action_results) == 1
    (result,) = reply.action_results
    assert result.status is ResultStatus.SUCCESS and result.error is None
    assert result.call_id == "78685b1c-14e4-48f8-bb34-cc58f23fa13d"
    assert result.namespace == "galaxy_trio"
    assert result.result == agent.tools.list_tools("action")
    assert [info["tool_name"] for info in result.result] == ["get_system_info", "echo"]
    recorded = decode_client_message(recorded_raw("task_roundtrip", 6))
    assert recorded.action_results is not None
    assert list(result.result[0]) == list(recorded.action_results[0].result[0])


async def test_the_recorded_ufo_session_is_answered_step_by_step(nursery: trio.Nursery) -> None:
    server = FakeServer()
    await server.start(nursery)
    agent = DeviceAgent(server.url, "capdev", platform="linux")
    conn, _ = await connect(server, agent, nursery)
    answers: list[ClientMessage] = []

    # The three COMMANDs UFO's server sent the real device (list_tools, a tool call, the final empty step).
    for step in (5, 7, 9):
        await conn.send_raw(recorded_raw("task_roundtrip", step))
        answers.append(await conn.receive_type(ClientMessageType.COMMAND_RESULTS))
    await conn.send_raw(recorded_raw("task_roundtrip", 12))  # TASK_END: logged, not answered

    for step, answer in zip((5, 7, 9), answers, strict=True):
        sent = decode_server_message(recorded_raw("task_roundtrip", step))
        recorded_answer = decode_client_message(recorded_raw("task_roundtrip", step + 1))
        assert answer.prev_response_id == sent.response_id == recorded_answer.prev_response_id
        assert answer.session_id == recorded_answer.session_id == "rt@task_001"
        assert answer.client_id == recorded_answer.client_id == "capdev"
        assert answer.status is recorded_answer.status
        assert answer.action_results is not None and recorded_answer.action_results is not None
        assert [r.call_id for r in answer.action_results] == [r.call_id for r in recorded_answer.action_results]
    list_tools, tool_call, final = (answer.action_results or [] for answer in answers)
    assert list_tools[0].status is ResultStatus.SUCCESS
    assert [info["tool_key"] for info in list_tools[0].result] == ["action::get_system_info", "action::echo"]
    # This device has no shell tool, and says so instead of staying silent.
    assert tool_call[0].status is ResultStatus.FAILURE
    assert tool_call[0].error == "unknown tool 'execute_command'"
    assert final == []
    assert agent.stats.commands_answered == 3


async def test_each_action_gets_a_result_in_order_and_the_status_is_copied(
    server: FakeServer, nursery: trio.Nursery
) -> None:
    conn, _ = await connect(server, make_agent(server), nursery)
    message = command(action("echo", {"text": "one"}, "c1"), action("no_such_tool", {}, "c2"), status=TaskStatus.OK)

    await conn.send(message)
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert reply.status is TaskStatus.OK
    assert reply.prev_response_id == message.response_id
    assert reply.action_results is not None
    first, second = reply.action_results
    assert (first.status, first.result, first.call_id) == (ResultStatus.SUCCESS, "one", "c1")
    assert (second.status, second.error, second.call_id) == (ResultStatus.FAILURE, "unknown tool 'no_such_tool'", "c2")


@pytest.mark.parametrize("actions", [[], None])
async def test_a_command_without_actions_gets_empty_results(
    server: FakeServer, nursery: trio.Nursery, actions: list[Command] | None
) -> None:
    conn, _ = await connect(server, make_agent(server), nursery)
    message = msgspec.structs.replace(command(), actions=actions)

    await conn.send(message)
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert reply.action_results == []
    assert reply.prev_response_id == message.response_id
    assert '"action_results":[]' in conn.received[-1].text


async def test_a_failing_tool_still_gets_an_answer(server: FakeServer, nursery: trio.Nursery) -> None:
    tools = ToolRegistry()

    @tools.tool(tool_type=ToolType.ACTION)
    async def execute_command(command: str) -> dict[str, Any]:
        raise ConnectionRefusedError("tool server is down")

    conn, _ = await connect(server, make_agent(server, tools=tools), nursery)

    await conn.send(command(action("execute_command", {"command": "uname -s"}, "c1")))
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert reply.action_results is not None
    assert reply.action_results[0].error == "ConnectionRefusedError: tool server is down"
    assert reply.action_results[0].status is ResultStatus.FAILURE


async def test_results_that_cannot_be_encoded_are_still_answered(
    server: FakeServer, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection below the executor's own normalisation: the agent must still answer, never go silent.
    async def broken_run_all(self: ToolExecutor, commands: Sequence[Command]) -> list[Result]:
        return [
            Result(status=ResultStatus.SUCCESS, result=object(), call_id="c1"),
            Result(status=ResultStatus.FAILURE, error="tool failed", call_id="c2"),
        ]

    monkeypatch.setattr(ToolExecutor, "run_all", broken_run_all)
    conn, _ = await connect(server, make_agent(server), nursery)

    await conn.send(command(action("echo", {"text": "a"}, "c1"), action("echo", {"text": "b"}, "c2")))
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert reply.action_results is not None
    first, second = reply.action_results
    assert (first.status, first.call_id) == (ResultStatus.FAILURE, "c1")
    assert first.error is not None and first.error.startswith("result cannot be sent as JSON")
    assert (second.status, second.error, second.call_id) == (ResultStatus.FAILURE, "tool failed", "c2")


async def test_a_slow_command_blocks_no_heartbeat_and_the_next_command_waits_its_turn(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The reader stays free during a slow COMMAND (heartbeats go on), but COMMANDs run one at a time in arrival
    order, as UFO's device runs them: two sessions' actions never interleave on one device."""
    release = trio.Event()
    running: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    tools = ToolRegistry()
    add_builtin_tools(tools, dict)

    @tools.tool
    async def wait_for_release() -> str:
        running.append("slow")
        await release.wait()
        running.remove("slow")
        return "released"

    @tools.tool
    async def quick() -> str:
        overlaps.append(tuple(running))
        return "quick"

    agent = make_agent(server, tools=tools)
    conn, registered_at = await connect(server, agent, nursery)
    slow, fast = command(action("wait_for_release")), command(action("quick"))

    await conn.send(slow)
    await conn.send(fast)
    heartbeat = await conn.receive()  # nothing answered yet: the quick COMMAND waits for the slow one
    heartbeat_at = conn.received[-1].at
    await conn.send(builders.heartbeat_ack())
    release.set()
    first = await conn.receive()
    last = await conn.receive()

    assert heartbeat.type is ClientMessageType.HEARTBEAT
    assert heartbeat_at - registered_at == pytest.approx(30.0)
    assert first.type is ClientMessageType.COMMAND_RESULTS and first.prev_response_id == slow.response_id
    assert first.action_results is not None and first.action_results[0].result == "released"
    assert last.prev_response_id == fast.response_id
    assert overlaps == [()]  # the quick tool ran with nothing else running
    assert agent.stats.commands_answered == 2


async def test_commands_run_in_the_order_they_arrived(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    order: list[int] = []
    tools = ToolRegistry()
    add_builtin_tools(tools, dict)

    @tools.tool
    async def step(n: int) -> int:
        await trio.sleep(0.1 * (10 - n))  # the earlier ones are the slower ones
        order.append(n)
        return n

    conn, _ = await connect(server, make_agent(server, tools=tools, heartbeat_interval=1000), nursery)
    commands = [command(action("step", {"n": n})) for n in range(10)]
    for each in commands:
        await conn.send(each)
    replies = [await conn.receive_type(ClientMessageType.COMMAND_RESULTS) for _ in commands]
    assert order == list(range(10))
    assert [r.prev_response_id for r in replies] == [c.response_id for c in commands]


async def test_a_tool_past_the_agent_deadline_is_answered_as_timed_out(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    tools = ToolRegistry()

    @tools.tool
    async def hang() -> None:
        await trio.sleep_forever()

    conn, _ = await connect(server, make_agent(server, tools=tools, tool_deadline=4.0, heartbeat_interval=100), nursery)

    await conn.send(command(action("hang")))
    sent_at = trio.current_time()
    reply = await conn.receive_type(ClientMessageType.COMMAND_RESULTS)

    assert conn.received[-1].at - sent_at == pytest.approx(4.0)
    assert reply.action_results is not None
    assert reply.action_results[0].error == "tool 'hang' timed out after 4 s"


async def test_task_end_acks_and_errors_are_accepted_silently(
    server: FakeServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(server)
    conn, _ = await connect(server, agent, nursery)
    echo = command(action("echo", {"text": "still here"}))

    await conn.send(builders.heartbeat_ack())
    await conn.send(builders.heartbeat_ack(session_id="rt@task_001"))
    await conn.send(decode_server_message(recorded_raw("task_roundtrip", 12)))
    await conn.send(builders.server_error("client_id does not match the registered connection"))
    await conn.send(echo)
    reply = await conn.receive()

    # Nothing was sent in answer to the first four frames: the next frame is the echo's result.
    assert reply.type is ClientMessageType.COMMAND_RESULTS and reply.prev_response_id == echo.response_id
    assert agent.registrations == 1 and agent.connected
    assert "task session 'rt@task_001' ended completed" in caplog.text
    assert "client_id does not match the registered connection" in caplog.text


async def test_a_server_pushed_task_is_requested_as_the_devices_own_task(
    nursery: trio.Nursery,
) -> None:
    server = FakeServer()
    await server.start(nursery)
    agent = DeviceAgent(server.url, "capdev", platform="linux")
    conn, _ = await connect(server, agent, nursery)

    await conn.send_raw(recorded_raw("api_dispatch", 1))
    request = await conn.receive_type(ClientMessageType.TASK)

    recorded = decode_client_message(recorded_raw("api_dispatch", 2))
    assert request.request_id is not None and UUID4.match(request.request_id)
    same_ids = msgspec.structs.replace(request, timestamp=recorded.timestamp, request_id=recorded.request_id)
    assert encode_text(same_ids) == recorded_raw("api_dispatch", 2)
    assert agent.stats.tasks_requested == 1


# --- heartbeats and liveness -----------------------------------------------------------------------------------


async def test_heartbeats_are_sent_every_interval(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, heartbeat_interval=30.0, heartbeat_timeout=10.0)
    conn, registered_at = await connect(server, agent, nursery)

    for beat in range(1, 4):
        heartbeat = await conn.receive_type(ClientMessageType.HEARTBEAT)
        assert conn.received[-1].at - registered_at == pytest.approx(30.0 * beat)
        await conn.send(builders.heartbeat_ack())

    assert heartbeat.status is TaskStatus.OK
    assert heartbeat.client_type is ClientType.DEVICE
    assert heartbeat.client_id == "dev-1"
    assert heartbeat.metadata is None and heartbeat.session_id is None
    assert agent.stats.heartbeats_sent == 3 and agent.stats.dead_links == 0 and agent.registrations == 1


async def test_a_silent_server_is_detected_and_replaced_after_backoff(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, seed=7, heartbeat_interval=30.0, heartbeat_timeout=10.0, reconnect_delay=1.0)
    conn, registered_at = await connect(server, agent, nursery)

    await conn.receive_type(ClientMessageType.HEARTBEAT)  # and never answer it
    await conn.drain_until_closed()
    declared_dead_at = trio.current_time()
    conn2 = await server.accept()
    await confirm(conn2, agent)

    assert conn.received[-1].at - registered_at == pytest.approx(30.0)
    assert declared_dead_at - registered_at == pytest.approx(40.0)
    delay = conn2.accepted_at - declared_dead_at
    assert delay == pytest.approx(expected_delays(7, [1])[0], abs=1e-9)
    assert 0.0 <= delay <= 1.0
    assert agent.stats.dead_links == 1 and agent.registrations == 2


async def test_liveness_with_a_timeout_longer_than_the_interval(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, heartbeat_interval=5.0, heartbeat_timeout=12.0)
    conn, registered_at = await connect(server, agent, nursery)

    await conn.drain_until_closed()

    # Heartbeats at 5, 10 and 15 s went unanswered; the first of them expired at 5 + 12 s.
    assert [r.at - registered_at for r in conn.received[1:]] == pytest.approx([5.0, 10.0, 15.0])
    assert trio.current_time() - registered_at == pytest.approx(17.0)


async def test_any_frame_proves_liveness_not_only_acks(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, heartbeat_interval=30.0, heartbeat_timeout=10.0)
    conn, registered_at = await connect(server, agent, nursery)

    await conn.receive_type(ClientMessageType.HEARTBEAT)
    await conn.send(command())  # a COMMAND instead of an ack
    await conn.receive_type(ClientMessageType.COMMAND_RESULTS)
    await conn.receive_type(ClientMessageType.HEARTBEAT)

    assert conn.received[-1].at - registered_at == pytest.approx(60.0)
    assert agent.stats.dead_links == 0 and agent.registrations == 1


# --- broken links and bad frames -------------------------------------------------------------------------------


async def test_server_restart_leads_to_a_fresh_registration(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    lookups: list[int] = []

    def hostname() -> str:
        lookups.append(1)
        return f"host-{len(lookups)}"

    provider = DeviceInfoProvider(probes=dataclasses.replace(SystemProbes(), hostname=hostname))
    agent = make_agent(server, info_provider=provider)
    nursery.start_soon(agent.run)
    conn = await server.accept()
    first = await confirm(conn, agent)

    server.stop()
    await agent.wait_until(lambda a: not a.connected)
    await server.start(nursery)
    conn2 = await server.accept()
    second = await confirm(conn2, agent)

    assert first.metadata is not None and second.metadata is not None
    assert first.metadata["system_info"]["hostname"] == "host-1"
    assert second.metadata["system_info"]["hostname"] != "host-1"  # collected afresh for the new registration
    assert agent.registrations == 2 and agent.registered


@pytest.mark.parametrize(
    ("payload", "close_code", "logged"),
    [
        ("hello", 1008, "invalid ServerMessage at $"),
        ('{"type":"bogus","status":"ok"}', 1008, "$.type"),
        ('{"type":"command"}', 1008, "status"),
        ('{"type":"command","status":"continue","actions":[{"tool_name":"x"}]}', 1008, "$.actions[0]"),
        (b"\x00\x01binary", 1003, "binary frame of 8 bytes"),
    ],
)
async def test_an_invalid_frame_is_logged_and_the_link_replaced(
    server: FakeServer,
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    payload: str | bytes,
    close_code: int,
    logged: str,
) -> None:
    agent = make_agent(server)
    conn, _ = await connect(server, agent, nursery)

    await conn.send_raw(payload)

    assert (await conn.drain_until_closed()).code == close_code
    conn2 = await server.accept()
    await confirm(conn2, agent)
    assert agent.stats.invalid_frames == 1 and agent.registrations == 2
    assert logged in caplog.text


async def test_an_oversized_frame_is_refused_and_the_link_replaced(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(server, max_message_size=1024)
    conn, _ = await connect(server, agent, nursery)

    await conn.send(builders.server_error("x" * 2000))

    assert (await conn.drain_until_closed()).code == 1009
    conn2 = await server.accept()
    await confirm(conn2, agent)
    assert agent.stats.invalid_frames == 1 and agent.registrations == 2
    assert "larger than 1024 bytes" in caplog.text


async def test_a_server_close_is_followed_by_a_reconnect(
    server: FakeServer, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = make_agent(server, seed=11)
    conn, _ = await connect(server, agent, nursery)

    await conn.aclose(1001, "going away")
    closed_at = trio.current_time()
    conn2 = await server.accept()
    await confirm(conn2, agent)

    assert conn2.accepted_at - closed_at == pytest.approx(expected_delays(11, [1])[0], abs=1e-9)
    assert agent.registrations == 2


# --- shutdown --------------------------------------------------------------------------------------------------


async def test_cancelling_run_closes_the_link_promptly_even_with_a_stuck_tool(
    server: FakeServer, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()
    tools = ToolRegistry()

    @tools.tool
    def stuck_in_thread() -> None:
        trio.from_thread.run(release.wait)

    agent = make_agent(server, tools=tools)
    async with trio.open_nursery() as nursery:
        conn, _ = await connect(server, agent, nursery)
        await conn.send(command(action("stuck_in_thread")))
        await trio.testing.wait_all_tasks_blocked()
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    closed_by_then = trio.current_time()
    release.set()

    # The agent's tasks are all gone (the nursery exited) and it closed normally within the grace period.
    assert (await conn.drain_until_closed()).code == 1000
    assert closed_by_then - cancelled_at <= CLOSE_GRACE
    assert not agent.connected and not agent.registered
    assert [m.type for m in (r.message for r in conn.received)] == [ClientMessageType.REGISTER]


async def test_run_twice_at_once_is_refused(server: FakeServer, nursery: trio.Nursery) -> None:
    agent = make_agent(server)
    nursery.start_soon(agent.run)
    await server.accept()

    with pytest.raises(RuntimeError, match="already running"):
        await agent.run()


# --- construction ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval must be > 0"),
        ({"heartbeat_timeout": -1}, "heartbeat_timeout must be > 0"),
        ({"registration_timeout": 0}, "registration_timeout must be > 0"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"reconnect_delay": 5, "backoff_cap": 1}, "backoff needs"),
        ({"tool_deadline": 0}, "default_deadline must be > 0"),
        ({"custom_metadata": {"when": object()}}, "custom_metadata must be JSON-serialisable"),
        ({"platform": "linux", "info_provider": DeviceInfoProvider()}, "not both"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeviceAgent(f"ws://127.0.0.1:1/ws?token={TOKEN}", "dev-1", **options)


def test_bad_urls_and_ids_are_refused_without_showing_the_token() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://") as raised:
        DeviceAgent(f"http://127.0.0.1:1/ws?token={TOKEN}", "dev-1")
    assert TOKEN not in str(raised.value) and "token=***" in str(raised.value)

    with pytest.raises(ValueError, match="device_id"):
        DeviceAgent(f"ws://127.0.0.1:1/ws?token={TOKEN}", "")


def test_repr_hides_the_token() -> None:
    agent = DeviceAgent(f"ws://127.0.0.1:1/ws?token={TOKEN}", "dev-1")

    assert TOKEN not in repr(agent) and "dev-1" in repr(agent)


def test_a_registry_without_list_tools_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    DeviceAgent("ws://127.0.0.1:1/ws", "dev-1", tools=ToolRegistry())

    assert "has no 'list_tools'" in caplog.text
