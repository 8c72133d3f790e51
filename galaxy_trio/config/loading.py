"""The bounded YAML loader: ``devices.yaml`` in, a valid :class:`~.model.GalaxyConfig` (or every problem) out.

A bad file loads *nothing* and reports *every* problem at once, each with the file, the 1-based line (and, for
YAML syntax, the column), the device and the dotted field: fixing a config one error per run is what makes people
hate config files.

How: PyYAML's parser (its C one when available) gives events, which the walker composes into nodes that keep
their positions, one device entry at a time: each entry is checked and turned into a Struct as soon as it is
complete, and its nodes are dropped, so the node tree of a large file never exists whole (libyaml's own composer
builds it whole, and the garbage collector then rescans it as it grows: ~4x slower on 25,000 devices, and 3x the
memory). The walker checks only the *shape* (mappings, lists, known keys, required keys, unique ids) and hands
the values to the Structs, whose ``__post_init__`` applies the rules of :mod:`.rules` (the one validation path);
it then maps each problem back to the line of its value, adding YAML hints (a ``device_id: on`` read as a YAML
1.1 boolean is told to quote it).

Bounded: a file over :data:`MAX_CONFIG_BYTES` is refused before it is read, and anchors and aliases may expand the
document by at most :data:`MAX_ALIAS_NODES` nodes (a "billion laughs" alias bomb is refused in milliseconds,
naming the anchor). Loading changes no process-wide state (the garbage collector is left alone).

UFO Galaxy's ``devices.yaml`` loads unchanged: its top-level ``task_name``, ``heartbeat_interval``,
``reconnect_delay`` and ``max_concurrent_tasks`` are the manager settings of the same names. The same setting
given twice (``manager:`` and top level, or also in a constellation file) is an error naming both places.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from galaxy_trio.redact import url_token

from .model import STRING_SOURCE, DeviceConfig, GalaxyConfig, ManagerSettings
from .rules import (
    DEVICE_RULES,
    MANAGER_RULES,
    TOP_RULES,
    UFO_TOP_LEVEL_SETTINGS,
    ConfigError,
    ConfigProblem,
    Endpoint,
    Rule,
    duplicate_id_problem,
    field_problem,
    local_mode_problem,
    spelling_problems,
    token_env_problem,
    type_name,
)

__all__ = ["MAX_ALIAS_NODES", "MAX_CONFIG_BYTES", "RunChecks", "Setting", "load_config", "parse_config"]

#: The largest config file loaded (about 25,000 devices written out in full); larger ones are refused unread.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
#: How many nodes aliases (``*name``, merges included) may add to a document, in all.
MAX_ALIAS_NODES = 1_000_000

_YamlLoader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.1 allows these characters in a stream; anything else means a binary or corrupted file.
_NON_YAML_CHAR = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class RunChecks(NamedTuple):
    """What running a config needs beyond a valid file; ``load_config(path, run=RunChecks(...))`` checks it too.

    ``local``: local mode was asked for on the command line (``local: true`` in the file counts as well). In local
    mode every ``server_url`` must be servable here (loopback, ``ws://``, path ``/ws``, one spelling per address
    and port); otherwise every ``token_env`` must be set in ``environ``.
    """

    local: bool = False
    environ: Mapping[str, str] = os.environ


class Setting(NamedTuple):
    """A manager setting given outside the devices file (a constellation file): its value and where it was."""

    value: Any
    file: str
    line: int | None
    field: str


def load_config(
    path: str | os.PathLike[str],
    *,
    run: RunChecks | None = None,
    settings: Mapping[str, Setting] | None = None,
    max_bytes: int = MAX_CONFIG_BYTES,
) -> GalaxyConfig:
    """Load and validate a ``devices.yaml``; relative ``ca_file`` paths are taken from the file's directory.

    Raises :class:`ConfigError` listing every problem (missing, unreadable or too large file, not UTF-8 text,
    YAML syntax, wrong types, unknown keys, invalid values); nothing is loaded from a bad file. With ``run``, also
    what running it needs (see :class:`RunChecks`); ``settings`` are manager settings from elsewhere (by name).
    """
    source = os.fspath(path)
    text = read_text(source, max_bytes)
    base_dir = Path(source).absolute().parent
    return parse_config(text, source=source, base_dir=base_dir, run=run, settings=settings, max_bytes=max_bytes)


def read_text(source: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The text of a config file, refused unread when over ``max_bytes``; problems as :class:`ConfigError`."""
    try:
        with open(source, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                raise ConfigError([ConfigProblem(message=_over_limit(f"{size:,} bytes, ", max_bytes), file=source)])
            data = file.read(max_bytes + 1)
            # A pipe (--config <(...), /dev/stdin) has no size: its bytes count. Cut at max_bytes + 1, multi-byte
            # text could decode to max_bytes characters or fewer and load truncated.
            if len(data) > max_bytes:
                raise ConfigError([ConfigProblem(message=_over_limit("", max_bytes), file=source)])
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(message="no such file", file=source)]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([ConfigProblem(message=f"cannot read file: {reason}", file=source)]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); is this a binary file?"
        raise ConfigError([ConfigProblem(message=message, file=source, line=line)]) from None


def _over_limit(size: str, max_bytes: int) -> str:
    return (
        f"file is {size}over the {max_bytes:,}-byte limit for a config; split the fleet over several managers"
        " (fleet mode), or raise max_bytes when loading it from code"
    )


def parse_config(
    text: str,
    *,
    source: str = STRING_SOURCE,
    base_dir: str | os.PathLike[str] | None = None,
    run: RunChecks | None = None,
    settings: Mapping[str, Setting] | None = None,
    max_bytes: int = MAX_CONFIG_BYTES,
) -> GalaxyConfig:
    """Validate YAML ``text`` (``source`` names it in problems); ``run`` and ``settings`` as for :func:`load_config`.

    A relative ``ca_file`` is joined to ``base_dir`` and must exist there; with ``base_dir=None`` it is kept as
    written (relative to the working directory) and not checked.
    """
    loader = ConfigWalker(source, None if base_dir is None else Path(base_dir))
    loader.external = dict(settings or {})
    loader.run = run
    return loader.load(text, max_bytes)


# --- YAML: positions, bounds, a faster resolver ------------------------------------------------------------------


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _yaml_error(exc: yaml.YAMLError, text: str | None = None) -> ConfigProblem:
    """The problem a YAML error stands for, at the position that matters (never quoting the source: tokens)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigProblem(message=f"invalid YAML: {type(exc).__name__}")
    mark = exc.problem_mark or exc.context_mark
    text_parts = "; ".join(part for part in (exc.context, exc.problem) if part)
    message = f"invalid YAML: {text_parts or 'syntax error'}"
    if exc.context == "while scanning a quoted scalar" and exc.context_mark is not None:
        # libyaml and PyYAML both report an unclosed quote at the end of the stream: point at the quote instead.
        mark = exc.context_mark
        message = "invalid YAML: this quoted string is never closed (its closing quote is missing)"
    if mark is None:
        return ConfigProblem(message=message)
    line, column = int(mark.line), int(mark.column)
    if text is None:  # a constructor's error (an unknown !tag...): the line is enough
        return ConfigProblem(message=message, line=line + 1)
    lines = text.splitlines()
    if "tab" in (exc.problem or "") or _char_at(lines, line, column) == "\t":
        message = (
            f"invalid YAML: a tab character at column {column + 1}; YAML indents with spaces only: replace the tab"
            " with spaces"
        )
    # libyaml puts end-of-stream errors one line past the end.
    return ConfigProblem(message=message, line=min(line + 1, max(len(lines), 1)), column=column + 1)


def _char_at(lines: list[str], line: int, column: int) -> str:
    return lines[line][column] if line < len(lines) and column < len(lines[line]) else ""


def _alias_problem(text: str, loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader]) -> ConfigProblem | None:
    """Refuse a document whose aliases expand past :data:`MAX_ALIAS_NODES` nodes, naming the anchor.

    Composing shares an anchored node between its aliases, so a small file can stand for billions of nodes that
    anything walking or encoding it (metadata is sent to devices as JSON) would expand. The expanded size is
    counted here from the parser's events, in one linear pass, before anything is built.
    """
    sizes: dict[str, int] = {}
    stack: list[list[Any]] = []  # [nodes so far, anchor] per open collection
    expanded = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, CollectionStartEvent):
                stack.append([1, event.anchor])
                continue
            if isinstance(event, CollectionEndEvent):
                count, anchor = stack.pop()
            elif isinstance(event, AliasEvent):
                count, anchor = sizes.get(event.anchor or "", 1), None
                expanded += count
                if expanded > MAX_ALIAS_NODES:
                    mark = event.start_mark
                    message = (
                        f"the alias *{event.anchor} repeats the {count:,} nodes of anchor &{event.anchor}, and aliases"
                        f" now add over {MAX_ALIAS_NODES:,} nodes to this document; refusing it (an alias bomb?)"
                    )
                    if mark is None:
                        return ConfigProblem(message=message)
                    return ConfigProblem(message=message, line=int(mark.line) + 1, column=int(mark.column) + 1)
            elif isinstance(event, NodeEvent):  # a scalar
                count, anchor = 1, event.anchor
            else:
                continue
            if anchor:
                sizes[anchor] = count
            if stack:
                stack[-1][0] += count
    except yaml.YAMLError:
        return None  # composing reports it, with its position
    return None


_TAG_CACHE_SIZE = 2048
_base_resolve: Callable[..., str] = BaseResolver.resolve


def _fast_resolve(self: Any, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
    """PyYAML's tag resolution with a per-load cache for plain scalars (keys repeat in every device)."""
    if kind is ScalarNode and implicit[0]:
        cache: dict[str, str] = self.galaxy_tag_cache
        tag = cache.get(value)
        if tag is None:
            tag = _base_resolve(self, kind, value, implicit)
            if len(cache) < _TAG_CACHE_SIZE:  # keys and common values come first; unique values need no cache
                cache[value] = tag
        return tag
    return _base_resolve(self, kind, value, implicit)


def _no_path_resolver(self: Any, *args: Any) -> None:
    """Safe loaders have no path resolvers: skip PyYAML's per-node bookkeeping for them."""


_FAST_LOADERS: dict[type, type] = {}


def _fast_loader(base: type[yaml.SafeLoader] | type[yaml.CSafeLoader]) -> Any:
    fast = _FAST_LOADERS.get(base)
    if fast is None:
        attributes: dict[str, Any] = {
            "resolve": _fast_resolve,
            "descend_resolver": _no_path_resolver,
            "ascend_resolver": _no_path_resolver,
        }
        fast = _FAST_LOADERS[base] = type(f"Galaxy{base.__name__}", (base,), attributes)
    return fast


# --- the walk ---------------------------------------------------------------------------------------------------

_INVALID: Any = object()
_DEFAULT_MANAGER = ManagerSettings()


class _Given(NamedTuple):
    """One manager setting as found: value, and where (file, line, dotted field) for problems."""

    value: Any
    file: str
    line: int | None
    field: str
    node: Node | None = None


class ConfigWalker:
    """One load: walks the composed node tree, collecting problems; builds the Structs only when there are none."""

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[ConfigProblem] = []
        self.yaml: Any = None
        self.external: dict[str, Setting] = {}
        self.run: RunChecks | None = None
        #: per valid device, the line of each of its fields (for the run checks; nodes are not kept)
        self.device_lines: list[dict[str, int]] = []
        self.streamed: tuple[Node | None, list[DeviceConfig | None]] = (None, [])

    def problem(self, line: int | None, message: str, *, field: str | None = None, device: str | None = None) -> None:
        self.problems.append(ConfigProblem(message=message, file=self.source, line=line, device=device, field=field))

    def fail(self) -> ConfigError:
        return ConfigError(sorted(self.problems, key=lambda p: (p.file != self.source, p.line or 0)))

    def prepare(self, text: str, max_bytes: int) -> None:
        """Refuse what is out of bounds or not text, then set up the YAML loader for ``text``."""
        if len(text) > max_bytes:
            self.problem(None, f"text is over the {max_bytes:,}-character limit for a config")
            raise self.fail()
        bad_char = _NON_YAML_CHAR.search(text)
        if bad_char is not None:
            line = text.count("\n", 0, bad_char.start()) + 1
            message = f"contains the non-text character U+{ord(bad_char.group()):04X}; is this a binary file?"
            self.problem(line, message)
            raise self.fail()
        if "*" in text and "&" in text:  # aliases need anchors: only then can the document expand
            bomb = _alias_problem(text, _YamlLoader)
            if bomb is not None:
                self.problems.append(msgspec.structs.replace(bomb, file=self.source))
                raise self.fail()
        self.yaml = _fast_loader(_YamlLoader)(text)
        self.yaml.galaxy_tag_cache = {}
        self.yaml.anchors = {}

    def syntax_error(self, exc: yaml.YAMLError, text: str) -> ConfigError:
        """A YAML syntax error is the only problem reported: what was walked before it may be misread."""
        self.problems = [msgspec.structs.replace(_yaml_error(exc, text), file=self.source)]
        return self.fail()

    def compose(self, text: str, max_bytes: int) -> Node | None:
        """The whole node tree of ``text`` (for small files: the constellation); see :meth:`prepare`."""
        self.prepare(text, max_bytes)
        try:
            node: Node | None = self.yaml.get_single_node()
        except yaml.YAMLError as exc:
            self.yaml.dispose()
            raise self.syntax_error(exc, text) from None
        return node

    def load(self, text: str, max_bytes: int) -> GalaxyConfig:
        self.prepare(text, max_bytes)
        try:
            root = self.stream_document()
            config = self.top(root)
        except yaml.YAMLError as exc:
            raise self.syntax_error(exc, text) from None
        finally:
            self.yaml.dispose()
        if config is not None and self.run is not None:
            self.check_runnable(config)
        if config is None or self.problems:
            raise self.fail()
        return config

    # -- streaming: one device at a time --

    def stream_document(self) -> Node | None:
        """The document's node tree, except the devices: each is walked as soon as it is composed, then dropped."""
        get = self.yaml.get_event
        get()  # stream start
        document = get()
        if isinstance(document, StreamEndEvent):
            return None
        first = get()
        root = self.stream_top_mapping(first) if isinstance(first, MappingStartEvent) else self.node_from(first)
        get()  # document end
        event = get()
        if not isinstance(event, StreamEndEvent):
            raise ComposerError(
                "expected a single document in the stream",
                document.start_mark,
                "but found another document",
                event.start_mark,
            )
        return root

    def stream_top_mapping(self, start: MappingStartEvent) -> MappingNode:
        node: MappingNode = self.collection_node(MappingNode, start)
        get = self.yaml.get_event
        while not isinstance(event := get(), MappingEndEvent):
            key = self.node_from(event)
            event = get()
            streamable = isinstance(key, ScalarNode) and key.tag == _STR_TAG and key.value == "devices"
            value: Node
            if streamable and isinstance(event, SequenceStartEvent) and event.anchor is None:
                value = self.stream_devices(event)
            else:
                value = self.node_from(event)
            node.value.append((key, value))
        node.end_mark = event.end_mark
        return node

    def stream_devices(self, start: SequenceStartEvent) -> SequenceNode:
        """The ``devices`` list, walked entry by entry; the node returned stands for it (its entries are not kept)."""
        node: SequenceNode = self.collection_node(SequenceNode, start)
        get = self.yaml.get_event
        self.device_lines = []
        results: list[DeviceConfig | None] = []
        first_seen: dict[str, tuple[int, int]] = {}
        while not isinstance(event := get(), SequenceEndEvent):
            results.append(self.device(len(results), self.node_from(event), first_seen))
            self.yaml.constructed_objects.clear()  # the constructor's memo would keep every device's nodes alive
        node.end_mark = event.end_mark
        self.streamed = (node, results)
        return node

    def node_from(self, event: Any) -> Node:
        """The node that starts with ``event``, composed as PyYAML's composer does (anchors, aliases, tags), leaner."""
        anchors: dict[str, Node] = self.yaml.anchors
        kind = event.__class__
        if kind is AliasEvent:
            found = anchors.get(event.anchor)
            if found is None:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            return found
        anchor = event.anchor
        if anchor is not None and anchor in anchors:
            message = f"found duplicate anchor {anchor!r}; first occurrence"
            raise ComposerError(message, anchors[anchor].start_mark, "second occurrence", event.start_mark)
        node: Node
        if kind is ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                tag = self.yaml.resolve(ScalarNode, event.value, event.implicit)
            node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            if anchor is not None:
                anchors[anchor] = node
            return node
        get = self.yaml.get_event
        if kind is SequenceStartEvent:
            node = self.collection_node(SequenceNode, event)
            items = node.value
            while not isinstance(child := get(), SequenceEndEvent):
                items.append(self.node_from(child))
        else:
            node = self.collection_node(MappingNode, event)
            pairs = node.value
            while not isinstance(child := get(), MappingEndEvent):
                key = self.node_from(child)
                pairs.append((key, self.node_from(get())))
        node.end_mark = child.end_mark
        return node

    def collection_node(self, kind: type[MappingNode] | type[SequenceNode], start: Any) -> Any:
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.yaml.resolve(kind, None, start.implicit)
        node = kind(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if start.anchor is not None:
            self.yaml.anchors[start.anchor] = node
        return node

    # -- sections --

    def top(self, root: Node | None) -> GalaxyConfig | None:
        if root is None or (_is_null(root) and not root.value):  # nothing, or only "---"
            self.problem(None, "file is empty; expected a mapping with a 'devices' list")
            return None
        fields = self.mapping_fields(root, "top level", TOP_RULES, None, None)
        if fields is None:
            return None
        local = self.value(fields, "local", TOP_RULES["local"], "local", None, None)
        if local is not None:  # GalaxyConfig checks it too, but is built only when every device is valid
            message = field_problem(TOP_RULES["local"], local)
            if message is not None:
                self.problem(_line(fields["local"][1]), message, field="local")
        manager = self.manager(fields)
        devices = self.devices(fields.get("devices"), root)
        if self.problems or devices is None or manager is None:
            return None
        return GalaxyConfig(devices=devices, manager=manager, local=bool(local), source=self.source)

    def manager(self, top: dict[str, tuple[Node, Node]]) -> ManagerSettings | None:
        """The settings from ``manager:``, UFO's top-level keys and ``self.external``; each at most once."""
        given: dict[str, _Given] = {}
        entry = top.get("manager")
        if entry is not None and not _is_null(entry[1]):
            fields = self.mapping_fields(entry[1], "manager", MANAGER_RULES, "manager", None)
            if fields is None:
                return None
            for name, (_, node) in fields.items():
                value = self.construct_value(node, MANAGER_RULES[name], f"manager.{name}", None)
                self.add_setting(given, name, _Given(value, self.source, _line(node), f"manager.{name}", node))
        for name in UFO_TOP_LEVEL_SETTINGS:
            if name in top:
                node = top[name][1]
                value = self.construct_value(node, MANAGER_RULES[name], name, None)
                self.add_setting(given, name, _Given(value, self.source, _line(node), name, node))
        for name, setting in self.external.items():
            self.add_setting(given, name, _Given(setting.value, setting.file, setting.line, setting.field))
        if any(item.value is _INVALID for item in given.values()):
            return None
        if not given:
            return _DEFAULT_MANAGER
        values = {name: item.value for name, item in given.items()}
        delay: Any = values.get("reconnect_delay")
        if "backoff_cap" not in values and field_problem(MANAGER_RULES["reconnect_delay"], delay) is None:
            if delay > _DEFAULT_MANAGER.backoff_cap:  # UFO's reconnect_delay may exceed our default cap
                values["backoff_cap"] = delay
        try:
            return ManagerSettings(**values)
        except ConfigError as exc:
            default_line = _line(entry[0]) if entry is not None else None
            for problem in exc.problems:
                self.place_setting_problem(problem, given, default_line)
            return None

    def place_setting_problem(self, problem: ConfigProblem, given: dict[str, _Given], default_line: int | None) -> None:
        """A problem of ManagerSettings, at the place its value came from (the cap's falls back on the delay's)."""
        name = problem.field or ""
        item = given.get(name)
        field = f"manager.{name}" if item is None else item.field
        item = item or given.get("reconnect_delay")  # an unset backoff_cap: the delay made it wrong
        if item is None:
            self.problem(default_line, problem.message, field=field)
            return
        message = problem.message if item.node is None else self.hinted(MANAGER_RULES[name], item.node, problem.message)
        self.problems.append(ConfigProblem(message=message, file=item.file, line=item.line, field=field))

    def add_setting(self, given: dict[str, _Given], name: str, item: _Given) -> None:
        """Record one source of a setting; the same setting from two places is a problem naming both."""
        first = given.get(name)
        if first is None:
            given[name] = item
            return
        where = (
            f"{first.field} at {first.file}:{first.line}"
            if first.file != item.file
            else f"{first.field} (line {first.line})"
        )
        spelling = f" (UFO's spelling of manager.{name})" if item.field == name else ""
        message = f"{name} is given twice: here{spelling} and as {where}; keep one"
        self.problems.append(ConfigProblem(message=message, file=item.file, line=item.line, field=item.field))
        given[name] = item._replace(value=_INVALID)

    def devices(self, entry: tuple[Node, Node] | None, root: Node) -> tuple[DeviceConfig, ...] | None:
        if entry is None:
            self.problem(_line(root), "required field missing; list the devices to manage", field="devices")
            return None
        _, node = entry
        if not isinstance(node, SequenceNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"expected a list of devices, got {got}", field="devices")
            return None
        streamed, results = self.streamed
        if node is not streamed:  # an anchored list, composed whole: walk it now
            self.device_lines = []
            first_seen: dict[str, tuple[int, int]] = {}
            results = [self.device(index, item, first_seen) for index, item in enumerate(node.value)]
        if not results:
            self.problem(_line(node), "must list at least one device", field="devices")
            return None
        devices = tuple(device for device in results if device is not None)
        return devices if len(devices) == len(results) else None

    def device(self, index: int, node: Node, first_seen: dict[str, tuple[int, int]]) -> DeviceConfig | None:
        path = f"devices[{index}]"
        if not isinstance(node, MappingNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"each device must be a mapping, got {got}", field=path, device=path)
            return None
        label: str = path
        for key, value_node in node.value:
            # Name the device by its id as early as possible, so every problem of this entry says which one.
            if key.value == "device_id" and isinstance(value_node, ScalarNode) and value_node.tag == _STR_TAG:
                if value_node.value:
                    label = value_node.value
        fields = self.mapping_fields(node, path, DEVICE_RULES, path, label)
        if fields is None:
            return None
        before = len(self.problems)
        owner_line = _line(node)
        values: dict[str, Any] = {}
        for name, rule in DEVICE_RULES.items():
            value = self.value(fields, name, rule, f"{path}.{name}", label, owner_line)
            if value is not None:
                values[name] = value
        device_id = values.get("device_id")
        if isinstance(device_id, str) and device_id:  # check it is unique even if other fields are wrong
            id_line = _line(fields["device_id"][1])
            if device_id in first_seen:
                other_index, other_line = first_seen[device_id]
                message = duplicate_id_problem(device_id, other_index, other_line)
                self.problem(id_line, message, field=f"{path}.device_id", device=label)
            else:
                first_seen[device_id] = (index, id_line)
        device = self.build_device(values, fields, path, label, owner_line)
        if device is None or len(self.problems) != before:
            return None
        if device.ca_file is not None and self.base_dir is not None:
            resolved = self.base_dir / device.ca_file
            if not resolved.is_file():
                message = f"no such file: {resolved}"
                self.problem(_line(fields["ca_file"][1]), message, field=f"{path}.ca_file", device=label)
                return None
            values["ca_file"] = str(resolved)
            device = DeviceConfig(**values)
        self.device_lines.append({name: _line(value) for name, (_, value) in fields.items()})
        return device

    def build_device(
        self, values: dict[str, Any], fields: dict[str, tuple[Node, Node]], path: str, label: str, owner_line: int
    ) -> DeviceConfig | None:
        """The Struct, validated by itself; its problems are placed at their lines (missing keys at the entry's)."""
        missing = [name for name, rule in DEVICE_RULES.items() if rule.required and name not in values]
        if missing:  # no Struct without them: check what is there with the same rules, then report
            found = [(name, field_problem(DEVICE_RULES[name], value)) for name, value in values.items()]
            problems = [ConfigProblem(message=m, field=name) for name, m in found if m is not None]
        else:
            try:
                return DeviceConfig(**values)
            except ConfigError as exc:
                problems = list(exc.problems)
        for name in missing:
            self.problem(owner_line, "required field missing", field=f"{path}.{name}", device=label)
        for problem in problems:
            name = problem.field or ""
            node = fields[name][1] if name in fields else None
            message = problem.message if node is None else self.hinted(DEVICE_RULES.get(name), node, problem.message)
            line = owner_line if node is None else _line(node)
            self.problem(line, message, field=f"{path}.{name}", device=label)
        return None

    def check_runnable(self, config: GalaxyConfig) -> None:
        """What ``run`` would refuse in a valid config, at the lines of the values concerned."""
        assert self.run is not None
        local = self.run.local or config.local
        endpoints: list[Endpoint] = []
        for index, (device, lines) in enumerate(zip(config.devices, self.device_lines, strict=True)):
            path, label = f"devices[{index}]", device.device_id
            if local:
                message = local_mode_problem(device.server_url)
                if message is not None:
                    self.problem(lines["server_url"], message, field=f"{path}.server_url", device=label)
                endpoints.append(Endpoint(device.device_id, device.host, device.port))
            elif device.token_env is not None and url_token(device.server_url) is None:
                message = token_env_problem(device.token_env, self.run.environ)
                if message is not None:
                    self.problem(lines["token_env"], message, field=f"{path}.token_env", device=label)
        for index, message in spelling_problems(endpoints).items():
            line = self.device_lines[index]["server_url"]
            self.problem(line, message, field=f"devices[{index}].server_url", device=config.devices[index].device_id)

    # -- helpers --

    def mapping_fields(
        self, node: Node, what: str, rules: dict[str, Rule], path: str | None, device: str | None
    ) -> dict[str, tuple[Node, Node]] | None:
        """``{key: (key_node, value_node)}`` of a mapping, reporting non-mappings, duplicate and unknown keys."""
        if not isinstance(node, MappingNode):
            got = "null" if _is_null(node) else _node_kind(node)
            self.problem(_line(node), f"{what} must be a mapping, got {got}", field=path, device=device)
            return None
        prefix = f"{path}." if path else ""
        own_keys: dict[str, Node] = {}
        has_merge = False
        for key, _ in node.value:
            if key.tag == _STR_TAG and isinstance(key, ScalarNode):
                first = own_keys.setdefault(key.value, key)
                if first is not key:
                    message = f"key given twice (first at line {_line(first)})"
                    self.problem(_line(key), message, field=prefix + key.value, device=device)
            elif key.tag == _MERGE_TAG:
                has_merge = True
        if has_merge:
            try:
                self.yaml.flatten_mapping(node)  # resolve YAML merge keys (<<: *defaults)
            except yaml.YAMLError as exc:
                problem = _yaml_error(exc)
                self.problem(problem.line, problem.message, field=path, device=device)
                return None
        fields: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if not (isinstance(key, ScalarNode) and key.tag == _STR_TAG):
                self.problem(_line(key), f"keys must be field names, got {_node_kind(key)}", device=device, field=path)
            elif key.value not in rules:
                if rules is TOP_RULES and key.value.startswith("x-"):
                    continue  # a place for YAML anchors (x-defaults: &defaults ...), as in docker compose files
                self.problem(_line(key), _unknown_field(key.value, rules), field=prefix + key.value, device=device)
            else:
                fields[key.value] = (key, value)  # later keys win, as in YAML merges
        return fields

    def value(
        self,
        fields: dict[str, tuple[Node, Node]],
        name: str,
        rule: Rule,
        path: str,
        device: str | None,
        owner_line: int | None,
    ) -> Any:
        """The value of one field as written, or None when absent (default) or not constructible (problem noted).

        Values are not checked here (the Struct does that); a missing required field is left to the caller.
        """
        entry = fields.get(name)
        if entry is None:
            return None
        value = self.construct_value(entry[1], rule, path, device)
        return None if value is _INVALID else value

    def construct_value(self, node: Node, rule: Rule, path: str, device: str | None) -> Any:
        if _is_null(node) and rule.kind.startswith("opt_"):
            return None
        if rule.kind == "str_tuple" and isinstance(node, SequenceNode):
            items = self.string_list(node, path, device)
            return _INVALID if items is None else items
        return self.construct(node, path, device)

    def string_list(self, node: SequenceNode, path: str, device: str | None) -> tuple[str, ...] | None:
        items: list[str] = []
        ok = True
        for index, item in enumerate(node.value):
            value = self.construct(item, f"{path}[{index}]", device)
            if value is _INVALID:
                ok = False
            elif not isinstance(value, str):
                message = self.hinted(Rule("str"), item, f"expected a string, got {type_name(value)}")
                self.problem(_line(item), message, field=f"{path}[{index}]", device=device)
                ok = False
            else:
                items.append(value)
        return tuple(items) if ok else None

    def construct(self, node: Node, path: str, device: str | None) -> Any:
        # The common cases without the constructor's bookkeeping: text, decimal integers, booleans, and mappings
        # of text to text (metadata). Everything else (floats, timestamps, !tags, merges) goes to PyYAML.
        if isinstance(node, ScalarNode):
            tag, text = node.tag, node.value
            if tag == _STR_TAG:
                return text
            if tag == _INT_TAG and text.isdecimal() and (text == "0" or text[0] != "0"):
                return int(text)
            if tag == _BOOL_TAG:
                return self.yaml.bool_values[text.lower()]
        elif isinstance(node, MappingNode) and all(
            key.tag == _STR_TAG and value.tag == _STR_TAG and isinstance(value, ScalarNode) for key, value in node.value
        ):
            return {key.value: value.value for key, value in node.value}
        try:
            return self.yaml.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # e.g. an unknown !tag, or a timestamp like 2025-13-45 that the constructor rejects with ValueError.
            if isinstance(exc, yaml.YAMLError):
                problem = _yaml_error(exc)
                self.problem(problem.line, problem.message, field=path, device=device)
            else:
                self.problem(_line(node), f"invalid value: {exc}", field=path, device=device)
            return _INVALID

    @staticmethod
    def hinted(rule: Rule | None, node: Node, message: str) -> str:
        """``message`` with a hint when a plain YAML scalar was read as something else than the text wanted."""
        if rule is None or rule.kind not in ("str", "opt_str") or not message.startswith("expected a string"):
            return message
        if not isinstance(node, ScalarNode) or node.style not in (None, "") or node.tag == _STR_TAG:
            return message
        text = str(node.value)
        if node.tag == _BOOL_TAG:
            return f"{message}: YAML 1.1 reads {text} as a boolean; quote it to keep the text: {text!r}"
        if node.tag == _NULL_TAG:
            return f"{message}: YAML reads {text or 'an empty value'} as null; quote it if you meant text"
        what = "a date" if node.tag == _TIMESTAMP_TAG else "a number"
        return f"{message}: YAML reads {text} as {what}; quote it to keep the text: {text!r}"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = str(node.tag).rpartition(":")[2] if str(node.tag).startswith("tag:yaml.org,2002:") else str(node.tag)
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}.get(kind, kind)


def _unknown_field(name: str, rules: dict[str, Rule]) -> str:
    guess = difflib.get_close_matches(name, list(rules), n=1)
    if guess:
        return f"unknown field {name!r} (did you mean {guess[0]!r}?)"
    extension = " (or x-... for YAML anchors)" if rules is TOP_RULES else ""
    return f"unknown field {name!r}; expected one of: {', '.join(rules)}{extension}"
