"""UFO's advisory classes (PROTOCOL.md §11, issue 6), one or a few tests each, against our server, agent and manager.

Each test's docstring names the class it covers. Network on 127.0.0.1, port 0; MockClock wherever time matters.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import RejectConnection, RejectData, Request

from galaxy_trio import cli
from galaxy_trio.agent import AuthenticationRejected, DeviceAgent, RetriesExhausted
from galaxy_trio.aip import (
    ClientMessage,
    ClientMessageType,
    ClientType,
    Command,
    ServerMessageType,
    TaskStatus,
    ToolType,
    builders,
    encode_text,
    new_id,
)
from galaxy_trio.config import ConfigError, DeviceConfig, parse_config
from galaxy_trio.errors import ConnectFailed, HandshakeRejected, LinkError
from galaxy_trio.local import open_local_fleet
from galaxy_trio.manager import ConstellationDeviceManager, DeviceStatus
from galaxy_trio.redact import url_with_token
from galaxy_trio.server import AIPServer, serve_aip
from galaxy_trio.transport import DEFAULT_MAX_FRAME, open_link

from ..manager.peer import (
    DEVICE_INFO_RESPONSE,
    SYSTEM_INFO,
    TASK_ACK,
    TASK_END_COMPLETED,
    Conn,
    ScriptedPeer,
    patched,
)
from ..net import free_port as _free_port
from ..server._peers import TOKEN, ok, open_peer, results_for, serve_device, start_server
from ._rawws import RawWebSocket
from ._support import capture_logs, connections_of, live_connection, next_status

REPO = Path(__file__).resolve().parents[2]
SECRET = "Sup3r-s3cret-t0ken-7f3a9c"
WRONG_SECRET = "wr0ng-s3cret-t0ken-55b1e2"
CLIENT_ID_MISMATCH = "client_id does not match the registered connection"
CLIENT_TYPE_MISMATCH = "client_type does not match the registered connection"


def _device_register(device_id: str, hostname: str = "host") -> ClientMessage:
    info = {**SYSTEM_INFO, "device_id": device_id, "hostname": hostname}
    return builders.device_register(device_id, platform="linux", system_info=info)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses this process listens on at ``port`` (TCP)."""
    return {
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


# --- no token / wrong token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "status"),
    [
        pytest.param("/ws", 403, id="no-token"),
        pytest.param("/ws?token=", 403, id="empty-token"),
        pytest.param(f"/ws?token={WRONG_SECRET}", 403, id="wrong-token"),
        pytest.param(f"/ws?token={TOKEN}x", 403, id="token-plus-one"),
        pytest.param(f"/ws?token={TOKEN[:-1]}", 403, id="token-prefix"),
        pytest.param(f"/ws?token={TOKEN.upper()}", 403, id="token-other-case"),
        pytest.param(f"/docs?token={TOKEN}", 404, id="another-path"),
    ],
)
async def test_no_or_wrong_token_gets_403_and_the_server_hangs_up(
    server: AIPServer, autojump_clock: trio.testing.MockClock, target: str, status: int
) -> None:
    """Advisory class: unauthenticated access (no token / wrong token). The refusal is an HTTP 403 at the upgrade
    (404 off /ws): no 101, so no WebSocket is ever opened, no AIP frame is sent, nothing is registered — and the
    server closes the TCP connection at once, so peers without a token cannot hold server sockets open."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    raw = RawWebSocket(stream, wsproto.WSConnection(wsproto.ConnectionType.CLIENT))
    await raw.send(Request(host=f"127.0.0.1:{server.port}", target=target))
    rejection = await raw.next_event()
    assert isinstance(rejection, RejectConnection) and rejection.status_code == status
    body = await raw.next_event()
    assert isinstance(body, RejectData) and b"{" not in body.data  # a plain-text refusal, never an AIP frame
    with trio.fail_after(60):  # virtual seconds: only a server that keeps the socket gets there
        await raw.until_eof()
    await stream.aclose()
    assert server.online_clients() == {}


@pytest.fixture
async def server(nursery: trio.Nursery) -> AIPServer:
    return await start_server(nursery)


@pytest.mark.parametrize("url_token", [None, WRONG_SECRET])
async def test_manager_with_no_or_a_wrong_token_fails_at_once_and_never_retries(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, url_token: str | None
) -> None:
    """Advisory class: no token / wrong token. UFO Galaxy retried a 403 five times; ours fails the device at once
    with the reason, one handshake in all, and the token appears nowhere in the profile."""
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
    url = server.url if url_token is None else url_with_token(server.url, url_token)
    with capture_logs("galaxy_trio.server") as records:
        async with ConstellationDeviceManager(task_name="adv", reconnect_delay=1.0) as manager:
            assert not await manager.register_device("dev", url, max_retries=5)
            await trio.sleep(600.0)  # long after every backoff would have fired
            profile = manager.get_device_info("dev")
    assert profile is not None and profile.status is DeviceStatus.FAILED
    assert profile.failure_reason == "handshake rejected with HTTP 403: the token is wrong or missing"
    assert profile.connection_attempts == 1
    assert sum("HTTP 403" in r.getMessage() for r in records) == 1
    assert WRONG_SECRET not in repr(profile) and server.online_clients() == {}


async def test_agent_with_a_wrong_token_stops_at_once(nursery: trio.Nursery) -> None:
    """Advisory class: no token / wrong token, device side: the agent stops with AuthenticationRejected after a
    single handshake (UFO's device retried with 2^n backoff, then idled forever)."""
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
    agent = DeviceAgent(url_with_token(server.url, WRONG_SECRET), "dev")
    with pytest.raises(AuthenticationRejected) as stopped:
        await agent.run()
    assert stopped.value.status_code == 403 and agent.stats.connect_attempts == 1
    assert WRONG_SECRET not in str(stopped.value) and "token=***" in str(stopped.value)


# --- role spoofing ----------------------------------------------------------------------------------------------


async def test_device_frames_on_a_constellation_link_are_refused(server: AIPServer) -> None:
    """Advisory class: role spoofing — a device's frames on a constellation's link. The identity pinned at
    REGISTER decides: another id or the device role is refused, and forged COMMAND_RESULTS (even with the real
    COMMAND's response_id and call_ids) never reach the session. The forgery names a tool other than the one the
    request runs, so a session that took it would fail with 'Unknown tool'; the task ends with the real device's
    result."""
    async with open_peer(server) as device, open_peer(server) as constellation:
        await device.register(_device_register("dev"))
        await constellation.register(builders.constellation_register("job", "dev"))
        await constellation.send(builders.heartbeat("job@dev", ClientType.DEVICE))
        await constellation.expect_error(CLIENT_TYPE_MISMATCH)
        await constellation.send(builders.heartbeat("dev", ClientType.DEVICE))
        await constellation.expect_error(CLIENT_ID_MISMATCH)

        request = json.dumps({"tool_name": "echo", "parameters": {"text": "real"}})
        await constellation.send(
            builders.task_request("job@dev", "dev", session_id="job@t1", task_name="galaxy/job/t1", request=request)
        )
        await constellation.expect_ack("job@t1")
        list_tools = await device.expect(ServerMessageType.COMMAND)
        forged = results_for(list_tools, "dev", [ok([{"tool_name": "forged", "tool_type": "action"}])])
        # The constellation replays the device's frame as it is, then under its own identity.
        await constellation.send(forged)
        await constellation.expect_error(CLIENT_ID_MISMATCH)
        own_identity = msgspec.structs.replace(forged, client_id="job@dev", client_type=ClientType.CONSTELLATION)
        await constellation.send(own_identity)
        await constellation.assert_quiet("job@dev", ClientType.CONSTELLATION)  # dropped: only devices execute
        await device.send(results_for(list_tools, "dev", [ok([{"tool_name": "echo", "tool_type": "action"}])]))
        received = await serve_device(device, "dev", {"echo": lambda parameters: ok((parameters or {}).get("text"))})
        # The session asked the device for the tool the request names, which only the real tool list offered.
        assert [[a.tool_name for a in m.actions or []] for m in received[:2]] == [["echo"], []]
        end = await constellation.expect(ServerMessageType.TASK_END, status=TaskStatus.COMPLETED)
        assert end.result == [{"request": request, "result": "real"}]


async def test_constellation_frames_on_a_device_link_are_refused(server: AIPServer) -> None:
    """Advisory class: role spoofing — a constellation's frames on a device's link: a TASK in a constellation's
    name, the same TASK labelled constellation, and a DEVICE_INFO request are all refused; no session starts."""
    async with open_peer(server) as victim, open_peer(server) as device, open_peer(server) as constellation:
        await victim.register(_device_register("victim"))
        await device.register(_device_register("dev"))
        await constellation.register(builders.constellation_register("job", "victim"))
        in_its_name = builders.task_request("job@victim", "victim", session_id="s1", task_name="t", request="echo")
        await device.send(in_its_name)
        await device.expect_error(CLIENT_ID_MISMATCH)
        await device.send(msgspec.structs.replace(in_its_name, client_id="dev"))
        await device.expect_error(CLIENT_TYPE_MISMATCH)
        ask = msgspec.structs.replace(
            builders.device_info_request("dev", "victim", "r1"), client_type=ClientType.DEVICE
        )
        await device.send(ask)
        await device.expect_error("DEVICE_INFO_REQUEST is permitted only for constellation clients")
        await victim.assert_quiet("victim", ClientType.DEVICE)  # no COMMAND reached the victim
        await constellation.assert_quiet("job@victim", ClientType.CONSTELLATION)
        assert server.running_sessions() == {}


async def test_manager_ignores_device_frames_sent_to_its_constellation_link(nursery: trio.Nursery) -> None:
    """Advisory class: role spoofing, manager side — a server sending device-only frames (a COMMAND to run a
    shell command, a server-pushed TASK) to a constellation link: the manager executes and requests nothing, logs
    both, and keeps the link."""
    peer = ScriptedPeer()
    await nursery.start(peer.serve)
    shell = Command(tool_name="execute_command", parameters={"command": "rm -rf /"}, tool_type=ToolType.ACTION)
    command = builders.command(
        session_id="s1", task_name="t", actions=[shell], agent_name="LinuxAgent", response_id=new_id()
    )
    pushed = msgspec.structs.replace(TASK_ACK, type=ServerMessageType.TASK, status=TaskStatus.CONTINUE)
    with capture_logs() as records:
        async with ConstellationDeviceManager(task_name="adv") as manager:
            assert await manager.register_device("dev", peer.url)
            conn = live_connection(peer, "adv@dev")
            with manager.subscribe() as events:
                await conn.send(encode_text(command))
                await conn.send(encode_text(pushed))
                await conn.ws.aclose(4000, "done")  # read after the two frames above
                dropped = await next_status(events, "dev", DeviceStatus.DISCONNECTED)
                assert dropped.reason == "connection closed (4000: done)"  # the frames did not end the link
    kinds = {m.type for m in connections_of(peer, "adv@dev")[0].received}
    assert kinds <= {ClientMessageType.REGISTER, ClientMessageType.DEVICE_INFO_REQUEST, ClientMessageType.HEARTBEAT}
    assert len([r for r in records if "not meant for a constellation" in r.getMessage()]) == 2


# --- duplicate client_id ------------------------------------------------------------------------------------------


async def test_duplicate_client_id_is_refused_and_the_holder_is_untouched(server: AIPServer) -> None:
    """Advisory class: duplicate client_id. A second REGISTER under a live id — as a device, or as a
    constellation (one namespace) — gets UFO's error and a close 1000; the holder's registration and link stay."""
    duplicate = "client_id 'dev' is already registered; duplicate registrations are not allowed"
    async with open_peer(server) as holder, open_peer(server) as thief, open_peer(server) as thief2:
        await holder.register(_device_register("dev", hostname="the-real-one"))
        await thief.send(_device_register("dev", hostname="the-thief"))
        await thief.expect_error(duplicate)
        assert (await thief.expect_closed()).code == 1000
        as_constellation = msgspec.structs.replace(builders.constellation_register("x", "dev"), client_id="dev")
        await thief2.send(as_constellation)
        await thief2.expect_error(duplicate)
        assert (await thief2.expect_closed()).code == 1000
        await holder.assert_quiet("dev", ClientType.DEVICE)
        info = server.client_info("dev")
        assert info is not None and info.system_info is not None and info.system_info["hostname"] == "the-real-one"


async def _run_in_scope(scope: trio.CancelScope, agent: DeviceAgent, *, task_status: trio.TaskStatus[Any]) -> None:
    with scope:
        await agent.run(task_status=task_status)


async def test_manager_does_not_retry_a_duplicate_client_id(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Advisory class: duplicate client_id, manager side. Two managers with one task name drive one device: the
    second is refused as a duplicate, FAILED at once and never retried (UFO retried it); the first keeps running
    tasks."""
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
    url = url_with_token(server.url, SECRET)
    await nursery.start(DeviceAgent(url, "dev").run)
    with capture_logs("galaxy_trio.server") as records:
        async with (
            ConstellationDeviceManager(task_name="adv") as first,
            ConstellationDeviceManager(task_name="adv", reconnect_delay=0.5) as second,
        ):
            assert await first.register_device("dev", url)
            assert not await second.register_device("dev", url, max_retries=10)
            await trio.sleep(600.0)
            profile = second.get_device_info("dev")
            assert profile is not None and profile.status is DeviceStatus.FAILED
            assert profile.failure_reason == (
                "client_id 'adv@dev' is already registered; duplicate registrations are not allowed"
            )
            assert profile.connection_attempts == 1
            result = await first.assign_task_to_device(
                "t1", "dev", json.dumps({"tool_name": "echo", "parameters": {"text": "hi"}})
            )
            assert result.ok and result.result[0]["result"] == "hi"
    assert sum("already registered" in r.getMessage() for r in records) == 1


# --- TASK_END injected for another device's session ---------------------------------------------------------------


async def test_task_end_forged_on_another_devices_link_is_ignored(nursery: trio.Nursery) -> None:
    """Advisory class: TASK_END injected for another device's session. While device a runs task t1, TASK_ENDs
    for t1's session arrive on device b's link (completed with a forged result, then failed): the manager matches
    TASK_END by session *on its own link*, so both are ignored; a stays BUSY, b is untouched, and t1 ends with
    the real result."""
    peer = ScriptedPeer()
    started, release = trio.Event(), trio.Event()

    async def held(peer: ScriptedPeer, conn: Conn, task: ClientMessage) -> None:
        await conn.send(patched(TASK_ACK, session_id=task.session_id))
        started.set()
        await release.wait()
        await conn.send(patched(TASK_END_COMPLETED, session_id=task.session_id, response_id=new_id(), result="real"))

    peer.task_handler = held
    await nursery.start(peer.serve)
    async with ConstellationDeviceManager(task_name="adv") as manager:
        manager.add_devices([DeviceConfig(device_id=d, server_url=peer.url) for d in ("a", "b")])
        await manager.wait_until_settled()
        other_link = live_connection(peer, "adv@b")
        results: list[Any] = []
        with capture_logs() as records, manager.subscribe() as events:
            async with trio.open_nursery() as running:

                async def run_t1() -> None:
                    results.append(await manager.assign_task_to_device("t1", "a", "the real task"))

                running.start_soon(run_t1)
                await started.wait()
                forged = msgspec.structs.replace(TASK_END_COMPLETED, session_id="adv@t1", result="forged")
                await other_link.send(encode_text(forged))
                failed = msgspec.structs.replace(forged, status=TaskStatus.FAILED, error="forged failure")
                await other_link.send(encode_text(failed))
                await trio.testing.wait_all_tasks_blocked()  # b's reader has read both
                a, b = manager.get_device_info("a"), manager.get_device_info("b")
                assert a is not None and a.status is DeviceStatus.BUSY and a.current_task_id == "t1"
                assert b is not None and b.status is DeviceStatus.IDLE
                release.set()
            about_b = [e for e in events.pending() if e.device_id == "b"]
        ignored = [r for r in records if r.getMessage() == "device b: ignoring TASK_END for unknown session 'adv@t1'"]
        assert len(ignored) == 2
        assert about_b == []
        (result,) = results
        assert result.ok and result.result == "real"
        assert connections_of(peer, "adv@b") == [other_link]


async def test_server_sends_task_end_only_to_the_requester(server: AIPServer) -> None:
    """Advisory class: TASK_END injected for another device's session, server side: a TASK_END goes to the
    constellation that asked and to the device that ran it, never to another constellation (even one registered
    for the same device), and a session id cannot be taken over while it runs."""
    async with (
        open_peer(server) as d1,
        open_peer(server) as d2,
        open_peer(server) as c1,
        open_peer(server) as c2,
        open_peer(server) as same_device,
    ):
        await d1.register(_device_register("d1"))
        await d2.register(_device_register("d2"))
        await c1.register(builders.constellation_register("job", "d1"))
        await c2.register(builders.constellation_register("job", "d2"))
        await same_device.register(builders.constellation_register("other", "d1"))
        await c1.send(builders.task_request("job@d1", "d1", session_id="s1", task_name="t", request="echo"))
        await c1.expect_ack("s1")
        take_over = builders.task_request("other@d1", "d1", session_id="s1", task_name="t", request="echo")
        await same_device.send(take_over)
        await same_device.expect_error("session_id 's1' is owned by another client")
        await serve_device(d1, "d1", {"echo": lambda parameters: ok("from d1")})
        end = await c1.expect(ServerMessageType.TASK_END, status=TaskStatus.COMPLETED, session_id="s1")
        assert end.result == [{"request": "echo", "result": "from d1"}]
        for peer, client_id in ((c2, "job@d2"), (same_device, "other@d1")):
            await peer.assert_quiet(client_id, ClientType.CONSTELLATION)  # no TASK_END, nothing at all
        await d2.assert_quiet("d2", ClientType.DEVICE)


# --- DEVICE_INFO for a device the constellation does not target ---------------------------------------------------


async def test_device_info_about_a_device_the_constellation_does_not_target_is_refused(server: AIPServer) -> None:
    """Advisory class: DEVICE_INFO disclosure. A constellation registered for d1 asking about d2 is refused and
    learns nothing of d2; about its own device it gets the stored system_info; a constellation cannot register
    for a device that is not connected."""
    async with open_peer(server) as d1, open_peer(server) as d2, open_peer(server) as c, open_peer(server) as ghost:
        await d1.register(_device_register("d1", hostname="d1-host"))
        await d2.register(_device_register("d2", hostname="d2-private-host"))
        await c.register(builders.constellation_register("job", "d1"))
        await c.send(builders.device_info_request("job@d1", "d2", "ask-d2"))
        seen = [await c.expect(ServerMessageType.ERROR, error="Not authorized to request device info for this device")]
        await c.send(builders.device_info_request("job@d1", "d1", "ask-d1"))
        own = await c.expect(ServerMessageType.DEVICE_INFO_RESPONSE, response_id="ask-d1")
        assert own.result["hostname"] == "d1-host"
        seen.append(own)
        assert all("d2-private-host" not in encode_text(m) for m in seen)
        await ghost.send(builders.constellation_register("job", "nobody"))
        await ghost.expect_error("Target device 'nobody' is not connected")
        assert (await ghost.expect_closed()).code == 1000


class _DecoyInfoPeer(ScriptedPeer):
    """Answers DEVICE_INFO with another device's system info under another request id first, then the real one."""

    async def _answer(self, conn: Conn, message: ClientMessage) -> bool:
        if message.type is ClientMessageType.DEVICE_INFO_REQUEST:
            decoy = {**SYSTEM_INFO, "hostname": "someone-elses-host", "platform": "darwin"}
            await conn.send(patched(DEVICE_INFO_RESPONSE, response_id="device_info_other_1", result=decoy))
        return await super()._answer(conn, message)


async def test_manager_asks_only_about_its_own_device_and_takes_no_one_elses_answer(nursery: trio.Nursery) -> None:
    """Advisory class: DEVICE_INFO disclosure, manager side: the manager asks only about the device it targets,
    and merges only the answer to its own request id (an unsolicited answer about another device is ignored)."""
    peer = _DecoyInfoPeer()
    await nursery.start(peer.serve)
    async with ConstellationDeviceManager(task_name="adv") as manager:
        assert await manager.register_device("dev", peer.url)
        profile = manager.get_device_info("dev")
    assert profile is not None and profile.metadata["system_info"]["hostname"] == SYSTEM_INFO["hostname"]
    assert profile.os == SYSTEM_INFO["platform"]
    (ask,) = peer.frames_of(ClientMessageType.DEVICE_INFO_REQUEST)
    assert (ask.client_id, ask.target_id, ask.client_type) == ("adv@dev", "dev", ClientType.CONSTELLATION)


# --- a token never in logs, errors, reprs or --json output ----------------------------------------------------------


def _texts_of(error: BaseException) -> list[str]:
    """Everything an exception shows: str, repr and the whole formatted traceback (causes and contexts too)."""
    import traceback

    return [str(error), repr(error), "".join(traceback.format_exception(error))]


def _assert_no_secret(texts: list[str]) -> None:
    for text in texts:
        assert SECRET not in text and WRONG_SECRET not in text, text


async def test_the_token_never_reaches_a_log_line_an_error_or_a_repr(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Advisory class: tokens in logs (UFO logged the token in access logs, connect lines, refusals and give-up
    messages). A full run — server, agent, manager, a task, a 403, a connection refused, a reconnect — with every
    galaxy_trio and trio-websocket logger at DEBUG; then every error those flows raise (str, repr, traceback) and
    every repr a user sees. The token (and a wrong one) appears in none of them."""
    refused_url = f"ws://127.0.0.1:{_free_port()}/ws?token={SECRET}"
    errors: list[BaseException] = []
    shown: list[str] = []
    with capture_logs("galaxy_trio", "trio-websocket") as records:
        server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
        url = url_with_token(server.url, SECRET)
        first_agent = trio.CancelScope()
        agent = DeviceAgent(url, "dev")
        await nursery.start(_run_in_scope, first_agent, agent)
        async with ConstellationDeviceManager(task_name="adv", reconnect_delay=0.5, backoff_cap=2.0) as manager:
            assert await manager.register_device("dev", url, max_retries=100)
            echo = json.dumps({"tool_name": "echo", "parameters": {"text": "hi"}})
            assert (await manager.assign_task_to_device("t1", "dev", echo)).ok
            assert not await manager.register_device("bad", url_with_token(server.url, WRONG_SECRET))
            assert not await manager.register_device("gone", refused_url, max_retries=2)
            with manager.subscribe() as events:
                first_agent.cancel()  # the device goes away...
                await next_status(events, "dev", DeviceStatus.DISCONNECTED)
                await nursery.start(DeviceAgent(url, "dev").run)  # ...and comes back
                await next_status(events, "dev", DeviceStatus.IDLE)
            profiles = manager.get_all_devices()
            shown += [repr(manager), *(repr(p) for p in profiles.values())]
            shown += [msgspec.json.encode(p).decode() for p in profiles.values()]
        shown += [repr(server), repr(agent)]
        for bad in (url_with_token(server.url, WRONG_SECRET), refused_url, f"http://127.0.0.1:1/ws?token={SECRET}"):
            with pytest.raises(LinkError) as link_failed:
                async with open_link(bad):
                    pass
            errors.append(link_failed.value)
        with pytest.raises(AuthenticationRejected) as stopped:
            await DeviceAgent(url_with_token(server.url, WRONG_SECRET), "intruder").run()
        errors.append(stopped.value)
        with pytest.raises(RetriesExhausted) as gave_up:
            await DeviceAgent(refused_url, "lost", max_retries=1, reconnect_delay=0.1).run()
        errors.append(gave_up.value)
    with pytest.raises(ValueError) as not_ws:
        DeviceAgent(f"ftp://127.0.0.1/ws?token={SECRET}", "d")
    errors.append(not_ws.value)
    for config in (
        {"server_url": f"http://127.0.0.1:1/ws?token={SECRET}"},
        {"server_url": f"ws://admin:{SECRET}@127.0.0.1:1/ws"},
        {"server_url": "ws://127.0.0.1:1/ws", "token_env": "GALAXY_TRIO_UNSET_TOKEN_VAR"},
    ):
        with pytest.raises(ConfigError) as bad_config:
            DeviceConfig(device_id="d", **config).resolve_url({})
        errors.append(bad_config.value)
    yaml = f"devices:\n  - device_id: d\n    server_url: ws://h:1/ws?token={SECRET}\n  - device_id: e\n    server_url: http://h/?token={SECRET}\n"
    with pytest.raises(ConfigError) as bad_yaml:
        parse_config(yaml)
    errors.append(bad_yaml.value)
    good = parse_config(f"devices:\n  - device_id: d\n    server_url: ws://h:1/ws?token={SECRET}\n")
    shown += [repr(good), repr(good.devices[0]), str(good.devices[0].display_url)]

    assert {type(e) for e in errors} >= {HandshakeRejected, ConnectFailed, AuthenticationRejected, RetriesExhausted}
    assert any("token=***" in text for text in shown)
    _assert_no_secret([text for error in errors for text in _texts_of(error)] + shown)
    messages = [r.getMessage() for r in records]
    # The flows did happen (so the check above is not vacuous): a 403, a refusal, a reconnect, the upgrades.
    assert any("HTTP 403" in m for m in messages) and any("gave up after 2" in m for m in messages)
    assert sum("dev: registering -> idle" in m for m in messages) == 2
    assert any(r.name == "galaxy_trio.server" and "accepted" in r.getMessage() for r in records)
    formatted = [logging.Formatter().format(r) for r in records]  # with any exc_info, as a handler would write it
    _assert_no_secret(messages + formatted)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "galaxy_trio", "-v", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _assert_no_token_in_output(*outputs: str) -> None:
    for output in outputs:
        assert SECRET not in output and WRONG_SECRET not in output
        assert "token=" not in output.replace("token=***", ""), "a token value reached the output"


def test_run_local_once_json_shows_no_token(tmp_path: Path) -> None:
    """Advisory class: tokens in --json output and logs, local mode: the run generates its own token (the one in
    token_env is not even used); neither appears in stdout (--json) or in stderr (logs at DEBUG, -v)."""
    config = tmp_path / "devices.yaml"
    config.write_text(
        f"devices:\n  - device_id: alpha\n    server_url: ws://127.0.0.1:{_free_port()}/ws\n"
        "    token_env: GALAXY_TRIO_TEST_SECRET\n",
        encoding="utf-8",
    )
    done = _run_cli("run", str(config), "--local", "--once", "--json", env={"GALAXY_TRIO_TEST_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    (profile,) = json.loads(done.stdout)
    assert profile["status"] == "idle"
    assert "galaxy_trio.server: accepted 127.0.0.1:" in done.stderr  # DEBUG lines of the local server are there
    _assert_no_token_in_output(done.stdout, done.stderr)


async def test_run_once_json_against_a_server_shows_no_token(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Advisory class: tokens in --json output and logs, against a running server: tokens in the URL and from
    token_env, a wrong token (403) and a connection refused; the JSON profiles and the DEBUG logs name every
    outcome and show no token."""
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
    url = url_with_token(server.url, SECRET)
    for device_id in ("inline", "from_env"):
        await nursery.start(DeviceAgent(url, device_id).run)
    config = tmp_path / "devices.yaml"
    config.write_text(
        "manager: {reconnect_delay: 0.01, backoff_cap: 0.02}\ndevices:\n"
        f"  - device_id: inline\n    server_url: {url}\n"
        f"  - device_id: from_env\n    server_url: {server.url}\n    token_env: GALAXY_TRIO_TEST_SECRET\n"
        f"  - device_id: wrong\n    server_url: {url_with_token(server.url, WRONG_SECRET)}\n"
        f"  - device_id: refused\n    server_url: ws://127.0.0.1:{_free_port()}/ws?token={SECRET}\n"
        "    max_retries: 1\n",
        encoding="utf-8",
    )
    done = await trio.run_process(
        [sys.executable, "-m", "galaxy_trio", "-v", "run", str(config), "--once", "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "GALAXY_TRIO_TEST_SECRET": SECRET},
    )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 1, stderr  # two devices failed
    profiles = {p["device_id"]: p for p in json.loads(stdout)}
    assert profiles["inline"]["status"] == profiles["from_env"]["status"] == "idle"
    assert profiles["wrong"]["failure_reason"] == "handshake rejected with HTTP 403: the token is wrong or missing"
    assert profiles["refused"]["failure_reason"].startswith("gave up after 1 consecutive failed attempts")
    assert all(p["server_url"].endswith("/ws?token=***") for p in profiles.values() if p["device_id"] != "from_env")
    _assert_no_token_in_output(stdout, stderr)


# --- server_url schemes other than ws/wss ---------------------------------------------------------------------------

BAD_URLS = [
    ("http://127.0.0.1:{port}/ws?token=" + SECRET, "scheme must be ws or wss, got 'http'"),
    ("https://127.0.0.1:{port}/ws?token=" + SECRET, "scheme must be ws or wss, got 'https'"),
    ("ftp://127.0.0.1:{port}/ws?token=" + SECRET, "scheme must be ws or wss, got 'ftp'"),
    ("file:///etc/passwd?token=" + SECRET, "scheme must be ws or wss, got 'file'"),
    ("javascript:alert(1)//?token=" + SECRET, "scheme must be ws or wss, got 'javascript'"),
    ("gopher://127.0.0.1:{port}/_GET", "scheme must be ws or wss, got 'gopher'"),
    ("//127.0.0.1:{port}/ws?token=" + SECRET, "must be a ws:// or wss:// URL, got no scheme"),
    ("ws://admin:" + SECRET + "@127.0.0.1:{port}/ws", "must not carry credentials before the host"),
    ("wss://" + SECRET + "@127.0.0.1:{port}/ws", "must not carry credentials before the host"),
]


@pytest.mark.parametrize(("template", "why"), BAD_URLS)
async def test_server_url_schemes_other_than_ws_or_wss_are_refused_before_any_connection(
    nursery: trio.Nursery, template: str, why: str
) -> None:
    """Advisory class: SSRF through server_url. A URL that is not ws:// or wss://, or that carries credentials, is
    refused when the device is configured — in code and in YAML — with an error naming the device and the field
    (and never the token); nothing connects anywhere, not even to a listener at the URL's own address."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[Any] = []

    async def count(stream: trio.SocketStream) -> None:
        accepted.append(stream)

    nursery.start_soon(partial(trio.serve_listeners, count, [listener]))
    url = template.format(port=port)
    async with ConstellationDeviceManager(task_name="adv") as manager:
        with pytest.raises(ConfigError) as in_code:
            await manager.register_device("lab", url)
        assert manager.get_device_info("lab") is None
    with pytest.raises(ConfigError) as in_yaml:
        parse_config(f"devices:\n  - device_id: lab\n    server_url: '{url}'\n", source="devices.yaml")
    (problem,) = in_code.value.problems
    assert (problem.device, problem.field) == ("lab", "server_url") and why in problem.message
    assert str(in_yaml.value).startswith("devices.yaml:3: device 'lab': server_url: ") and why in str(in_yaml.value)
    _assert_no_secret([*_texts_of(in_code.value), *_texts_of(in_yaml.value)])
    await trio.testing.wait_all_tasks_blocked()
    assert accepted == []


def test_check_command_names_the_file_line_device_and_field_of_a_bad_url(tmp_path: Path) -> None:
    """Advisory class: SSRF through server_url, command line: ``check`` refuses the file, exit status 2."""
    config = tmp_path / "devices.yaml"
    config.write_text(f"devices:\n  - device_id: lab\n    server_url: http://10.0.0.1/ws?token={SECRET}\n")
    done = _run_cli("check", str(config))
    assert done.returncode == 2
    assert f"{config}:3: device 'lab': server_url: scheme must be ws or wss, got 'http'" in done.stderr
    _assert_no_token_in_output(done.stdout, done.stderr)


def test_the_device_agent_refuses_urls_that_are_not_websocket() -> None:
    """Advisory class: SSRF through server_url, device side: the agent connects to ws:// or wss:// only."""
    for url in (f"http://127.0.0.1:1/ws?token={SECRET}", "file:///etc/passwd", "javascript:alert(1)"):
        with pytest.raises(ValueError, match="must be a ws:// or wss:// URL") as refused:
            DeviceAgent(url, "d")
        _assert_no_secret(_texts_of(refused.value))


# --- the server binds 127.0.0.1 unless told otherwise ---------------------------------------------------------------


async def test_the_server_listens_on_127_0_0_1_by_default(nursery: trio.Nursery) -> None:
    """Advisory class: unauthenticated bind (UFO's docs and API were reachable without a token). serve_aip, the
    ``serve`` command and local mode listen on loopback only, unless given another host: the listening socket
    itself is checked."""
    assert inspect.signature(serve_aip).parameters["host"].default == "127.0.0.1"
    assert cli._parser().parse_args(["serve"]).host == "127.0.0.1"
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=SECRET))
    assert _listening_addresses(server.port) == {"127.0.0.1"}
    assert server.url.startswith("ws://127.0.0.1:")


async def test_the_server_listens_where_it_is_told(nursery: trio.Nursery) -> None:
    """Advisory class: unauthenticated bind — "unless told otherwise": an explicit host is honoured (another
    loopback address here, so that the test opens nothing to the network), and local mode binds the host of
    each device's URL."""
    server: AIPServer = await nursery.start(partial(serve_aip, host="127.0.0.2", port=0, token=SECRET))
    assert _listening_addresses(server.port) == {"127.0.0.2"}
    port = _free_port()
    async with open_local_fleet([DeviceConfig(device_id="d", server_url=f"ws://127.0.0.1:{port}/ws")]) as fleet:
        assert list(fleet.servers) == [("127.0.0.1", port)]
        assert _listening_addresses(port) == {"127.0.0.1"}


# --- oversized frames (> 1 MiB) --------------------------------------------------------------------------------------


def _padded_heartbeat(client_id: str, client_type: ClientType, size: int) -> str:
    """A valid heartbeat exactly ``size`` characters long."""
    skeleton = encode_text(builders.heartbeat(client_id, client_type, metadata={"pad": ""}))
    text = skeleton.replace('"pad":""', '"pad":"' + "a" * (size - len(skeleton)) + '"', 1)
    assert len(text) == size
    return text


async def test_the_server_refuses_a_frame_over_one_mib_with_1009(server: AIPServer) -> None:
    """Advisory class: 100 MiB frames (UFO accepted them on every side). Exactly 1 MiB is a frame like any other;
    one character more closes the link with 1009 and unregisters the client; another client is unaffected."""
    assert DEFAULT_MAX_FRAME == 1 << 20
    async with open_peer(server) as bystander, open_peer(server) as big:
        await bystander.register(_device_register("bystander"))
        await big.register(_device_register("big"))
        await big.send_raw(_padded_heartbeat("big", ClientType.DEVICE, DEFAULT_MAX_FRAME))
        await big.expect_ack()
        try:
            await big.send_raw(_padded_heartbeat("big", ClientType.DEVICE, DEFAULT_MAX_FRAME + 1))
            reason = await big.expect_closed()
        except trio_websocket.ConnectionClosed as closed:  # closed before the whole frame was even written
            assert closed.reason is not None
            reason = closed.reason
        assert reason.code == 1009
        await bystander.assert_quiet("bystander", ClientType.DEVICE)
        assert server.online_clients() == {"bystander": ClientType.DEVICE}


async def test_the_manager_drops_a_link_that_sends_a_frame_over_one_mib_and_reconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Advisory class: 100 MiB frames, manager side. A frame of exactly 1 MiB is read (and, not being valid,
    ignored); one character more drops the link with 1009, and the device reconnects to IDLE."""
    peer = ScriptedPeer()
    await nursery.start(peer.serve)
    async with ConstellationDeviceManager(task_name="adv", reconnect_delay=0.5) as manager:
        assert await manager.register_device("dev", peer.url)
        conn = live_connection(peer, "adv@dev")
        with manager.subscribe() as events:
            await conn.send("x" * DEFAULT_MAX_FRAME)
            await conn.send("y" * (DEFAULT_MAX_FRAME + 1))
            dropped = await next_status(events, "dev", DeviceStatus.DISCONNECTED)
            assert dropped.reason == f"connection closed (1009: message larger than {DEFAULT_MAX_FRAME} bytes)"
            await next_status(events, "dev", DeviceStatus.IDLE)
    assert len(connections_of(peer, "adv@dev")) == 2
