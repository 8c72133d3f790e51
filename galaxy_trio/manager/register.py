"""Phase 3 — AIP registration: REGISTER as a constellation, then wait for the server's verdict.

AIP has no REGISTER-ack: the next ``heartbeat``/``ok`` frame means accepted and the next ``error`` frame means
rejected (PROTOCOL.md §6). The session's reader is already running when REGISTER goes out, so the verdict cannot
be missed — no fixed sleep as in UFO Galaxy (§11.1). The wait is bounded by the caller's cancel scope.
"""

from __future__ import annotations

from ..aip import builders
from ..errors import GalaxyTrioError
from .session import ClientSession, frame_error

__all__ = ["RegistrationRejected", "is_duplicate", "register"]

_RETRYABLE_PREFIX = "Target device "
_RETRYABLE_SUFFIX = " is not connected"


class RegistrationRejected(GalaxyTrioError):
    """The server refused the REGISTER. ``retryable`` is true only when waiting can help (target not connected)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"registration rejected: {reason}")
        self.reason = reason
        # The one rejection that time fixes: the device agent has not connected yet (or is reconnecting).
        # A duplicate client_id or anything else is permanent until an operator acts.
        self.retryable = reason.startswith(_RETRYABLE_PREFIX) and reason.endswith(_RETRYABLE_SUFFIX)


def is_duplicate(reason: str) -> bool:
    """Whether a rejection says the client id is already registered (UFO's text, PROTOCOL.md §8.9)."""
    return "is already registered" in reason


async def register(session: ClientSession, task_name: str, device_id: str) -> None:
    """Send REGISTER for ``device_id`` and return once accepted; raise :class:`RegistrationRejected` if refused."""
    verdict = session.expect_registration()
    await session.send(builders.constellation_register(task_name, device_id))
    frame = await verdict.wait()
    error = frame_error(frame)
    if error is not None:
        raise RegistrationRejected(error)
