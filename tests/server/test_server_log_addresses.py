"""Server log lines name a peer as HOST:PORT, not as trio-websocket's ``Endpoint(address=…, is_ssl=False)``."""

from __future__ import annotations

import logging
import re

import pytest
import trio

from galaxy_trio.agent import AuthenticationRejected, DeviceAgent
from galaxy_trio.redact import url_with_token
from galaxy_trio.server import AIPServer

from ._peers import TOKEN


async def test_refusals_and_registrations_log_the_peer_as_host_port(
    server: AIPServer, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="galaxy_trio.server")
    with pytest.raises(AuthenticationRejected):
        await DeviceAgent(url_with_token(server.url, "wrong"), "intruder").run()
    agent = await nursery.start(DeviceAgent(url_with_token(server.url, TOKEN), "dev").run)
    assert agent.registered

    messages = [r.getMessage() for r in caplog.records if r.name == "galaxy_trio.server"]
    assert any(
        re.fullmatch(r"refused 127\.0\.0\.1:\d+ on /ws: missing or wrong token \(HTTP 403\)", m) for m in messages
    )
    assert any(re.fullmatch(r"device 'dev' \(127\.0\.0\.1:\d+\) registered \(platform \w+\)", m) for m in messages)
    assert not [m for m in messages if "Endpoint(" in m or "is_ssl" in m]
