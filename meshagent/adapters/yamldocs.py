"""Multi-document YAML to RawResource, with the line of every field.

Used by the files adapter and by `meshagent validate`. Bad input never raises: every problem
becomes an error Diagnostic located at "path:line". This module builds no model objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from meshagent.gcpause import paused_gc
from meshagent.model.source import Diagnostic, Provenance, RawResource

try:  # libyaml's parser is several times faster; fall back to the pure-Python one
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """One resource and the top-level keys stripped from it (e.g. the corpus' `_err`)."""

    resource: RawResource
    meta: Mapping[str, Any] = field(default_factory=dict)


class _DocumentError(Exception):
    """A problem with one document: its 1-based line and a reason."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Builder:
    """Turns a composed node tree into plain Python values and a dotted-path line map."""

    def __init__(self) -> None:
        self.constructor = SafeConstructor()
        self.lines: dict[str, int] = {}
        self._active: set[int] = set()  # nodes on the current path, to catch recursive aliases

    def build(self, node: Node, path: str) -> Any:
        if isinstance(node, ScalarNode):
            return self._scalar(node)
        if id(node) in self._active:
            raise _DocumentError(node.start_mark.line + 1, "recursive alias")
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            raise _DocumentError(node.start_mark.line + 1, "unsupported YAML node")
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: ScalarNode) -> Any:
        if node.tag == _TIMESTAMP:
            return node.value  # as Kubernetes' YAML reader does: dates stay strings
        return self.constructor.construct_object(node)

    def _key(self, node: Node) -> str:
        if not isinstance(node, ScalarNode):
            raise _DocumentError(node.start_mark.line + 1, "a mapping key must be a scalar")
        key = self._scalar(node)
        if isinstance(key, bool):
            return "true" if key else "false"
        return "null" if key is None else str(key)  # 8080: becomes "8080", as in JSON

    def _mapping(self, node: MappingNode, path: str) -> dict[str, Any]:
        if any(k.tag == _MERGE for k, _ in node.value):
            self.constructor.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise _DocumentError(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            self.lines.setdefault(sub, key_node.start_mark.line + 1)
            out[key] = self.build(value_node, sub)
        return out

    def _sequence(self, node: SequenceNode, path: str) -> list[Any]:
        out: list[Any] = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            self.lines.setdefault(sub, item.start_mark.line + 1)
            out.append(self.build(item, sub))
        return out


def _error(path: str, line: int, source: str, reason: str) -> Diagnostic:
    return Diagnostic("error", source, f"{path}:{line}", "", "", "", reason)


def _field(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _identity(body: Mapping[str, Any], line: int) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name) of a document; raises when one is missing."""
    metadata = body.get("metadata")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
    found = {
        "apiVersion": _field(body, "apiVersion"),
        "kind": _field(body, "kind"),
        "metadata.name": _field(meta, "name"),
    }
    missing = [key for key, value in found.items() if not value]
    if missing:
        raise _DocumentError(line, f"not a resource: missing or non-string {', '.join(missing)}")
    return found["apiVersion"], found["kind"], _field(meta, "namespace"), found["metadata.name"]


def _without(lines: dict[str, int], keys: Mapping[str, Any]) -> dict[str, int]:
    """lines without the entries of the stripped top-level keys."""
    if not keys:
        return lines
    return {p: n for p, n in lines.items() if p.split(".", 1)[0].split("[", 1)[0] not in keys}


def _resource(node: Node, path: str, source: str, strip_keys: tuple[str, ...]) -> LoadedDocument:
    """One document node as a resource; raises _DocumentError when it is not one."""
    start = node.start_mark.line + 1
    if not isinstance(node, MappingNode):
        raise _DocumentError(start, "a document must be a mapping (apiVersion, kind, metadata)")
    builder = _Builder()
    try:
        body: dict[str, Any] = builder.build(node, "")
    except RecursionError:
        raise _DocumentError(start, "document is nested too deeply") from None
    meta = {k: body.pop(k) for k in strip_keys if k in body}
    api_version, kind, namespace, name = _identity(body, start)
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
    documents: list[LoadedDocument] = []
    diagnostics: list[Diagnostic] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None or (isinstance(node, ScalarNode) and node.tag.endswith(":null")):
                continue  # an empty document, e.g. after a trailing '---'
            for item in list_items(node):  # a Kubernetes List: each item is a resource
                try:
                    documents.append(_resource(item, path, source, strip_keys))
                except _DocumentError as exc:
                    diagnostics.append(_error(path, exc.line, source, exc.reason))
    except yaml.YAMLError as exc:
        # A syntax error anywhere yields no documents at all: a half-written file must not
        # look like one whose later resources were deleted.
        return [], [_syntax_error(exc, path, source)]
    return documents, diagnostics


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


def load_file(
    path: str | Path, source: str = "files", *, strip_keys: tuple[str, ...] = ()
) -> tuple[list[RawResource], list[Diagnostic]]:
    """load_documents on a file's contents; an unreadable file is one error Diagnostic."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [_error(str(path), 1, source, f"cannot read file: {exc}")]
    return load_documents(text, str(path), source, strip_keys=strip_keys)
