"""Many registered devices closing at once (issue #15 item 3): the server unregisters them a few per scheduler
pass (``transport.server.DEFAULT_CLOSES_PER_PASS``), so another device's heartbeat is answered meanwhile, and every
one of them is gone in the end. Passes are counted by a trio Instrument, never timed."""

from __future__ import annotations

import trio
import trio.testing

from galaxy_trio.aip import ClientType, ServerMessageType, builders, decode_server_message
from galaxy_trio.redact import url_with_token
from galaxy_trio.server import AIPServer
from galaxy_trio.transport import ClientLink, connect_link, open_link
from galaxy_trio.transport.server import DEFAULT_CLOSES_PER_PASS

from ._peers import TOKEN


class RegistryWatch(trio.abc.Instrument):
    """How many clients the server has registered at the start of each scheduler pass."""

    def __init__(self, server: AIPServer) -> None:
        self._server = server
        self.counts: list[int] = []

    def after_io_wait(self, timeout: float) -> None:
        self.counts.append(len(self._server.online_clients()))


async def _registered(url: str, device_id: str) -> ClientLink:
    link = await connect_link(url)
    await link.send(builders.device_register(device_id, platform="linux", system_info=None))
    assert decode_server_message(await link.receive()).type is ServerMessageType.HEARTBEAT
    return link


async def test_devices_closing_at_once_leave_a_few_per_pass_while_another_is_answered(
    server: AIPServer, autojump_clock: trio.testing.MockClock
) -> None:
    leaving = 5 * DEFAULT_CLOSES_PER_PASS
    url = url_with_token(server.url, TOKEN)
    async with open_link(url) as bystander:
        await bystander.send(builders.device_register("bystander", platform="linux", system_info=None))
        await bystander.receive()
        links = [await _registered(url, f"leaving-{n}") for n in range(leaving)]
        assert len(server.online_clients()) == leaving + 1
        watch = RegistryWatch(server)
        registered_when_answered: list[int] = []
        go = trio.Event()

        async def leave(link: ClientLink) -> None:
            await go.wait()
            await link.aclose()

        async def beat() -> None:
            await go.wait()
            await bystander.send(builders.heartbeat("bystander", ClientType.DEVICE))
            assert decode_server_message(await bystander.receive()).type is ServerMessageType.HEARTBEAT
            registered_when_answered.append(len(server.online_clients()))

        trio.lowlevel.add_instrument(watch)
        try:
            async with trio.open_nursery() as storm:
                for link in links:
                    storm.start_soon(leave, link)
                storm.start_soon(beat)
                await trio.testing.wait_all_tasks_blocked()
                go.set()  # every close frame and the heartbeat go out in the same pass
            while len(server.online_clients()) > 1:
                await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(watch)
        assert server.online_clients() == {"bystander": ClientType.DEVICE}
    # The registry shrank a few clients per pass, never all at once ...
    drops = [before - after for before, after in zip(watch.counts, watch.counts[1:], strict=False)]
    assert max(drops) <= DEFAULT_CLOSES_PER_PASS and sum(drops) == leaving, drops
    # ... and the heartbeat was answered while most of the devices were still leaving.
    assert registered_when_answered[0] > leaving + 1 - 2 * DEFAULT_CLOSES_PER_PASS
