"""What one AIP server counts about itself, for metrics (``AIPServer.stats``; ``serve --control`` serves them).

Plain integers bumped where things happen, read at scrape time: frames received (text or binary) and sent over
every link (a session's COMMANDs and TASK_ENDs included), and frames refused by rule. A rule
is the check that refused the frame:

- ``register``: a first frame that is not an acceptable REGISTER (``rules.check_register``: not a REGISTER, a
  duplicate id, a target device not connected, …);
- ``binary``: a binary frame (AIP frames are JSON text);
- ``decode``: a text frame that is not an AIP message;
- ``identity``: a ``client_type``/``client_id`` that differs from the registered one (``rules.check_identity``);
- ``task``: a TASK refused by ``rules.check_task`` (no target, not a device, a session id owned by another client…);
- ``device_info``: a DEVICE_INFO request refused by ``rules.check_device_info``;
- ``command_results``: COMMAND_RESULTS dropped (from a constellation, or for no COMMAND waiting);
- ``unknown_type``: a type the server takes from no client (a second REGISTER, a TASK_END).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, cast

from ..aip import ClientMessage, ServerMessage
from ..errors import BinaryFrame
from ..transport import CLOSE_NORMAL, ServerLink

__all__ = ["REJECTION_RULES", "CountedLink", "ServerStats"]

#: Every rule a rejection is counted under (each is exported, at 0 until it fires).
REJECTION_RULES: Final = (
    "register",
    "binary",
    "decode",
    "identity",
    "task",
    "device_info",
    "command_results",
    "unknown_type",
    "frame_budget",
)


class ServerStats:
    """Counters of one server since it started. ``rejected``: frames refused, by rule (see the module docstring)."""

    __slots__ = ("frames_in", "frames_out", "rejected")

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECTION_RULES, 0))

    def reject(self, rule: str) -> None:
        self.rejected[rule] += 1

    def count(self, link: ServerLink) -> ServerLink:
        """``link``, with every frame it carries counted here (the connection and its sessions use it as is)."""
        return cast(ServerLink, CountedLink(link, self))

    def __repr__(self) -> str:
        rejected = sum(self.rejected.values())
        return f"<ServerStats in={self.frames_in} out={self.frames_out} rejected={rejected}>"


class CountedLink:
    """A server link that counts the frames through it: a frame counts once it was received, or sent without error.

    Anything else of the link (``closed``, ``ping``, whatever the transport adds) is the link's own.
    """

    __slots__ = ("_link", "_stats")

    def __init__(self, link: ServerLink, stats: ServerStats) -> None:
        self._link = link
        self._stats = stats

    async def receive(self) -> str:
        try:
            text = await self._link.receive()
        except BinaryFrame:
            self._stats.frames_in += 1
            raise
        self._stats.frames_in += 1
        return text

    async def send(self, message: ClientMessage | ServerMessage) -> None:
        await self._link.send(message)
        self._stats.frames_out += 1

    async def send_text(self, text: str) -> None:
        await self._link.send_text(text)
        self._stats.frames_out += 1

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        await self._link.aclose(code, reason)

    @property
    def closed(self) -> bool:
        return self._link.closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)
