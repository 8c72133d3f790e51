"""The AIP server's own policy: how long it waits for peers, and how much it lets one device queue.

These are deadlines the server applies to itself (with ``trio.fail_after`` / ``move_on_after`` at the one place
each one matters), not timeouts threaded through call chains. UFO's server has almost none of them: it waits 6000 s
for a device that never answers a COMMAND and never closes a socket whose first frame is garbage (PROTOCOL.md §11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["ServerSettings"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Deadlines and limits of one AIP server. Every duration is in seconds.

    - ``handshake_deadline``: a TCP peer must finish the TLS handshake (on ``wss://``), then the HTTP upgrade,
      each within this time.
    - ``registration_deadline``: after the upgrade, the first frame (a REGISTER) must arrive within this time, or
      the server answers with an ERROR frame and closes with 1008. UFO Galaxy sends it ~50 ms after connecting.
    - ``command_deadline``: how long a session waits for the COMMAND_RESULTS of one COMMAND before it fails the
      task. UFO waits 6000 s; Galaxy itself gives up on a whole task after 300 s.
    - ``cancel_grace``: how long the server may spend telling peers that a session was cancelled (TASK_END
      ``failed``) and sending a last ERROR frame before a close. Cleanup is bounded, never a hang.
    - ``send_deadline``: how long any one frame to a peer (an answer, a COMMAND, a TASK_END) may take to leave. A
      peer that stops reading fills its TCP window and would otherwise hold the sender, a session and the
      device's queue behind it, forever; past the deadline that peer's link is closed with 1008 ("not reading")
      and the other side of a session is still told.
    - ``ping_interval`` / ``ping_timeout``: WebSocket keepalive, as UFO's server does (uvicorn: 20 s / 20 s). A
      peer that sent nothing for ``ping_interval`` is pinged; if nothing (a pong or any frame) comes within
      ``ping_timeout``, it is closed with 1011, so a vanished peer never stays registered (:mod:`.keepalive`).
      ``ping_interval=None`` turns keepalive off.
    - ``max_client_id_length``: longer ids are refused at REGISTER (ids are echoed in error texts and logs).
    - ``max_tasks_per_device``: running plus queued sessions one device may have; further TASKs get an error.
    - ``frame_rate`` / ``frame_burst``: each connection's frame budget, a token bucket
      (:class:`~galaxy_trio.server.rules.FrameBudget`) holding ``frame_burst`` frames and refilled at
      ``frame_rate`` frames per second. A peer that sends a frame with the bucket empty is told so and closed with
      1008 ("frame rate exceeded"), so one flooding client costs the server a bounded amount of work and never
      delays the others. Real clients send a heartbeat every few seconds and a handful of frames per task; the
      defaults leave them orders of magnitude of room.
    """

    handshake_deadline: float = 10.0
    registration_deadline: float = 10.0
    command_deadline: float = 300.0
    cancel_grace: float = 2.0
    send_deadline: float = 20.0
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    max_client_id_length: int = 256
    max_tasks_per_device: int = 100
    frame_rate: float = 200.0
    frame_burst: int = 2000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "ping_interval":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value) or value <= 0:
                raise ValueError(f"ServerSettings.{f.name} must be a positive number, got {value!r}")
        if not isinstance(self.frame_burst, int):
            raise ValueError(f"ServerSettings.frame_burst must be a whole number of frames, got {self.frame_burst!r}")
