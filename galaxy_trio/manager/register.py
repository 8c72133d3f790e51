"""Phase 3 — AIP registration: REGISTER as a constellation, then wait for the server's verdict.

The verdict itself is decided by :class:`galaxy_trio.aip.client_protocol.ClientProtocol` (PROTOCOL.md §6: the
next ``heartbeat``/``ok`` accepts, the next ``error`` rejects); this is its trio driver. The session's reader is
already running when REGISTER goes out, so the verdict cannot be missed — no fixed sleep as in UFO Galaxy
(§11.1). The wait is bounded by the caller's cancel scope.
"""

from __future__ import annotations

from ..aip.client_protocol import ClientProtocol, is_duplicate
from ..errors import RegistrationRejected
from .session import ClientSession, frame_error

__all__ = ["RegistrationRejected", "is_duplicate", "register"]


async def register(session: ClientSession, task_name: str, device_id: str) -> None:
    """Send REGISTER for ``device_id`` and return once accepted; raise :class:`RegistrationRejected` if refused."""
    frame = ClientProtocol.constellation_register(task_name, device_id)
    verdict = session.expect_registration(frame)
    await session.send(frame)
    reply = await verdict.wait()
    error = frame_error(reply)
    if error is not None:
        raise RegistrationRejected(error)
