"""What adapters hand to the normalizer, and what the normalizer says back about it.

These are plain data shared by every layer: adapters build RawResource and SourceEvent,
the normalizer reads them and answers with Diagnostic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a piece of configuration came from.

    source: the adapter ("files", "consul", "kubernetes").
    location: a place a person can open: "path/to/mesh.yaml:12", "consul index 42",
    "resourceVersion 1234".
    """

    source: str
    location: str
    kind: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def ref(self) -> str:
        """`Kind/namespace/name`, the way operators name a resource."""
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class RawResource:
    """One platform object, as read, before validation.

    body is the whole document (apiVersion, kind, metadata, spec) as plain Python data; the
    normalizer never mutates it. lines maps dotted field paths ("spec.http[0].route") to the
    1-based line where that field starts, when the platform has lines (files); the normalizer
    uses the longest matching prefix to locate an error.
    """

    source: str
    kind: str
    api_version: str
    namespace: str
    name: str
    body: Mapping[str, Any]
    provenance: Provenance
    lines: Mapping[str, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity of the resource within its source: (source, kind, namespace, name)."""
        return (self.source, self.kind, self.namespace, self.name)


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A located problem with one resource (or one file when it could not be parsed at all).

    Rendered as `<location>: <Kind>/<name>: <field>: <reason>`, the format of `meshagent validate`.
    """

    severity: Severity
    source: str
    location: str
    kind: str
    name: str
    field: str
    reason: str

    def __str__(self) -> str:
        what = f"{self.kind}/{self.name}" if self.kind or self.name else "-"
        prefix = "" if self.severity == "error" else "warning: "
        return f"{self.location}: {what}: {self.field or '-'}: {prefix}{self.reason}"


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A batch from one adapter: upserts and deletes, applied together.

    synced is True on the batch that completes the adapter's first full listing and on every
    batch after it. errors are problems the adapter met before it could build a RawResource
    (unparsable YAML, a platform error); resources from a file that failed to parse are *not*
    deleted: the last good ones keep serving.

    unavailable says why the source cannot see all of its configuration now, one reason per
    missing part, naming it (e.g. a configured path that does not exist); () when it sees it
    all. Every event carries the whole current set. What the source cannot see keeps serving
    as it was (no deletes are emitted for it); the agent is not ready while it is non-empty.
    """

    source: str
    upserts: tuple[RawResource, ...] = ()
    deletes: tuple[tuple[str, str, str, str], ...] = ()  # RawResource.key values
    synced: bool = True
    errors: tuple[Diagnostic, ...] = ()
    # Files (or other locations) whose earlier errors no longer hold: re-read without an
    # error, or gone. The agent drops those errors from its current diagnostics.
    fixed: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
