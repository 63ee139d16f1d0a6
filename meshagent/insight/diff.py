"""`meshagent diff`: what a candidate set of files would change in this host's Envoy config.

Both sides are in the JSON form of /debug/resources ({"cds": [{"name", "version",
"resource"}], ...}, meshagent.agent.opspages.resources_json): resources are matched by type and
name and compared field by field, ignoring versions. Lists of named things (virtual hosts,
routes, weighted clusters, filter chains) are matched by name, so an edit reads as the change
of that one route, not as a shifted list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SKIPPED_TYPES = ("sds",)  # secrets carry the running agent's certificates, not the files'
_ORDER = ("cds", "eds", "lds", "rds")
MAX_VALUE = 100


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field: its path in the resource, the value before and after (None: absent)."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class ResourceChange:
    """One resource added ("+"), removed ("-") or changed ("~")."""

    op: str
    type: str
    name: str
    fields: tuple[FieldChange, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "type": self.type,
            "name": self.name,
            "fields": [{"path": f.path, "before": f.before, "after": f.after} for f in self.fields],
        }


def diff_resources(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[ResourceChange]:
    """The changes from before to after, by type (CDS, EDS, LDS, RDS) and name."""
    out: list[ResourceChange] = []
    types = sorted(
        set(before) | set(after),
        key=lambda t: (t not in _ORDER, _ORDER.index(t) if t in _ORDER else 0, t),
    )
    for type_ in types:
        if type_ in SKIPPED_TYPES:
            continue
        old = {r["name"]: r["resource"] for r in before.get(type_, [])}
        new = {r["name"]: r["resource"] for r in after.get(type_, [])}
        for name in sorted(set(old) | set(new)):
            if name not in old:
                out.append(ResourceChange("+", type_, name))
            elif name not in new:
                out.append(ResourceChange("-", type_, name))
            elif old[name] != new[name]:
                found = tuple(field_changes(old[name], new[name]))
                out.append(ResourceChange("~", type_, name, found))
    return out


def field_changes(before: Any, after: Any, path: str = "") -> list[FieldChange]:
    """The leaves that differ between two JSON values, with readable paths."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[FieldChange] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append(FieldChange(sub, None, after[key]))
            elif key not in after:
                out.append(FieldChange(sub, before[key], None))
            elif before[key] != after[key]:
                out += field_changes(before[key], after[key], sub)
        return out
    if isinstance(before, list) and isinstance(after, list):
        return _list_changes(before, after, path)
    return [FieldChange(path, before, after)]


def _names(items: list[Any]) -> list[str] | None:
    """The names of items when each is a mapping with a distinct name, else None."""
    found = [i.get("name") if isinstance(i, dict) else None for i in items]
    if all(isinstance(n, str) and n for n in found) and len(set(found)) == len(found):
        return [str(n) for n in found]
    return None


def _list_changes(before: list[Any], after: list[Any], path: str) -> list[FieldChange]:
    old_names, new_names = _names(before), _names(after)
    if old_names is not None and new_names is not None:
        old = dict(zip(old_names, before, strict=True))
        new = dict(zip(new_names, after, strict=True))
        out: list[FieldChange] = []
        for name in [*old_names, *(n for n in new_names if n not in old)]:
            sub = f"{path}[{name}]"
            if name not in new:
                out.append(FieldChange(sub, old[name], None))
            elif name not in old:
                out.append(FieldChange(sub, None, new[name]))
            elif old[name] != new[name]:
                out += field_changes(old[name], new[name], sub)
        if [n for n in old_names if n in new] != [n for n in new_names if n in old]:
            out.append(FieldChange(f"{path} (order)", old_names, new_names))
        return out
    out = []
    for i in range(max(len(before), len(after))):
        sub = f"{path}[{i}]"
        if i >= len(before):
            out.append(FieldChange(sub, None, after[i]))
        elif i >= len(after):
            out.append(FieldChange(sub, before[i], None))
        elif before[i] != after[i]:
            out += field_changes(before[i], after[i], sub)
    return out


def render(changes: list[ResourceChange]) -> str:
    """The changes as text: one line per resource, one indented line per field."""
    lines = []
    for change in changes:
        lines.append(f"{change.op} {change.type} {change.name}")
        for f in change.fields:
            if f.before is None:
                lines.append(f"    + {f.path}: {_short(f.after)}")
            elif f.after is None:
                lines.append(f"    - {f.path}: {_short(f.before)}")
            else:
                lines.append(f"    ~ {f.path}: {_short(f.before)} -> {_short(f.after)}")
    counts = {op: sum(c.op == op for c in changes) for op in "+-~"}
    lines.append(
        f"{counts['~']} changed, {counts['+']} added, {counts['-']} removed"
        if changes
        else "no change"
    )
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."
