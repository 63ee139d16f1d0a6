"""The documents behind model objects: a model object's provenance back to the raw document
that serves now, and the fields of that document a resource was built from, with their lines.

Field paths are written as the document spells them (`spec.http[0].route[1].weight`); a line is
known where the source has lines (files), else None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meshagent.model.source import Provenance, RawResource

Key = tuple[str, str, str, str]
MAX_VALUE = 72  # characters of a field's value shown
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")
_LINE_SUFFIX = re.compile(r":\d+$")


class Documents(Protocol):
    """What explain needs of the normalizer (meshagent.normalize.normalizer.Normalizer)."""

    def accepted_of(self, keys: Iterable[Key]) -> dict[Key, RawResource | None]: ...

    def claimants(self, host: str) -> tuple[list[RawResource], list[RawResource]]: ...


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an input document: its path, its line (None: unknown), its value."""

    path: str
    line: int | None
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "value": self.value}


def document_of(documents: Documents, provenance: Provenance | None) -> RawResource | None:
    """The raw document serving now for provenance (None: not found)."""
    if provenance is None:
        return None
    keys: list[Key] = [
        (provenance.source, provenance.kind, provenance.namespace, provenance.name),
        (provenance.source, provenance.kind, "", provenance.name),  # no namespace written
    ]
    found = documents.accepted_of(keys)
    return next((raw for k in keys if (raw := found.get(k)) is not None), None)


def lookup(body: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path with [i] indices in body."""
    value: Any = body
    for name, index in _STEP.findall(path):
        if name:
            if not isinstance(value, Mapping) or name not in value:
                return False, None
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                return False, None
            value = value[int(index)]
    return True, value


def has_lines(raw: RawResource) -> bool:
    """Whether raw comes from a file with lines (its location ends in :LINE)."""
    return bool(raw.lines) and bool(_LINE_SUFFIX.search(raw.provenance.location))


def line_of(raw: RawResource, path: str) -> int | None:
    """The line where path starts in raw's file, or of its nearest known parent."""
    if not has_lines(raw):
        return None
    probe = path
    while probe:
        line = raw.lines.get(probe)
        if line is not None:
            return line
        probe = probe[: max(probe.rfind("."), probe.rfind("["), 0)]
    return None


def fields(raw: RawResource | None, paths: Iterable[str]) -> tuple[Field, ...]:
    """The fields among paths that raw has, in order, each with its line and value."""
    if raw is None:
        return ()
    out = []
    for path in paths:
        found, value = lookup(raw.body, path)
        if found:
            out.append(Field(path, line_of(raw, path), _short(value)))
    return tuple(out)


def file_of(raw: RawResource) -> str:
    """raw's file ("mesh/a.yaml"), or its location when it has no file (consul index 7)."""
    location = raw.provenance.location
    return location.rsplit(":", 1)[0] if _LINE_SUFFIX.search(location) else location


def index_of(items: Any, match: Mapping[str, Any]) -> int | None:
    """The index of the first mapping in items whose keys hold match's values."""
    if not isinstance(items, list):
        return None
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and all(item.get(k) == v for k, v in match.items()):
            return i
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
