"""A small declarative schema engine for Istio-style resources.

A schema is a tree of field types. `check(schema, value, path, issues)` walks a document
against it and appends `Issue`s: errors for anything Istio would reject, warnings for fields
Istio accepts but meshagent does not implement yet. Cross-field rules (Istio's webhook
validation) hang off `Obj.rules`; they run only when the object's own fields type-checked,
so a rule may trust the types it reads.

Most documents are valid, so every type also compiles a *predicate* (`predicate(type)`): a
closure that answers "does this value check with no issue at all?" without building field
paths or Issue objects. `Obj.check` asks its predicate first and walks the fields (building
located issues) only when it says no, so the path strings exist only where something is wrong.
A predicate may say no when unsure (the full check then decides); it must never say yes to a
value the full check would report anything about. A Type subclass that overrides `check`
without `compile_predicate` gets a generic predicate that runs its check, so it stays exact.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from meshagent.model.limits import MAX_DURATION_SECONDS
from meshagent.normalize.durations import parse_duration_ms

# Envoy reads durations as google.protobuf.Duration, which holds about 10,000 years.
MAX_DURATION_MS = MAX_DURATION_SECONDS * 1000
DURATION_RANGE = f"at most {MAX_DURATION_SECONDS} seconds (protobuf's Duration range)"

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
Predicate = Callable[[Any], bool]


def clean_when(condition: Predicate) -> Callable[[Rule], Rule]:
    """Decorate a rule with a cheap condition under which it has nothing to report (true only
    then), so that predicates skip running the rule for the common, clean case."""

    def mark(rule: Rule) -> Rule:
        setattr(rule, "clean_when", condition)  # noqa: B010 (functions take attributes)
        return rule

    return mark


def join(path: str, key: str) -> str:
    """The dotted path of key under path."""
    return f"{path}.{key}" if path else key


class Type(ABC):
    """A field type. Subclasses check one value and append issues."""

    @abstractmethod
    def check(self, value: Any, path: str, issues: Issues) -> None:
        """Append an Issue for each problem of value, located at path."""

    def compile_predicate(self) -> Predicate:
        """A closure that is true only for values `check` has nothing to say about.

        This generic one runs check; types override it with something faster.
        """

        def generic(value: Any) -> bool:
            scratch = Issues()
            self.check(value, "", scratch)
            return not scratch

        return generic


def _own_predicate(cls: type) -> bool:
    """Whether cls's compile_predicate was written for its check (not inherited from a base
    whose check cls overrides)."""
    for klass in cls.__mro__:
        if "compile_predicate" in vars(klass):
            return True
        if "check" in vars(klass):
            return False
    return False


def predicate(schema: Type) -> Predicate:
    """schema's predicate, compiled once per schema object and kept on it."""
    found: Predicate | None = getattr(schema, "_predicate", None)
    if found is None:
        if _own_predicate(type(schema)):
            found = schema.compile_predicate()
        else:
            found = Type.compile_predicate(schema)
        # Schema types are frozen dataclasses; the cache is not part of their value.
        object.__setattr__(schema, "_predicate", found)
    return found


_PATTERNS: dict[str, re.Pattern[str]] = {}


def compiled(pattern: str) -> re.Pattern[str]:
    """pattern compiled, memoized (schemas use a handful of patterns)."""
    found = _PATTERNS.get(pattern)
    if found is None:
        found = _PATTERNS[pattern] = re.compile(pattern)
    return found


def _never(value: Any) -> bool:
    return False


def _bounds(lo: float | None, hi: float | None) -> tuple[float, float]:
    """lo and hi, with infinities for missing bounds."""
    return (float("-inf") if lo is None else lo, float("inf") if hi is None else hi)


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
        elif self.pattern and value and compiled(self.pattern).fullmatch(value) is None:
            issues.error(path, f"{value!r} is not a valid {self.what or 'value'}")

    def compile_predicate(self) -> Predicate:
        non_empty = self.non_empty
        match = compiled(self.pattern).fullmatch if self.pattern else None
        if match is None and not non_empty:
            return lambda value: type(value) is str
        return lambda value: (
            type(value) is str
            and (bool(value) or not non_empty)
            and (match is None or not value or match(value) is not None)
        )


_INT_TEXT = re.compile(r"-?\d+")


@dataclass(frozen=True, slots=True)
class Int(Type):
    """An integer in [lo, hi]. allow_string accepts "123", as protobuf JSON does for 64-bit ints."""

    lo: int | None = None
    hi: int | None = None
    allow_string: bool = False

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if self.allow_string and isinstance(value, str) and _INT_TEXT.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            wrong_type(issues, path, "integer", value)
        else:
            _check_range(value, self.lo, self.hi, path, issues)

    def compile_predicate(self) -> Predicate:
        low, high = _bounds(self.lo, self.hi)
        allow_string = self.allow_string

        def fast(value: Any) -> bool:
            if type(value) is int:
                return low <= value <= high
            if allow_string and type(value) is str and _INT_TEXT.fullmatch(value):
                return low <= int(value) <= high
            return False

        return fast


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

    def compile_predicate(self) -> Predicate:
        low, high = _bounds(self.lo, self.hi)
        return lambda value: (type(value) is int or type(value) is float) and low <= value <= high


@dataclass(frozen=True, slots=True)
class Bool(Type):
    """true or false (YAML's spelling; strings are not coerced)."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, bool):
            wrong_type(issues, path, "boolean", value)

    def compile_predicate(self) -> Predicate:
        return lambda value: type(value) is bool


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
        elif ms > MAX_DURATION_MS:
            issues.error(path, f"duration {value!r} is out of range: {DURATION_RANGE}")

    def compile_predicate(self) -> Predicate:
        min_ms = self.min_ms

        def fast(value: Any) -> bool:
            if type(value) is not str:
                return False
            ms = parse_duration_ms(value)
            return ms is not None and min_ms <= ms <= MAX_DURATION_MS

        return fast


@dataclass(frozen=True, slots=True)
class Enum(Type):
    """One of a fixed set of upper-case names."""

    values: tuple[str, ...]

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, str):
            wrong_type(issues, path, "string", value)
        elif value not in self.values:
            issues.error(path, f"{value!r} is not one of {', '.join(self.values)}")

    def compile_predicate(self) -> Predicate:
        values = frozenset(self.values)
        return lambda value: type(value) is str and value in values


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

    def compile_predicate(self) -> Predicate:
        item_ok = predicate(self.item)
        non_empty = self.non_empty

        def fast(value: Any) -> bool:
            if type(value) is not list or (non_empty and not value):
                return False
            for item in value:  # noqa: SIM110 (a plain loop: all() over a genexpr is slower)
                if not item_ok(item):
                    return False
            return True

        return fast


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

    def compile_predicate(self) -> Predicate:
        key_ok = predicate(self.key) if self.key is not None else None
        value_ok = predicate(self.value)

        def fast(value: Any) -> bool:
            if type(value) is not dict:
                return False
            for k, v in value.items():
                if type(k) is not str or (key_ok is not None and not key_ok(k)):
                    return False
                if not value_ok(v):
                    return False
            return True

        return fast


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
        if self.is_clean(value):
            return  # nothing to report: skip the walk that builds located issues
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

    def is_clean(self, value: Any) -> bool:
        """The shortcut of check: True only when the full walk would report nothing (a
        compiled predicate; False sends value to the walk, which locates the issues)."""
        # Obj's own predicate (not predicate(self)): a subclass that overrides check and
        # calls this one gets the generic predicate, which would call back here.
        if type(self) is Obj:
            return predicate(self)(value)
        found: Predicate | None = getattr(self, "_obj_predicate", None)
        if found is None:
            found = Obj.compile_predicate(self)
            object.__setattr__(self, "_obj_predicate", found)
        return found(value)

    def compile_predicate(self) -> Predicate:
        # Fields of plain types are checked inline by type; the rest through their predicates.
        # A field that warns when set (todo, deprecated) sends the object to the full check.
        plain: dict[str, type] = {}
        nested: dict[str, Predicate] = {}
        for name, spec in self.fields.items():
            simple = _plain_type(spec.type)
            if spec.todo or spec.deprecated:
                nested[name] = _never
            elif simple is not None:
                plain[name] = simple
            else:
                nested[name] = predicate(spec.type)
        whole = _whole_check(
            tuple(k for k, spec in self.fields.items() if spec.required),
            tuple(tuple(group) for group in self.oneof if len(group) > 1),
            tuple(self.rules),
        )

        def fast(value: Any) -> bool:
            if type(value) is not dict:
                return False
            for key, item in value.items():
                want = plain.get(key)
                if want is not None:
                    if type(item) is not want and item is not None:
                        return False
                    continue
                ok = nested.get(key)
                if ok is None or (item is not None and not ok(item)):
                    return False
            return whole is None or whole(value)

        return fast

    def _check_oneof(self, value: Mapping[str, Any], path: str, issues: Issues) -> None:
        for group in self.oneof:
            present = [k for k in group if value.get(k) is not None]
            if len(present) > 1:
                issues.error(
                    join(path, present[1]),
                    f"only one of {', '.join(group)} may be set (found {', '.join(present)})",
                )


def _plain_type(schema: Type) -> type | None:
    """str or bool when schema accepts any value of that type and nothing else, else None."""
    if type(schema) is Str and not schema.pattern and not schema.non_empty:
        return str
    if type(schema) is Bool:
        return bool
    return None


def _whole_check(
    required: tuple[str, ...],
    oneof: tuple[tuple[str, ...], ...],
    rules: tuple[Rule, ...],
) -> Predicate | None:
    """The object-level part of Obj's predicate: required fields, oneof groups, rules;
    None when the object has none of these."""
    if not (required or oneof or rules):
        return None
    rules_and_conditions = [(rule, getattr(rule, "clean_when", None)) for rule in rules]

    def whole(value: dict[str, Any]) -> bool:
        for key in required:
            if value.get(key) is None:
                return False
        for group in oneof:
            if sum(value.get(k) is not None for k in group) > 1:
                return False
        for rule, clean in rules_and_conditions:
            if clean is not None and clean(value):
                continue
            scratch = Issues()
            rule(value, "", scratch)
            if scratch:
                return False
        return True

    return whole


@dataclass(frozen=True, slots=True)
class Lazy(Type):
    """A type defined later (for recursive or shared schemas), looked up on first use."""

    get: Callable[[], Type]

    def check(self, value: Any, path: str, issues: Issues) -> None:
        self.get().check(value, path, issues)

    def compile_predicate(self) -> Predicate:
        # Resolved per call: the target may contain this Lazy (recursive schemas).
        return lambda value: predicate(self.get())(value)


def check(schema: Type, value: Any, path: str = "") -> Issues:
    """Check value against schema; the issues found, in document order."""
    issues = Issues()
    schema.check(value, path, issues)
    return issues
