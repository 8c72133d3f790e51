"""The default session driver: run the one tool a request names, without any LLM.

UFO's server puts an LLM planner between the task text and the tool calls. galaxy_trio's server keeps that seam
(:data:`~galaxy_trio.server.sessions.SessionDriver`: plug a planner in as ``serve_aip(driver=...)``) and ships a
deterministic driver, so a fleet can be driven end to end with no model at all.

Request syntax understood by :func:`default_driver` (the TASK's ``request`` text):

- a JSON object ``{"tool_name": "<tool>", "parameters": {...}}``; ``parameters`` may be omitted or null,
  e.g. ``{"tool_name": "execute_command", "parameters": {"command": "uname -s"}}``;
- a bare tool name, run without parameters, e.g. ``get_system_info``.

The session goes as UFO's does: ``list_tools`` first, then the tool, then the final empty COMMAND (sent by the
server). The tool must be among those ``list_tools`` returned, or the task fails naming the tool and listing the
available ones — except ``list_tools`` itself: on a UFO device it is a meta tool, offered under every tool type
and left out of its own listing, so a task may always run it, with UFO's parameters (``tool_type``,
``namespace``, ``remove_meta``), e.g. ``{"tool_name": "list_tools", "parameters": {"tool_type": "action"}}``.
A tool that fails fails the task with the tool's error. On success the TASK_END result has UFO's shape, a list
of ``{"request", "result"}``: ``[{"request": <request>, "result": <the tool's result>}]``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from ..aip import ResultStatus, ToolType
from .rules import shown
from .sessions import SessionHandle, TaskFailed

__all__ = ["ToolCall", "default_driver", "parse_tool_request"]

#: The meta tool every UFO device answers (under either tool type) without listing it.
LIST_TOOLS: Final = "list_tools"
_BARE_TOOL_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_TOOL_TYPES: Final = {t.value: t for t in ToolType}


class ToolCall(msgspec.Struct, forbid_unknown_fields=True):
    """A request in the default driver's JSON form."""

    tool_name: str
    parameters: dict[str, Any] | None = None


_tool_call_decoder: Final = msgspec.json.Decoder(ToolCall)


def parse_tool_request(request: str) -> ToolCall:
    """Read a request as a JSON tool call or a bare tool name; :class:`TaskFailed` says what is wrong otherwise."""
    text = request.strip()
    if text.startswith("{"):
        try:
            call = _tool_call_decoder.decode(text)
        except msgspec.DecodeError as exc:
            raise TaskFailed(f"The request is not a valid tool call: {shown(str(exc))}") from None
        if not call.tool_name:
            raise TaskFailed("The request is not a valid tool call: tool_name is empty")
        return call
    if _BARE_TOOL_NAME.fullmatch(text):
        return ToolCall(tool_name=text)
    raise TaskFailed(
        f"The default driver cannot interpret the request {shown(text)!r}: send a tool call as JSON, "
        '{"tool_name": "<tool>", "parameters": {...}}, or a bare tool name'
    )


async def default_driver(session: SessionHandle) -> list[dict[str, Any]]:
    """List the device's tools, run the one the request names, return ``[{"request", "result"}]``."""
    tools = await session.list_tools()
    call = parse_tool_request(session.request)
    by_name = {tool.get("tool_name"): tool for tool in tools}
    tool = by_name.get(call.tool_name)
    if tool is None and call.tool_name == LIST_TOOLS:
        tool = {"tool_name": LIST_TOOLS, "tool_type": ToolType.ACTION.value}  # as UFO's server sends it
    if tool is None:
        names = sorted(str(name) for name in by_name if name is not None)
        available = ", ".join(names) if names else "none"
        raise TaskFailed(
            f"Unknown tool '{shown(call.tool_name)}' on device '{shown(session.device_id)}'; "
            f"available tools: {available}"
        )
    tool_type = _TOOL_TYPES.get(str(tool.get("tool_type")), ToolType.ACTION)
    result = await session.call_tool(call.tool_name, call.parameters, tool_type)
    if result.status is not ResultStatus.SUCCESS:
        raise TaskFailed(
            f"Tool '{shown(call.tool_name)}' failed on device '{shown(session.device_id)}': "
            f"{result.error or result.status.value}"
        )
    return [{"request": session.request, "result": result.result}]
