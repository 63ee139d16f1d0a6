"""Multi-document YAML to RawResource, with the line of every field.

Used by the files adapter and by `meshagent validate`. Bad input never raises: every problem
becomes an error Diagnostic located at "path:line". This module builds no model objects.

What a text may expand to is bounded (MAX_TEXT_CHARS, MAX_DEPTH, MAX_NODES, and aliases may add
at most as many nodes as the text itself has, or ALIAS_FLOOR): a "billion laughs" file is one
located error for the whole file, found before it costs more than a few megabytes.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshagent.gcpause import paused_gc
from meshagent.model.source import Diagnostic, Provenance, RawResource

try:  # libyaml's parser is several times faster; fall back to the pure-Python one
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

_RESOLVED_MAX = 65_536  # tags remembered per text
_RESOLVED_CHARS = 64  # of scalars no longer than this
_IGNORE_TWO: dict[Any, Any] = {}
_IGNORE_TWO_GET = _IGNORE_TWO.get


class _Loader(_BaseLoader):
    """The safe loader, remembering the implicit tag of short plain scalars for one text: keys
    and enum-like values repeat in every document, and the resolver's regexes are the
    composer's main Python cost. With no path resolvers registered (none are), a plain
    scalar's tag is a function of its text alone and any other scalar's is str (what
    Resolver.resolve returns for them), so the cache changes nothing but the time."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._resolved: dict[str, str] = {}  # plain scalar's text -> its tag
        if not self.yaml_path_resolvers:
            # The composer calls these two around every node; without path resolvers they do
            # nothing. Built-ins that take the same arguments and do nothing spare a Python
            # call each (about 2% of reading a big file): {}.get(parent, index), tuple().
            self.descend_resolver = _IGNORE_TWO_GET  # type: ignore[method-assign,assignment]
            self.ascend_resolver = tuple  # type: ignore[method-assign,assignment]

    def _tag(self, kind: type[Node], value: Any, implicit: Any) -> str:
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        # Called by the composer for every node: the hot path of reading big files.
        if self.yaml_path_resolvers:
            return self._tag(kind, value, implicit)
        if kind is ScalarNode:
            if not implicit[0]:  # quoted or block: never resolved by the implicit resolvers
                return _STR
            tag = self._resolved.get(value)
            if tag is None:
                tag = self._tag(kind, value, implicit)
                if len(value) <= _RESOLVED_CHARS and len(self._resolved) < _RESOLVED_MAX:
                    self._resolved[value] = tag
            return tag
        if kind is MappingNode:
            return str(self.DEFAULT_MAPPING_TAG)
        if kind is SequenceNode:
            return str(self.DEFAULT_SEQUENCE_TAG)
        return self._tag(kind, value, implicit)


# Bounds on one text (a file), far above any real mesh file: the biggest real ones are a few
# megabytes of endpoints. A text beyond one is rejected whole, with one located error.
MAX_TEXT_CHARS = 16 * 1024 * 1024
MAX_DEPTH = 100  # nested mappings and sequences (Istio resources nest about 12 deep)
MAX_NODES = 2_000_000  # scalars, mappings and sequences built, aliases expanded
ALIAS_FLOOR = 10_000  # nodes aliases may always add; beyond it, no more than the text has

# Kubernetes object names (RFC 1123): a name is a DNS subdomain, a namespace a DNS label.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL = re.compile(_DNS_LABEL)

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
# Scalars whose value is a function of their text alone, built without construct_object's
# bookkeeping (the hot path of big files); any other tag goes through the constructor (an
# unknown one is its error, as before).
_PLAIN_CONSTRUCTORS = {
    tag: SafeConstructor.yaml_constructors[tag]
    for tag in (
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
    )
}


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """One resource and the top-level keys stripped from it (e.g. the corpus' `_err`)."""

    resource: RawResource
    meta: Mapping[str, Any] = field(default_factory=dict)


# What each resource read counted, while a tally() is open: (its first line, YAML nodes
# built, of them built again through an alias), in the text's order.
Tally = list[tuple[int, int, int]]
_TALLY: ContextVar[Tally | None] = ContextVar("yamldocs_tally", default=None)


@contextmanager
def tally() -> Iterator[Tally]:
    """The counts of every resource the loads within read (Tally), so that a reader that
    reads a text's documents apart (the files adapter's re-reads) can bound the text's totals
    as a whole read does (_Budget). Only a load without problems counts all it built."""
    counts: Tally = []
    token = _TALLY.set(counts)
    try:
        yield counts
    finally:
        _TALLY.reset(token)


class _DocumentError(Exception):
    """A problem with one document: its 1-based line and a reason."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _LimitError(_DocumentError):
    """A text beyond the bounds (module docstring): the whole text is rejected."""


class _Budget:
    """What one text has built so far; shared by the builders of its documents."""

    __slots__ = ("expanded", "nodes")

    def __init__(self) -> None:
        self.nodes = 0
        self.expanded = 0  # of nodes, those built again because an alias refers to them

    def check(self, node: Node, depth: int) -> None:
        """Raise _LimitError when the text went beyond a bound (called per collection)."""
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise _LimitError(line, f"nested deeper than {MAX_DEPTH} levels; file rejected")
        if self.nodes > MAX_NODES:
            raise _LimitError(line, f"more than {MAX_NODES} YAML nodes; file rejected")
        if self.expanded > ALIAS_FLOOR and self.expanded > self.nodes - self.expanded:
            raise _LimitError(
                line,
                f"aliases expand to more than {ALIAS_FLOOR} nodes, more than the file itself "
                "has (a 'billion laughs' document?); file rejected",
            )


class _Builder:
    """Turns a composed node tree into plain Python values and a dotted-path line map."""

    def __init__(self, budget: _Budget) -> None:
        self.constructor = SafeConstructor()
        self.lines: dict[str, int] = {}
        self._budget = budget
        self._active: set[int] = set()  # nodes on the current path, to catch recursive aliases
        self._seen: set[int] = set()  # collections built once: met again, they are aliases
        self._aliased = 0  # > 0 while building again what an alias refers to
        self._merged: dict[int, int] = {}  # mapping node -> its pairs that came from `<<`

    def build(self, node: Node, path: str) -> Any:
        # The hot loop of loading big files: keep it lean.
        budget = self._budget
        budget.nodes += 1
        if self._aliased:
            budget.expanded += 1
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        key, active = id(node), self._active
        if key in active:
            raise _DocumentError(node.start_mark.line + 1, "recursive alias")
        active.add(key)
        alias = key in self._seen
        if alias:
            self._aliased += 1
        else:
            self._seen.add(key)
        if len(active) > MAX_DEPTH or budget.nodes > MAX_NODES or budget.expanded > ALIAS_FLOOR:
            budget.check(node, len(active))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            raise _DocumentError(node.start_mark.line + 1, "unsupported YAML node")
        finally:
            active.discard(key)
            if alias:
                self._aliased -= 1

    def _scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        if tag in (_STR, _TIMESTAMP):  # as Kubernetes' YAML reader: dates stay strings
            return node.value
        plain = _PLAIN_CONSTRUCTORS.get(tag)
        if plain is not None:
            return plain(self.constructor, node)
        return self.constructor.construct_object(node)

    def _key(self, node: Node) -> str:
        if node.__class__ is not ScalarNode:
            raise _DocumentError(node.start_mark.line + 1, "a mapping key must be a scalar")
        if node.tag == _STR:
            # Interned: every document of a shape has the same keys (~10 MB of equal strings
            # in the bodies of a 10k-service mesh otherwise).
            return sys.intern(node.value)
        key = self._scalar(node)
        if isinstance(key, bool):
            return "true" if key else "false"
        return "null" if key is None else str(key)  # 8080: becomes "8080", as in JSON

    def _mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        merged = self._merged.get(id(node), 0) if self._merged else 0
        if merged or any(k.tag == _MERGE for k, _ in node.value):
            return self._merging(node, path)
        out: dict[str, Any] = {}
        lines, budget, build, scalar = self.lines, self._budget, self.build, self._scalar
        for key_node, value_node in node.value:
            key = self._key(key_node)
            # Interned: every document of a shape has the same paths, and the line maps of a
            # 10k-service mesh would otherwise hold ~35 MB of equal strings.
            sub = sys.intern(f"{path}.{key}") if path else key
            if key in out:
                raise _DocumentError(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            if sub not in lines:
                lines[sub] = key_node.start_mark.line + 1
            if value_node.__class__ is ScalarNode:  # build()'s scalar case, inlined
                budget.nodes += 1
                if self._aliased:
                    budget.expanded += 1
                out[key] = scalar(value_node)
            else:
                out[key] = build(value_node, sub)
        return out

    def _merging(self, node: MappingNode, path: str) -> dict[str, Any]:
        """_mapping of a mapping with merge keys (`<<: *anchor`)."""
        merged = self._flatten(node)
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key = self._key(key_node)
            sub = sys.intern(f"{path}.{key}") if path else key
            line = key_node.start_mark.line + 1
            if i < merged:  # from `<<: *anchor`: the first merged mapping that has it wins
                if key in out:
                    continue
                self.lines.setdefault(sub, line)
            else:  # written here: overrides a merged key, but may not repeat itself
                if key in explicit:
                    raise _DocumentError(line, f"duplicate key {key!r}")
                explicit.add(key)
                self.lines[sub] = line
            out[key] = self.build(value_node, sub)
        return out

    def _flatten(self, node: MappingNode) -> int:
        """Resolve node's merge keys (`<<`) in place, once; how many pairs come first from
        them (flatten_mapping puts the merged pairs before the node's own)."""
        merged = self._merged.get(id(node))
        if merged is None:
            own = sum(1 for k, _ in node.value if k.tag != _MERGE)
            self.constructor.flatten_mapping(node)
            merged = self._merged[id(node)] = len(node.value) - own
        return merged

    def _sequence(self, node: SequenceNode, path: str) -> list[Any]:
        out: list[Any] = []
        lines, budget = self.lines, self._budget
        for i, item in enumerate(node.value):
            sub = sys.intern(f"{path}[{i}]")
            if sub not in lines:
                lines[sub] = item.start_mark.line + 1
            if item.__class__ is ScalarNode:  # build()'s scalar case, inlined
                budget.nodes += 1
                if self._aliased:
                    budget.expanded += 1
                out.append(self._scalar(item))
            else:
                out.append(self.build(item, sub))
        return out


def _error(path: str, line: int, source: str, reason: str) -> Diagnostic:
    return Diagnostic("error", source, f"{path}:{line}", "", "", "", reason)


def _field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _identity(
    body: Mapping[str, Any], line: int, lines: Mapping[str, int]
) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name) of a document; raises when one cannot be read.

    A document whose identity is unreadable must not be taken for another resource (e.g.
    `namespace: 5` read as no namespace): it is an error, and its file keeps what it served.
    """
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise _DocumentError(lines.get("metadata", line), "metadata must be a mapping")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
    found = {
        "apiVersion": _field(body, "apiVersion"),
        "kind": _field(body, "kind"),
        "metadata.name": _field(meta, "name"),
    }
    missing = [key for key, value in found.items() if not value]
    if missing:
        raise _DocumentError(line, f"not a resource: missing or non-string {', '.join(missing)}")
    name, namespace = found["metadata.name"], meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        reason = f"metadata.namespace must be a string, not {type(namespace).__name__}"
        raise _DocumentError(lines.get("metadata.namespace", line), reason)
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        reason = (
            f"metadata.name {name!r} is not a valid Kubernetes name (RFC 1123 subdomain: "
            "lowercase letters, digits, '-' and '.', at most 253 characters)"
        )
        raise _DocumentError(lines.get("metadata.name", line), reason)
    if namespace and (len(namespace) > 63 or not _LABEL.fullmatch(namespace)):
        reason = (
            f"metadata.namespace {namespace!r} is not a valid Kubernetes namespace (RFC 1123 "
            "label: lowercase letters, digits and '-', at most 63 characters)"
        )
        raise _DocumentError(lines.get("metadata.namespace", line), reason)
    return found["apiVersion"], found["kind"], namespace or "", name


def _without(lines: dict[str, int], keys: Mapping[str, Any]) -> dict[str, int]:
    """lines without the entries of the stripped top-level keys."""
    if not keys:
        return lines
    return {p: n for p, n in lines.items() if p.split(".", 1)[0].split("[", 1)[0] not in keys}


def _resource(
    node: Node, path: str, source: str, strip_keys: tuple[str, ...], budget: _Budget
) -> LoadedDocument:
    """One document node as a resource; raises _DocumentError when it is not one."""
    start = node.start_mark.line + 1
    if not isinstance(node, MappingNode):
        raise _DocumentError(start, "a document must be a mapping (apiVersion, kind, metadata)")
    builder = _Builder(budget)
    try:
        body: dict[str, Any] = builder.build(node, "")
    except RecursionError:
        raise _LimitError(start, "document is nested too deeply; file rejected") from None
    meta = {k: body.pop(k) for k in strip_keys if k in body}
    api_version, kind, namespace, name = _identity(body, start, builder.lines)
    provenance = Provenance(source, f"{path}:{start}", kind, namespace, name)
    raw = RawResource(
        source, kind, api_version, namespace, name, body, provenance, _without(builder.lines, meta)
    )
    return LoadedDocument(raw, meta)


def _scalar_value(node: MappingNode, key: str) -> str | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return value_node.value if isinstance(value_node, ScalarNode) else None
    return None


def list_items(node: Node) -> list[Node]:
    """The items of a Kubernetes List document (apiVersion v1, kind List, as `kubectl get
    -o yaml` writes several objects), each read as a resource; [node] for any other document.
    """
    if not isinstance(node, MappingNode) or _scalar_value(node, "kind") != "List":
        return [node]
    if _scalar_value(node, "apiVersion") != "v1":
        return [node]
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == "items":
            if isinstance(value_node, SequenceNode):
                return list(value_node.value)
            if isinstance(value_node, ScalarNode) and value_node.tag.endswith(":null"):
                return []
            return [node]  # malformed items: reported as the document it is
    return []


def _syntax_error(exc: yaml.YAMLError, path: str, source: str) -> Diagnostic:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        return _error(path, line, source, f"YAML syntax error: {exc.problem or exc.context}")
    return _error(path, 1, source, f"YAML error: {exc}")


def _load(
    text: str, path: str, source: str, strip_keys: tuple[str, ...]
) -> tuple[list[LoadedDocument], list[Diagnostic]]:
    if len(text) > MAX_TEXT_CHARS:
        return [], [_error(path, 1, source, f"larger than {MAX_TEXT_CHARS} bytes; file rejected")]
    documents: list[LoadedDocument] = []
    diagnostics: list[Diagnostic] = []
    budget = _Budget()
    counts = _TALLY.get()
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None or (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
                continue  # an empty document, e.g. after a trailing '---'
            for item in list_items(node):  # a Kubernetes List: each item is a resource
                nodes, expanded = budget.nodes, budget.expanded
                try:
                    document = _resource(item, path, source, strip_keys, budget)
                except _LimitError as exc:
                    return [], [_error(path, exc.line, source, exc.reason)]
                except _DocumentError as exc:
                    diagnostics.append(_error(path, exc.line, source, exc.reason))
                    continue
                documents.append(document)
                if counts is not None:
                    line = item.start_mark.line + 1
                    counts.append((line, budget.nodes - nodes, budget.expanded - expanded))
    except yaml.YAMLError as exc:
        # A syntax error anywhere yields no documents at all: a half-written file must not
        # look like one whose later resources were deleted.
        return [], [_syntax_error(exc, path, source)]
    return documents, diagnostics


def duplicate_error(raw: RawResource, first: str) -> Diagnostic:
    """The error for another document of the resource first defined at first (which wins).

    It is an error of the copy's file (no kind or name of its own: the copy never serves, so
    nothing of the resource's would clear it), naming the resource in its reason."""
    return Diagnostic(
        "error",
        raw.source,
        raw.provenance.location,
        "",
        "",
        "metadata.name",
        f"{raw.provenance.ref}: duplicate of the resource at {first}; this copy is ignored",
    )


def load_documents_with_meta(
    text: str, path: str, source: str = "files", *, strip_keys: tuple[str, ...] = ()
) -> tuple[list[LoadedDocument], list[Diagnostic]]:
    """Every resource in text with the top-level keys in strip_keys removed and kept aside.

    A YAML syntax error yields no documents from the whole text, and one error.
    """
    with paused_gc():
        return _load(text, path, source, strip_keys)


def load_documents(
    text: str, path: str, source: str = "files", *, strip_keys: tuple[str, ...] = ()
) -> tuple[list[RawResource], list[Diagnostic]]:
    """The resources in a multi-document YAML text, and the problems met reading it.

    path names the text in locations ("path:line"). metadata.namespace, when absent, is ""
    (the normalizer applies its default namespace).
    """
    documents, diagnostics = load_documents_with_meta(text, path, source, strip_keys=strip_keys)
    return [d.resource for d in documents], diagnostics


def read_config_bytes(path: str | Path, limit: int = MAX_TEXT_CHARS) -> bytes:
    """The bytes of a config file, at most limit + 1 of them (a caller tells "too large" by the
    length), read from a regular file only: a FIFO would block the reader forever and a
    device (a symlink to /dev/zero) never ends. OSError when it cannot be read or is not a
    regular file (after symlinks)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait here
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_config_text(path: str | Path) -> str:
    """A config file's UTF-8 text (read_config_bytes); OSError, UnicodeDecodeError, or
    ValueError when it is larger than MAX_TEXT_CHARS bytes."""
    data = read_config_bytes(path)
    if len(data) > MAX_TEXT_CHARS:
        raise ValueError(f"larger than {MAX_TEXT_CHARS} bytes")
    return data.decode("utf-8")


def load_file(
    path: str | Path, source: str = "files", *, strip_keys: tuple[str, ...] = ()
) -> tuple[list[RawResource], list[Diagnostic]]:
    """load_documents on a file's contents; an unreadable file is one error Diagnostic."""
    try:
        text = read_config_text(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [], [_error(str(path), 1, source, f"cannot read file: {exc}")]
    return load_documents(text, str(path), source, strip_keys=strip_keys)


def load_mapping(text: str, path: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A config file (one YAML document, a mapping or empty) read by the rules of mesh files
    (duplicate keys, recursive aliases, dates as strings, keys as strings), and the line of
    every field; ConfigError located at "path:line" when it cannot be read. Used by the agent
    config, so that both kinds of file accept and refuse the same YAML."""
    from meshagent.errors import ConfigError  # the one raising reader here

    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(f"larger than {MAX_TEXT_CHARS} bytes", location=f"{path}:1")
    nodes: list[Node] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is not None and not (
                isinstance(node, ScalarNode) and node.tag.endswith(":null")
            ):
                nodes.append(node)
    except yaml.YAMLError as exc:
        d = _syntax_error(exc, path, "config")
        raise ConfigError(d.reason, location=d.location) from None
    if not nodes:
        return {}, {}
    if len(nodes) > 1:
        where = f"{path}:{nodes[1].start_mark.line + 1}"
        raise ConfigError("must be one YAML document (found a second one)", location=where)
    node, builder = nodes[0], _Builder(_Budget())
    if not isinstance(node, MappingNode):
        raise ConfigError("the config must be a mapping", location=f"{path}:1")
    try:
        with paused_gc():
            data: dict[str, Any] = builder.build(node, "")
    except _DocumentError as exc:
        raise ConfigError(exc.reason, location=f"{path}:{exc.line}") from None
    except RecursionError:
        raise ConfigError("document is nested too deeply", location=f"{path}:1") from None
    return data, {"": 1, **builder.lines}
