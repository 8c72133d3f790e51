"""An in-memory ``Link`` for tests that drive server objects without sockets."""

from __future__ import annotations

import trio

from galaxy_trio.aip import CLOSE_NORMAL, ClientMessage, ServerMessage, encode_text


class FakeLink:
    """Records what is sent; with ``stalled`` it never takes a frame, like a peer whose TCP window is full."""

    def __init__(self, *, stalled: bool = False) -> None:
        self.stalled = stalled
        self.sent: list[ServerMessage] = []
        self.closes: list[tuple[int, str | None, float]] = []

    @property
    def closed(self) -> bool:
        return bool(self.closes)

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        await self.send_text(encode_text(message))
        assert isinstance(message, ServerMessage)
        self.sent.append(message)

    async def send_text(self, text: str) -> None:
        if self.stalled:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()

    async def receive(self) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        self.closes.append((code, reason, trio.current_time()))
        await trio.lowlevel.checkpoint()
