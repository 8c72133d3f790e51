"""The HTTP upgrade: token checked before any WebSocket exists, one path, no token in logs or URLs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio_websocket

from galaxy_trio.server import AIPServer, ServerSettings, serve_aip

from ._peers import TOKEN, frame, open_peer, start_server


@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x", TOKEN[:-1]])
async def test_missing_or_wrong_token_is_refused_with_403(server: AIPServer, token: str | None) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_peer(server, token=token):
            pass
    assert info.value.status_code == 403
    assert server.online_clients() == {}


async def test_token_given_twice_is_refused(server: AIPServer) -> None:
    url = f"{server.url}?token={TOKEN}&token={TOKEN}"
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url):
            pass
    assert info.value.status_code == 403


@pytest.mark.parametrize("path", ["/", "/ws/", "/api/ws", "/wss", "/WS"])
async def test_other_paths_get_404(server: AIPServer, path: str) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_peer(server, path=path):
            pass
    assert info.value.status_code == 404


async def test_right_token_upgrades_and_registers(server: AIPServer) -> None:
    async with open_peer(server) as peer:
        await peer.register(frame("device_registration", 1))
    assert server.port > 0
    assert server.url == f"ws://127.0.0.1:{server.port}/ws"
    assert TOKEN not in server.url and TOKEN not in repr(server)


async def test_token_never_reaches_the_server_log(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="galaxy_trio")
    server = await start_server(nursery)
    with pytest.raises(trio_websocket.ConnectionRejected):
        async with open_peer(server, token="not-" + TOKEN):
            pass
    async with open_peer(server) as peer:
        await peer.register(frame("device_registration", 1))
        await peer.send_raw("not json")
        await peer.expect_error()
    server_records = [r for r in caplog.records if r.name.startswith("galaxy_trio")]
    assert any("403" in r.getMessage() for r in server_records)
    assert any("registered" in r.getMessage() for r in server_records)
    for record in server_records:
        assert TOKEN not in record.getMessage()


async def test_serve_aip_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError, match="token"):
        await serve_aip(port=0, token="")


@pytest.mark.parametrize(
    "bad",
    [
        {"registration_deadline": 0},
        {"command_deadline": -1.0},
        {"cancel_grace": float("nan")},
        {"max_tasks_per_device": 0},
        {"ping_timeout": True},
    ],
)
def test_settings_reject_non_positive_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ServerSettings(**bad)


def test_settings_allow_keepalive_off() -> None:
    assert ServerSettings(ping_interval=None).ping_interval is None
