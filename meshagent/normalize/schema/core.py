"""A small declarative schema engine for Istio-style resources.

A schema is a tree of field types. `check(schema, value, path, issues)` walks a document
against it and appends `Issue`s: errors for anything Istio would reject, warnings for fields
Istio accepts but meshagent does not implement yet. Cross-field rules (Istio's webhook
validation) hang off `Obj.rules`; they run only when the object's own fields type-checked,
so a rule may trust the types it reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meshagent.normalize.durations import parse_duration_ms

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding at a dotted field path, before it is located in a file."""

    severity: Severity
    path: str
    reason: str


class Issues(list[Issue]):
    """The findings of one validation run; helpers keep rule code short."""

    def error(self, path: str, reason: str) -> None:
        self.append(Issue("error", path, reason))

    def warn(self, path: str, reason: str) -> None:
        self.append(Issue("warning", path, reason))

    @property
    def has_errors(self) -> bool:
        return any(i.severity == "error" for i in self)


Rule = Callable[[Mapping[str, Any], str, Issues], None]


def join(path: str, key: str) -> str:
    """The dotted path of key under path."""
    return f"{path}.{key}" if path else key


class Type:
    """A field type. Subclasses check one value and append issues."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        raise NotImplementedError


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "list"
    return "null" if value is None else type(value).__name__


def wrong_type(issues: Issues, path: str, want: str, value: Any) -> None:
    issues.error(path, f"expected {want}, got {_type_name(value)}")


def _check_range(
    value: float, lo: float | None, hi: float | None, path: str, issues: Issues
) -> None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        issues.error(path, f"{value} is out of range [{lo}, {hi}]")
    elif lo is not None and value < lo:
        issues.error(path, f"{value} must be at least {lo}")
    elif hi is not None and value > hi:
        issues.error(path, f"{value} must be at most {hi}")


@dataclass(frozen=True, slots=True)
class Str(Type):
    """A string; pattern (a full match) and non_empty are optional constraints."""

    pattern: str = ""
    non_empty: bool = False
    what: str = ""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, str):
            wrong_type(issues, path, "string", value)
        elif self.non_empty and not value:
            issues.error(path, "must not be empty")
        elif self.pattern and value and re.fullmatch(self.pattern, value) is None:
            issues.error(path, f"{value!r} is not a valid {self.what or 'value'}")


@dataclass(frozen=True, slots=True)
class Int(Type):
    """An integer in [lo, hi]. allow_string accepts "123", as protobuf JSON does for 64-bit ints."""

    lo: int | None = None
    hi: int | None = None
    allow_string: bool = False

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if self.allow_string and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            wrong_type(issues, path, "integer", value)
        else:
            _check_range(value, self.lo, self.hi, path, issues)


@dataclass(frozen=True, slots=True)
class Float(Type):
    """A number (an integer is accepted) in [lo, hi]."""

    lo: float | None = None
    hi: float | None = None

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            wrong_type(issues, path, "number", value)
        else:
            _check_range(value, self.lo, self.hi, path, issues)


@dataclass(frozen=True, slots=True)
class Bool(Type):
    """true or false (YAML's spelling; strings are not coerced)."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, bool):
            wrong_type(issues, path, "boolean", value)


@dataclass(frozen=True, slots=True)
class Duration(Type):
    """A duration string ("1.5s", "100ms", "1h30m"); min_ms is Istio's lower bound."""

    min_ms: int = 0

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, str):
            wrong_type(issues, path, "duration string", value)
            return
        ms = parse_duration_ms(value)
        if ms is None:
            issues.error(path, f"{value!r} is not a valid duration (e.g. 1.5s, 100ms, 1h)")
        elif ms < self.min_ms:
            issues.error(path, f"duration {value!r} must be at least {self.min_ms}ms")


@dataclass(frozen=True, slots=True)
class Enum(Type):
    """One of a fixed set of upper-case names."""

    values: tuple[str, ...]

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, str):
            wrong_type(issues, path, "string", value)
        elif value not in self.values:
            issues.error(path, f"{value!r} is not one of {', '.join(self.values)}")


@dataclass(frozen=True, slots=True)
class ListOf(Type):
    """A list whose items all have one type."""

    item: Type
    non_empty: bool = False

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, list):
            wrong_type(issues, path, "list", value)
            return
        if self.non_empty and not value:
            issues.error(path, "must not be empty")
        for i, item in enumerate(value):
            self.item.check(item, f"{path}[{i}]", issues)


@dataclass(frozen=True, slots=True)
class MapOf(Type):
    """A mapping from string keys to values of one type; key checks the keys."""

    value: Type
    key: Type | None = None

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, Mapping):
            wrong_type(issues, path, "mapping", value)
            return
        for k, v in value.items():
            sub = join(path, str(k))
            if not isinstance(k, str):
                issues.error(sub, f"key must be a string, got {_type_name(k)}")
                continue
            if self.key is not None:
                self.key.check(k, sub, issues)
            self.value.check(v, sub, issues)


@dataclass(frozen=True, slots=True)
class F:
    """A field of an object: its type, whether it is required, and an optional warning.

    todo: a valid field the translator does not implement yet; setting it yields a warning.
    deprecated: Istio still accepts it; a warning names the replacement.
    """

    type: Type
    required: bool = False
    todo: str = ""
    deprecated: str = ""


@dataclass(frozen=True, slots=True)
class Obj(Type):
    """An object with known fields; any other field is an error.

    oneof: groups of field names of which at most one may be set.
    rules: cross-field checks, run when the fields themselves had no errors.
    """

    fields: Mapping[str, F]
    oneof: Sequence[tuple[str, ...]] = ()
    rules: Sequence[Rule] = field(default_factory=tuple)

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, Mapping):
            wrong_type(issues, path, "object", value)
            return
        before = len(issues)
        self._check_fields(value, path, issues)
        self._check_oneof(value, path, issues)
        if any(i.severity == "error" for i in issues[before:]):
            return
        for rule in self.rules:
            rule(value, path, issues)

    def _check_fields(self, value: Mapping[str, Any], path: str, issues: Issues) -> None:
        for key, item in value.items():
            spec = self.fields.get(key) if isinstance(key, str) else None
            sub = join(path, str(key))
            if spec is None:
                issues.error(sub, "unknown field")
                continue
            if item is None:
                continue  # an explicit null is "not set", as in protobuf JSON
            spec.type.check(item, sub, issues)
            if spec.todo:
                issues.warn(sub, f"not implemented yet, ignored: {spec.todo}")
            if spec.deprecated:
                issues.warn(sub, f"deprecated: {spec.deprecated}")
        for key, spec in self.fields.items():
            if spec.required and value.get(key) is None:
                issues.error(join(path, key), "required field is missing")

    def _check_oneof(self, value: Mapping[str, Any], path: str, issues: Issues) -> None:
        for group in self.oneof:
            present = [k for k in group if value.get(k) is not None]
            if len(present) > 1:
                issues.error(
                    join(path, present[1]),
                    f"only one of {', '.join(group)} may be set (found {', '.join(present)})",
                )


@dataclass(frozen=True, slots=True)
class Lazy(Type):
    """A type defined later (for recursive or shared schemas), looked up on first use."""

    get: Callable[[], Type]

    def check(self, value: Any, path: str, issues: Issues) -> None:
        self.get().check(value, path, issues)


def check(schema: Type, value: Any, path: str = "") -> Issues:
    """Check value against schema; the issues found, in document order."""
    issues = Issues()
    schema.check(value, path, issues)
    return issues
