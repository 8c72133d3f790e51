"""What the agent tells a person (issue 12): a refused connection says refused and what to check."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from galaxy_trio.agent import DeviceAgent, RetriesExhausted
from galaxy_trio.aip.client_protocol import REFUSED_HINT, Outcome

from ..net import free_port

TOKEN = "s3cret-token"


async def test_a_refused_connection_says_refused_and_what_to_check(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="galaxy_trio.agent")
    port = free_port()  # nothing listens there
    agent = DeviceAgent(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", "dev", max_retries=1, reconnect_delay=0.1)

    with pytest.raises(RetriesExhausted) as gave_up:
        await agent.run()

    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"device 'dev': connection refused by 127.0.0.1:{port}: is the AIP server running? check the host and port"
        " of the server URL; reconnecting to "
    )
    assert f"connection refused by 127.0.0.1:{port}" in str(gave_up.value)
    # The attempt ended in the protocol's frozen outcome value, retryable, with what to check.
    last = gave_up.value.last
    assert last == Outcome(f"connection refused by 127.0.0.1:{port}", permanent=False, hint=REFUSED_HINT)
    with pytest.raises(AttributeError):
        last.permanent = True  # type: ignore[misc]
    assert "all attempts to connect" not in caplog.text + str(gave_up.value)
    assert TOKEN not in caplog.text + str(gave_up.value)


async def test_a_refused_connection_to_localhost_names_the_host_given() -> None:
    # Real time: resolving a name runs in a thread, which a jumping clock would time out.
    port = free_port()
    agent = DeviceAgent(f"ws://localhost:{port}/ws", "dev", max_retries=0)

    says = rf"last error: connection refused by localhost:{port}: is the AIP server running\?"
    with pytest.raises(RetriesExhausted, match=says):
        await agent.run()
