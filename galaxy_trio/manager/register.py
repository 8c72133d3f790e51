"""Phase 3 — AIP registration: REGISTER as a constellation, then wait for the server's verdict.

AIP has no REGISTER-ack: the next ``heartbeat``/``ok`` frame means accepted and the next ``error`` frame means
rejected (PROTOCOL.md §6). The session's reader is already running when REGISTER goes out, so the verdict cannot
be missed — no fixed sleep as in UFO Galaxy (§11.1). The wait is bounded by the caller's cancel scope.
"""

from __future__ import annotations

from ..aip import ClientType, builders
from ..aip.client_protocol import is_duplicate_rejection as is_duplicate
from ..aip.client_protocol import registration_verdict
from ..errors import RegistrationRejected
from .session import ClientSession, clip

__all__ = ["RegistrationRejected", "is_duplicate", "register"]


async def register(session: ClientSession, task_name: str, device_id: str) -> None:
    """Send REGISTER for ``device_id`` and return once accepted; raise :class:`RegistrationRejected` if refused.

    What the answer means, and whether a refusal is worth retrying, is
    :func:`~galaxy_trio.aip.client_protocol.registration_verdict`'s decision (shared with the device agent).
    """
    verdict = session.expect_registration()
    await session.send(builders.constellation_register(task_name, device_id))
    answer = registration_verdict(await verdict.wait(), ClientType.CONSTELLATION)
    if answer is not None and not answer.confirmed:
        raise RegistrationRejected(clip(answer.reason or ""), retryable=answer.retryable)
