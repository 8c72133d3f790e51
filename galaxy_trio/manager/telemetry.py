"""Phase 4 — telemetry: ask the server for the device's system_info and merge it into the AgentProfile.

Telemetry never fails a device: a timeout, an error reply or a "not found" answer leaves the configured profile as
it is and the device still goes IDLE (the flow document's graceful degradation). The merge follows the flow
document exactly, with one deliberate difference: capabilities keep their order (configured ones first, then the
detected features not already listed) instead of passing through an unordered set.
"""

from __future__ import annotations

from typing import Any, Final

from ..aip import new_id
from .profile import AgentProfile
from .session import ClientSession, frame_error

__all__ = ["SYSTEM_INFO_KEYS", "fetch_system_info", "merge_system_info", "usable_system_info"]

#: The eight system_info keys copied into ``metadata["system_info"]``, in the flow document's order.
SYSTEM_INFO_KEYS: Final = (
    "platform",
    "os_version",
    "cpu_count",
    "memory_total_gb",
    "hostname",
    "ip_address",
    "platform_type",
    "schema_version",
)


def usable_system_info(result: Any) -> dict[str, Any] | None:
    """The DEVICE_INFO_RESPONSE ``result`` if it is real system info; ``None`` for "not found" or junk.

    UFO answers an unknown device with ``status ok`` and ``{"error": "..."}`` as the result (PROTOCOL.md §8.4), so
    an object holding ``error`` means "no info", exactly as UFO Galaxy reads it.
    """
    if not isinstance(result, dict) or "error" in result or not result:
        return None
    return result


def merge_system_info(profile: AgentProfile, system_info: dict[str, Any]) -> None:
    """Merge ``system_info`` into ``profile`` in place (flow document, Phase 4 "Merging Logic")."""
    # 1. The device knows its OS better than the config does.
    platform = system_info.get("platform")
    if platform is not None:
        profile.os = str(platform)
    # 2. Detected features join the configured capabilities, without duplicates, configured ones first.
    features = system_info.get("supported_features")
    if isinstance(features, list):
        known = set(profile.capabilities)
        for feature in features:
            if isinstance(feature, str) and feature not in known:
                profile.capabilities.append(feature)
                known.add(feature)
    # 3. The eight system_info keys (absent ones as None, as the flow document's .get() gives them).
    profile.metadata["system_info"] = {key: system_info.get(key) for key in SYSTEM_INFO_KEYS}
    # 4–5. Custom metadata and tags are copied as they are.
    if "custom_metadata" in system_info:
        profile.metadata["custom_metadata"] = system_info["custom_metadata"]
    if "tags" in system_info:
        profile.metadata["tags"] = system_info["tags"]


async def fetch_system_info(session: ClientSession, device_id: str) -> dict[str, Any] | None:
    """Ask for ``device_id``'s system_info; ``None`` if the server has none or refuses (never raises for that).

    The wait is bounded by the caller's cancel scope; the request is forgotten if that scope gives up. The
    session's protocol builds the request (with its client id) and correlates the answer by ``request_id``.
    """
    request_id = f"device_info_{device_id}_{new_id()}"
    request, reply = session.expect_device_info(device_id, request_id)
    try:
        await session.send(request)
        frame = await reply.wait()
    finally:
        session.forget_device_info(request_id)
    if frame_error(frame) is not None:
        return None
    return usable_system_info(frame.result)
