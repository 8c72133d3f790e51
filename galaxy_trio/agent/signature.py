"""A tool's Python signature as the server sees it: a JSON Schema for ``list_tools`` and a parameter check.

The LLM behind a UFO server picks tools and fills their parameters from ``input_schema``, so the schema must say
what the function really takes; and a wrong call must come back as a failure that names the parameter, not as a
``TypeError`` from deep inside the tool. Both come from one reading of the signature, done once at registration.

Schemas follow the shape of the recorded UFO tools (pydantic's): ``properties`` / ``required`` / ``type``, each
property with ``title`` and sorted keys, ``anyOf`` for unions, ``default`` when there is one.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

from ..aip import json_error

__all__ = ["ParameterError", "ToolSignature", "read_signature"]

_JSON_TYPES: Final[dict[Any, str]] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
    type(None): "null",
}

_Check = Callable[[Any], bool]


class ParameterError(ValueError):
    """Parameters that do not fit the signature; the message names the tool and the parameter."""


def json_type_of(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    for python_type, name in _JSON_TYPES.items():
        if isinstance(value, python_type):
            return name
    return type(value).__name__


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    name: str
    required: bool
    check: _Check
    accepted: str


@dataclasses.dataclass(frozen=True, slots=True)
class ToolSignature:
    """What :func:`read_signature` learned: the schemas and how to check a call's parameters."""

    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    params: tuple[_Param, ...]
    accepts_extra: bool

    def bind(self, tool_name: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for the call. Raises :class:`ParameterError` for an unknown, missing or wrong-typed one.

        Only the outer JSON type is checked (a ``list[int]`` must be an array; its items are the tool's
        business): enough to name a wrong parameter without re-implementing a schema validator.
        """
        given = dict(parameters) if parameters else {}
        if not self.accepts_extra:
            known = {param.name for param in self.params}
            unknown = [name for name in given if name not in known]
            if unknown:
                raise ParameterError(f"tool '{tool_name}' got unexpected {_plural('parameter', unknown)}")
        missing = [param.name for param in self.params if param.required and param.name not in given]
        if missing:
            raise ParameterError(f"tool '{tool_name}' is missing required {_plural('parameter', missing)}")
        for param in self.params:
            if param.name in given and not param.check(given[param.name]):
                raise ParameterError(
                    f"tool '{tool_name}' parameter '{param.name}' must be {param.accepted}, "
                    f"got {json_type_of(given[param.name])}"
                )
        return given


def _plural(noun: str, names: Sequence[str]) -> str:
    return f"{noun}{'s' if len(names) > 1 else ''} " + ", ".join(repr(name) for name in names)


def read_signature(func: Callable[..., Any], tool_name: str) -> ToolSignature:
    """Read ``func``'s keyword parameters and return annotation. Raises ``TypeError`` if it cannot be a tool."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot resolve the type hints of tool '{tool_name}': {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    params: list[_Param] = []
    accepts_extra = False
    for param in inspect.signature(func).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL or (
            param.kind is inspect.Parameter.POSITIONAL_ONLY and param.default is inspect.Parameter.empty
        ):
            raise TypeError(f"tool '{tool_name}': parameter '{param.name}' cannot be passed by keyword")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            continue  # has a default and can never be given by name: not part of the tool's interface
        schema, check, accepted = _schema(hints.get(param.name, inspect.Parameter.empty))
        prop = {**schema, "title": param.name.replace("_", " ").title()}
        is_required = param.default is inspect.Parameter.empty
        if is_required:
            required.append(param.name)
        else:
            shown, value = _json_default(param.default)
            if shown:
                prop["default"] = value
        properties[param.name] = dict(sorted(prop.items()))
        params.append(_Param(param.name, is_required, check, accepted))
    input_schema: dict[str, Any] = {"properties": properties}
    if accepts_extra:
        input_schema["additionalProperties"] = True
    if required:
        input_schema["required"] = required
    input_schema["type"] = "object"
    return ToolSignature(
        input_schema=dict(sorted(input_schema.items())),
        output_schema=_output_schema(hints.get("return", inspect.Parameter.empty)),
        params=tuple(params),
        accepts_extra=accepts_extra,
    )


def _output_schema(annotation: Any) -> dict[str, Any] | None:
    """A schema only for tools returning an object: MCP requires ``outputSchema`` to describe an object."""
    schema, _, _ = _schema(annotation)
    if schema.get("type") != "object":
        return None
    return dict(sorted({"additionalProperties": True, **schema}.items()))


def _json_default(value: Any) -> tuple[bool, Any]:
    """Whether a default can be shown in the schema (it must be JSON), and its JSON form."""
    if isinstance(value, enum.Enum):
        value = value.value
    if json_error(value) is not None:
        return False, None
    return True, value


def _schema(annotation: Any) -> tuple[dict[str, Any], _Check, str]:
    """JSON Schema, a check of the outer JSON type, and the accepted type in words, for one annotation."""
    description: str | None = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        description = next((extra for extra in extras if isinstance(extra, str)), None)
    schema, check, accepted = _plain_schema(annotation)
    if description is not None:
        schema = {**schema, "description": description}
    return schema, check, accepted


def _accept_any(value: Any) -> bool:
    return True


def _plain_schema(annotation: Any) -> tuple[dict[str, Any], _Check, str]:
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return {}, _accept_any, "any value"
    if annotation is None:
        annotation = type(None)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_schema(arg) for arg in typing.get_args(annotation)]
        checks = [check for _, check, _ in parts]
        return (
            {"anyOf": [schema for schema, _, _ in parts]},
            lambda v: any(check(v) for check in checks),
            " or ".join(accepted for _, _, accepted in parts),
        )
    if origin is Literal:
        return _literal_schema(typing.get_args(annotation))
    base = origin or annotation
    kind = _JSON_TYPES.get(base)
    if kind is None:
        if isinstance(base, type) and issubclass(base, Mapping):
            kind = "object"
        elif isinstance(base, type) and issubclass(base, Sequence) and not issubclass(base, str | bytes):
            kind = "array"
        else:
            return {}, _accept_any, "any value"
    schema: dict[str, Any] = {"type": kind}
    args = typing.get_args(annotation)
    if kind == "array" and len(args) == 1:
        schema["items"] = _schema(args[0])[0]
    elif kind == "object" and len(args) == 2:
        schema["additionalProperties"] = _schema(args[1])[0] or True
    return schema, _TYPE_CHECKS[kind], kind


def _literal_schema(values: tuple[Any, ...]) -> tuple[dict[str, Any], _Check, str]:
    schema: dict[str, Any] = {"enum": list(values)}
    kinds = {json_type_of(value) for value in values}
    if len(kinds) == 1:
        schema["type"] = kinds.pop()
    # Compare types too: in JSON, 1, 1.0 and true are different values even though Python finds them equal.
    allowed = {(type(value), value) for value in values}

    def check(value: Any) -> bool:
        try:
            return (type(value), value) in allowed
        except TypeError:  # an unhashable value (array, object) is never a literal
            return False

    return schema, check, "one of " + ", ".join(repr(value) for value in values)


_TYPE_CHECKS: Final[dict[str, _Check]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}
