"""``serve --control``'s server: a real ``serve_aip`` with raw AIP peers doing right and wrong, and its
``/metrics`` (parsed with prometheus_client's parser) counting exactly the frames the peers sent and received and
the frames each rule refused; the health probes answer without a token and the metrics need it."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from galaxy_trio.aip import ClientMessage, ClientType, ServerMessage, ServerMessageType, builders, new_id
from galaxy_trio.control import ControlEndpoint, serve_server_control
from galaxy_trio.server import AIPServer
from galaxy_trio.server.stats import REJECTION_RULES

from ..server._peers import Peer, open_peer, start_server

TOKEN = "server-metrics-token-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Tally:
    """Frames the peers sent and received, all of them."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0


class CountingPeer(Peer):
    def __init__(self, peer: Peer, tally: Tally) -> None:
        super().__init__(peer.ws)
        self.tally = tally

    async def send_raw(self, data: str | bytes) -> None:
        await super().send_raw(data)
        self.tally.sent += 1

    async def send(self, message: ClientMessage) -> None:
        await super().send(message)
        self.tally.sent += 1

    async def receive(self) -> ServerMessage:
        message = await super().receive()
        self.tally.received += 1
        return message


@asynccontextmanager
async def _peer(server: AIPServer, tally: Tally) -> AsyncIterator[CountingPeer]:
    async with open_peer(server) as peer:
        yield CountingPeer(peer, tally)


async def _scrape(endpoint: ControlEndpoint) -> Samples:
    async with httpx.AsyncClient(base_url=endpoint.url, headers={"Authorization": f"Bearer {endpoint.token}"}) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _device(device_id: str) -> ClientMessage:
    return builders.device_register(device_id, platform="linux", system_info={"os": "linux"})


async def _misbehave(server: AIPServer, tally: Tally, expected: Counter[str]) -> None:
    """One device refused once by every rule a registered device can break, then disconnected."""
    async with _peer(server, tally) as dev1:
        await dev1.register(_device("dev1"))
        await dev1.send_raw("{not json")
        await dev1.expect_error()
        expected["decode"] += 1
        await dev1.send(builders.heartbeat("someone-else", ClientType.DEVICE))
        await dev1.expect_error()
        expected["identity"] += 1
        await dev1.send(_device("dev1"))  # REGISTER again on a registered link
        await dev1.expect_error()
        expected["unknown_type"] += 1
        await dev1.send(builders.command_results("dev1", session_id="s?", prev_response_id="nothing", results=[]))
        expected["command_results"] += 1  # dropped without an answer, as UFO's clients expect
        await dev1.assert_quiet("dev1", ClientType.DEVICE)
        await dev1.send_raw(b"\x00binary")
        await dev1.expect_error()  # then the server closes with 1003
        expected["binary"] += 1
        assert (await dev1.expect_closed()).code == 1003


async def _stay(server: AIPServer, tally: Tally, expected: Counter[str], stack: AsyncExitStack) -> None:
    """dev2 and a constellation for it stay connected (in ``stack``), with a task running; on the way a duplicate
    REGISTER, a DEVICE_INFO request and a TASK about another device are refused."""
    dev2 = await stack.enter_async_context(_peer(server, tally))
    await dev2.register(_device("dev2"))
    async with _peer(server, tally) as twin:
        await twin.send(_device("dev2"))  # a duplicate id
        await twin.expect_error()
        expected["register"] += 1
    constellation = await stack.enter_async_context(_peer(server, tally))
    client_id = builders.constellation_client_id("ops", "dev2")
    await constellation.register(builders.constellation_register("ops", "dev2"))
    await constellation.send(builders.device_info_request(client_id, "dev1", new_id()))  # not its device
    await constellation.expect_error()
    expected["device_info"] += 1
    await constellation.send(builders.task_request(client_id, "dev1", session_id="t0", task_name="ops", request="x"))
    await constellation.expect_error()  # a scoped constellation tasks only its own device
    expected["task"] += 1
    await constellation.send(builders.task_request(client_id, "dev2", session_id="t1", task_name="ops", request="x"))
    await constellation.expect_ack("t1")
    await dev2.expect(ServerMessageType.COMMAND)  # the session asks the device for its tools


async def test_server_metrics_count_every_frame_and_every_refusal_by_rule(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    endpoint: ControlEndpoint = await nursery.start(partial(serve_server_control, [server], port=0, token=TOKEN))
    tally = Tally()
    expected: Counter[str] = Counter()
    await _misbehave(server, tally, expected)
    async with AsyncExitStack() as stack:
        await _stay(server, tally, expected, stack)
        samples = await _scrape(endpoint)
        url = server.url
        assert samples[("galaxy_trio_server_frames_total", (("direction", "in"), ("server", url)))] == tally.sent
        assert samples[("galaxy_trio_server_frames_total", (("direction", "out"), ("server", url)))] == tally.received
        for rule in REJECTION_RULES:
            key = ("galaxy_trio_server_frames_rejected_total", (("rule", rule), ("server", url)))
            if rule == "frame_budget":  # exported at 0 here; counted once by the flood test in security/test_floods.py
                assert samples[key] == 0
                continue
            assert samples[key] == expected[rule] == 1, rule
        assert samples[("galaxy_trio_server_clients", (("server", url), ("type", "device")))] == 1
        assert samples[("galaxy_trio_server_clients", (("server", url), ("type", "constellation")))] == 1
        assert samples[("galaxy_trio_server_sessions_running", (("server", url),))] == 1
    nursery.cancel_scope.cancel()


async def test_health_needs_no_token_and_metrics_need_the_right_one(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    endpoint: ControlEndpoint = await nursery.start(partial(serve_server_control, [server], port=0))
    assert len(endpoint.token) >= 40 and endpoint.token not in repr(endpoint)  # generated, never shown
    async with httpx.AsyncClient(base_url=endpoint.url) as client:
        for path, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
            response = await client.get(path)
            assert (response.status_code, response.text) == (200, body)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": endpoint.token}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.json() == {"error": "missing or wrong bearer token"}  # and no figure
            assert refused.headers["www-authenticate"].startswith("Bearer")
        scraped = await client.get("/metrics", headers={"Authorization": f"bearer {endpoint.token}"})
        assert scraped.status_code == 200 and "galaxy_trio_server_frames_total" in scraped.text
        assert "galaxy_trio_devices" not in scraped.text  # no manager here
        assert (await client.get("/api/devices")).status_code == 404
    nursery.cancel_scope.cancel()


async def test_a_remote_bind_is_refused_without_permission() -> None:
    from galaxy_trio.control import ControlAddressError

    try:
        await serve_server_control([], host="0.0.0.0", port=0)
    except ControlAddressError as exc:
        assert "not a loopback address" in str(exc)
    else:
        raise AssertionError("a non-loopback bind was accepted")
