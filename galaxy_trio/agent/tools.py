"""The tools a device agent offers, and how one COMMAND action becomes one Result.

A UFO server starts every session with a ``list_tools`` COMMAND and then asks for tools by name, so a tool is
two things: an entry in that list (MCP tool info, PROTOCOL.md §5.3, with a JSON Schema derived from the Python
signature) and a callable run with the Command's ``parameters``. :class:`ToolRegistry` holds both;
:class:`ToolExecutor` runs calls with validation and a deadline, and turns every outcome — success, a bad
parameter, an unknown tool, an exception, a timeout — into a Result, because UFO's device answering nothing when a
tool failed (§11.4) left its server waiting 6000 s.

Nothing here runs shell commands: a device that executes arbitrary commands for whoever holds the server token is
a decision for its operator, who can register such a tool explicitly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, TypeVar, overload

import msgspec
import trio

from ..aip import Command, Result, ResultStatus, ToolType
from .signature import ParameterError, ToolSignature, read_signature

__all__ = [
    "DEFAULT_NAMESPACE",
    "NO_ACTION_RESULT",
    "ParameterError",
    "Tool",
    "ToolError",
    "ToolExecutor",
    "ToolRegistry",
    "add_builtin_tools",
    "default_tools",
]

logger = logging.getLogger("galaxy_trio.agent")

DEFAULT_NAMESPACE: Final = "galaxy_trio"

#: UFO's answer to a Command with an empty ``tool_name``: a success that did nothing.
NO_ACTION_RESULT: Final = "No action taken."

_F = TypeVar("_F", bound=Callable[..., Any])


class ToolError(Exception):
    """A failure a tool reports on purpose: its message becomes the Result's ``error`` verbatim.

    Any other exception is reported as ``"<ExceptionType>: <message>"``.
    """


# --- tools ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Tool:
    """One registered tool: its MCP description and how to call it."""

    name: str
    tool_type: ToolType
    func: Callable[..., Any]
    description: str | None
    title: str | None
    signature: ToolSignature
    output_schema: dict[str, Any] | None
    meta: dict[str, Any] | None
    annotations: dict[str, Any] | None
    #: Own deadline in seconds; ``None`` uses the executor's default.
    deadline: float | None
    #: A sync function runs in a worker thread (so it cannot stall the connection); ``False`` runs it inline.
    in_thread: bool
    is_async: bool
    #: A meta tool (UFO's ``list_tools``): offered under every tool type, left out of listings unless asked for.
    is_meta: bool = False

    @property
    def key(self) -> str:
        """UFO's ``tool_key``: ``"<tool_type>::<name>"``."""
        return f"{self.tool_type.value}::{self.name}"

    def info(self, namespace: str, tool_type: ToolType | None = None) -> dict[str, Any]:
        """The MCP tool info object, keys in the order of the recorded ``list_tools`` result (§5.3).

        ``tool_type`` lists a meta tool under a type other than its own (UFO registers one under each type).
        """
        kind = tool_type or self.tool_type
        return {
            "tool_key": f"{kind.value}::{self.name}",
            "tool_name": self.name,
            "title": self.title,
            "namespace": namespace,
            "tool_type": kind.value,
            "description": self.description,
            "input_schema": self.signature.input_schema,
            "output_schema": self.output_schema,
            "meta": self.meta,
            "annotations": self.annotations,
        }

    def bind(self, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for a call; raises :class:`ParameterError` naming a bad parameter."""
        return self.signature.bind(self.name, parameters)

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Run the tool with bound arguments. Cancelling a threaded call abandons its thread (see ToolExecutor)."""
        if self.is_async:
            return await self.func(**arguments)
        if self.in_thread:
            return await trio.to_thread.run_sync(functools.partial(self.func, **arguments), abandon_on_cancel=True)
        return self.func(**arguments)


def _build_tool(
    func: Callable[..., Any],
    *,
    name: str | None,
    tool_type: ToolType | str,
    description: str | None,
    title: str | None,
    output_schema: dict[str, Any] | None,
    meta: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
    deadline: float | None,
    in_thread: bool,
    is_meta: bool = False,
) -> Tool:
    tool_name = name or getattr(func, "__name__", None)
    if not tool_name:
        raise ValueError("a tool needs a name (the function has no __name__; pass name=...)")
    if deadline is not None and not deadline > 0:
        raise ValueError(f"tool '{tool_name}': deadline must be > 0 seconds, got {deadline!r}")
    signature = read_signature(func, tool_name)
    return Tool(
        name=tool_name,
        tool_type=ToolType(tool_type),
        func=func,
        description=description if description is not None else inspect.getdoc(func),
        title=title,
        signature=signature,
        output_schema=output_schema if output_schema is not None else signature.output_schema,
        meta=meta,
        annotations=annotations,
        deadline=deadline,
        in_thread=in_thread,
        is_async=inspect.iscoroutinefunction(func),
        is_meta=is_meta,
    )


class ToolRegistry:
    """Named tools, registered with :meth:`tool` (a decorator) or :meth:`add`. Names are unique.

    A COMMAND names a tool by ``tool_name``; its ``tool_type`` is informational (UFO's server sends ``list_tools``
    as an ``action``), so lookups go by name alone.
    """

    __slots__ = ("_tools", "namespace")

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace
        self._tools: dict[str, Tool] = {}

    @overload
    def tool(self, func: _F, /) -> _F: ...

    @overload
    def tool(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        tool_type: ToolType | str = ToolType.DATA_COLLECTION,
        description: str | None = None,
        title: str | None = None,
        output_schema: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        deadline: float | None = None,
        in_thread: bool = True,
    ) -> Callable[[_F], _F]: ...

    def tool(
        self,
        func: _F | None = None,
        /,
        *,
        name: str | None = None,
        tool_type: ToolType | str = ToolType.DATA_COLLECTION,
        description: str | None = None,
        title: str | None = None,
        output_schema: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        deadline: float | None = None,
        in_thread: bool = True,
    ) -> _F | Callable[[_F], _F]:
        """Register a sync or async function taking keyword parameters; returns it unchanged.

        ``description`` defaults to the docstring. ``deadline`` overrides the executor's default for this tool.
        A sync function runs in a worker thread unless ``in_thread=False`` (only for functions that return at
        once: an inline call blocks the whole agent and cannot be interrupted by its deadline).
        """

        def register(f: _F) -> _F:
            self.add(
                f,
                name=name,
                tool_type=tool_type,
                description=description,
                title=title,
                output_schema=output_schema,
                meta=meta,
                annotations=annotations,
                deadline=deadline,
                in_thread=in_thread,
            )
            return f

        if func is not None:
            return register(func)
        return register

    def add(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        tool_type: ToolType | str = ToolType.DATA_COLLECTION,
        description: str | None = None,
        title: str | None = None,
        output_schema: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        deadline: float | None = None,
        in_thread: bool = True,
        meta_tool: bool = False,
    ) -> Tool:
        """Register ``func``. Raises ``ValueError`` for a duplicate name, ``TypeError`` for an unusable signature.

        ``meta_tool`` marks a tool about the device itself, as UFO's ``list_tools``: it answers under every tool
        type and :meth:`list_tools` leaves it out unless ``remove_meta=False``.
        """
        tool = _build_tool(
            func,
            name=name,
            tool_type=tool_type,
            description=description,
            title=title,
            output_schema=output_schema,
            meta=meta,
            annotations=annotations,
            deadline=deadline,
            in_thread=in_thread,
            is_meta=meta_tool,
        )
        if tool.name in self._tools:
            raise ValueError(f"a tool named '{tool.name}' is already registered")
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def list_tools(
        self, tool_type: ToolType | str | None = None, namespace: str | None = None, remove_meta: bool = True
    ) -> list[dict[str, Any]]:
        """MCP tool info for every tool, in registration order; UFO's ``list_tools`` parameters.

        ``tool_type`` keeps the tools of that type, ``namespace`` those of that namespace (this registry has one,
        so another name lists nothing). Meta tools are left out unless ``remove_meta`` is false; then each is
        listed under the type asked for, or once under every type (UFO registers a meta tool under each).
        """
        wanted = ToolType(tool_type) if tool_type is not None else None
        if namespace is not None and namespace != self.namespace:
            return []
        listed: list[dict[str, Any]] = []
        for tool in self._tools.values():
            if not tool.is_meta:
                if wanted is None or tool.tool_type is wanted:
                    listed.append(tool.info(self.namespace))
            elif not remove_meta:
                listed.extend(tool.info(self.namespace, kind) for kind in ((wanted,) if wanted else ToolType))
        return listed


# --- execution -----------------------------------------------------------------------------------------------


class ToolExecutor:
    """Runs Commands against a registry; every call ends in exactly one Result, never an exception.

    ``default_deadline`` bounds each call (a tool's own ``deadline`` overrides it). It is applied here, inside the
    agent, with ``trio.move_on_after``: the server never tells the device how long it will wait (UFO's waits
    6000 s), and a hung tool must not hold a COMMAND unanswered for that long. A sync tool past its deadline is
    abandoned in its worker thread (``abandon_on_cancel=True``): the answer goes out and the agent stays
    cancellable, at the price of the thread finishing in the background, its result discarded.

    With ``skip_after_failure`` (UFO's behaviour), once an action of a batch fails the later ones are not run and
    are answered ``skipped``: actions in one COMMAND usually depend on each other (click, then type).
    """

    __slots__ = ("_default_deadline", "_registry", "_skip_after_failure")

    def __init__(self, registry: ToolRegistry, *, default_deadline: float, skip_after_failure: bool = True) -> None:
        if not default_deadline > 0:
            raise ValueError(f"default_deadline must be > 0 seconds, got {default_deadline!r}")
        self._registry = registry
        self._default_deadline = default_deadline
        self._skip_after_failure = skip_after_failure

    @property
    def registry(self) -> ToolRegistry:
        return self._registry

    async def run_all(self, commands: Sequence[Command]) -> list[Result]:
        """One Result per Command, in order, ``call_id`` echoed."""
        results: list[Result] = []
        failed: str | None = None
        for command in commands:
            if failed is not None:
                results.append(
                    Result(
                        status=ResultStatus.SKIPPED,
                        error=f"skipped: an earlier action in this command failed ('{failed}')",
                        call_id=command.call_id,
                    )
                )
                continue
            result = await self.run(command)
            results.append(result)
            if self._skip_after_failure and result.status is ResultStatus.FAILURE:
                failed = command.tool_name
        return results

    async def run(self, command: Command) -> Result:
        """Run one Command. A failure Result carries a message naming what went wrong."""
        call_id = command.call_id
        name = command.tool_name
        if not name:
            return Result(status=ResultStatus.SUCCESS, result=NO_ACTION_RESULT, call_id=call_id)
        tool = self._registry.get(name)
        if tool is None:
            return _failure(f"unknown tool '{name}'", call_id)
        try:
            arguments = tool.bind(command.parameters)
        except ParameterError as exc:
            return _failure(str(exc), call_id)
        deadline = tool.deadline if tool.deadline is not None else self._default_deadline
        with trio.move_on_after(deadline) as scope:
            try:
                value = await tool.invoke(arguments)
            except ToolError as exc:
                return _failure(str(exc), call_id)
            except Exception as exc:
                if not scope.cancel_called:
                    logger.info("tool '%s' failed: %s: %s", name, type(exc).__name__, exc)
                    return _failure(f"{type(exc).__name__}: {exc}", call_id)
                # The tool turned our deadline's cancellation into an error of its own: report the timeout.
            else:
                return self._success(name, value, call_id)
        logger.warning("tool '%s' timed out after %g s", name, deadline)
        return _failure(f"tool '{name}' timed out after {deadline:g} s", call_id)

    def _success(self, name: str, value: Any, call_id: str | None) -> Result:
        # to_builtins both proves the value can go on the wire (a bad one would otherwise fail the whole
        # COMMAND_RESULTS at send time) and normalises tuples, sets, dataclasses, datetimes to JSON shapes.
        try:
            data = msgspec.to_builtins(value, str_keys=True)
        except Exception as exc:  # TypeError, ValueError, RecursionError (a self-referencing value)…
            return _failure(f"tool '{name}' returned a value that cannot be sent as JSON: {exc}", call_id)
        return Result(status=ResultStatus.SUCCESS, result=data, namespace=self._registry.namespace, call_id=call_id)


def _failure(error: str, call_id: str | None) -> Result:
    return Result(status=ResultStatus.FAILURE, error=error, call_id=call_id)


# --- built-in tools ------------------------------------------------------------------------------------------


def add_builtin_tools(registry: ToolRegistry, system_info: Callable[[], dict[str, Any]]) -> None:
    """Register ``list_tools``, ``get_system_info`` and ``echo``; all read-only and instant, so they run inline.

    ``list_tools`` answers the COMMAND every UFO session starts with, with the parameters of UFO's meta tool
    (``tool_type``, ``namespace``, ``remove_meta``, all optional); as there, it answers under every tool type
    and is not in its own listing unless ``remove_meta`` is false. ``get_system_info`` and ``echo`` are
    ``action`` tools so that they appear in that list (UFO asks for ``tool_type: action``).
    """

    def list_tools(
        tool_type: Annotated[
            Literal["data_collection", "action"] | None, "Only the tools of this type (all types when null)."
        ] = None,
        namespace: Annotated[str | None, "Only the tools of this namespace (all when null)."] = None,
        remove_meta: Annotated[bool, "Leave meta tools such as list_tools itself out of the list."] = True,
    ) -> list[dict[str, Any]]:
        """Get the available tools of this device as MCP tool info objects, optionally of one type or namespace."""
        return registry.list_tools(tool_type, namespace, remove_meta)

    def get_system_info() -> dict[str, Any]:
        """Current system information of this device (platform, OS version, CPUs, memory, hostname, address)."""
        return system_info()

    def echo(text: Annotated[str, "The text to send back."]) -> str:
        """Return the given text unchanged; checks that the device executes commands."""
        return text

    registry.add(
        list_tools,
        tool_type=ToolType.DATA_COLLECTION,
        in_thread=False,
        annotations={"readOnlyHint": True},
        meta_tool=True,
    )
    registry.add(get_system_info, tool_type=ToolType.ACTION, in_thread=False, annotations={"readOnlyHint": True})
    registry.add(echo, tool_type=ToolType.ACTION, in_thread=False, annotations={"readOnlyHint": True})


def default_tools(system_info: Callable[[], dict[str, Any]], namespace: str = DEFAULT_NAMESPACE) -> ToolRegistry:
    """A registry holding only the built-in tools."""
    registry = ToolRegistry(namespace)
    add_builtin_tools(registry, system_info)
    return registry
