"""The agent's current configuration problems: a table keyed by what is wrong, not a log.

An entry is keyed by its subject (a resource: source, kind and name; or, for a problem that
names no resource, the file or platform address it is about) and the field. It carries the
time it was first seen and is dropped when it no longer holds:

- a resource that is upserted again replaces all its entries with what this upsert reported
  (none when it was accepted cleanly; a warning that still applies stays, first seen kept);
- a deleted resource loses its entries;
- a file-level error goes when the files adapter says the file was re-read cleanly or removed
  (SourceEvent.fixed), or with the first listing of a restarted adapter that does not repeat
  it (it re-reads every file); a platform error (Consul, Kubernetes) goes with the next event
  of that source that reports no platform error.

/debug/config_errors, the status page, `meshagent status` and `meshagent_invalid_resources`
read this table; the log keeps the history.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshagent.model.source import Diagnostic, SourceEvent

Subject = tuple[str, str, str]  # (source, kind, name) or (source, "", file or address)
EntryKey = tuple[Subject, str]  # (subject, field)
MAX_ENTRIES = 10_000  # a bound against a source that invents names; oldest go first
_LINE = re.compile(r":\d+$")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One current problem and when it was first and last reported (Unix seconds)."""

    diagnostic: Diagnostic
    first_seen: float
    last_seen: float


def subject_of(d: Diagnostic) -> Subject:
    """What a diagnostic is about: its resource, or its file / platform address."""
    if d.kind or d.name:
        return (d.source, d.kind, d.name)
    return (d.source, "", _LINE.sub("", d.location))


def _resource_subject(source: str, key: tuple[str, str, str, str]) -> Subject:
    _, kind, namespace, name = key
    return (source, kind, f"{namespace}/{name}" if namespace else name)


class DiagnosticTable:
    """Current problems; `update()` once per applied batch, `entries()` to show them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[EntryKey, Entry] = {}

    def update(self, events: Sequence[SourceEvent], diagnostics: Iterable[Diagnostic]) -> None:
        """Apply one batch: what its events touched is cleared, then its diagnostics added."""
        now = self._clock()
        previous = self._entries
        touched = self._touched(events)
        kept = {k: e for k, e in previous.items() if k[0] not in touched}
        for d in diagnostics:
            key = (subject_of(d), d.field)
            old = previous.get(key)
            first = old.first_seen if old is not None else now
            kept.pop(key, None)  # re-insert last: the dict stays ordered by last report
            kept[key] = Entry(d, first, now)
        while len(kept) > MAX_ENTRIES:
            del kept[next(iter(kept))]
        self._entries = kept

    def forget_source(self, source: str) -> None:
        """Drop every entry of source: for problems found anew each time (the consistency
        check of a translated set, Envoy's rejections), which the next finding replaces."""
        self._entries = {k: e for k, e in self._entries.items() if k[0][0] != source}

    def _touched(self, events: Sequence[SourceEvent]) -> set[Subject]:
        touched: set[Subject] = set()
        for event in events:
            touched.update(_resource_subject(event.source, r.key) for r in event.upserts)
            touched.update(_resource_subject(event.source, key) for key in event.deletes)
            touched.update((event.source, "", where) for where in event.fixed)
            if event.source != "files" and not any(not e.kind for e in event.errors):
                touched.update(s for s, _ in self._entries if s[0] == event.source and not s[1])
        return touched

    def locations(self, source: str) -> tuple[str, ...]:
        """The files (or addresses) of source that have entries naming no resource; a new
        adapter's first listing re-reads them all, so it marks them all as re-read."""
        return tuple(sorted({s[2] for s, _ in self._entries if s[0] == source and not s[1]}))

    def entries(self) -> list[Entry]:
        """The current problems, oldest report first."""
        return list(self._entries.values())

    def invalid_subjects(self) -> dict[str, int]:
        """Per source, how many resources (or files, or platform addresses) have an error."""
        counts: dict[str, int] = {}
        for subject in {k[0] for k, e in self._entries.items() if e.diagnostic.severity == "error"}:
            counts[subject[0]] = counts.get(subject[0], 0) + 1
        return counts

    def as_json(self) -> list[dict[str, Any]]:
        """The entries as /debug/config_errors shows them."""
        return [
            {
                **dataclasses.asdict(e.diagnostic),
                "message": str(e.diagnostic),
                "first_seen": _iso(e.first_seen),
                "last_seen": _iso(e.last_seen),
            }
            for e in self._entries.values()
        ]


def _iso(seconds: float) -> str:
    """UTC, to the millisecond: "2026-12-06T12:00:00.250Z"."""
    millis = int(seconds * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
