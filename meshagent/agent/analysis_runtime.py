"""The running agent's analysis (meshagent.insight): the same messages as `meshagent analyze`.

The snapshot checks run in a worker thread, only when the snapshot's version changed since
the last run, and at most once per ANALYSIS_INTERVAL_S (a burst of changes is analyzed once,
at its end); their messages are kept. The schema messages come from
the agent's current diagnostics (agent/diagnostics.py) whenever they are read, so a fixed or
newly rejected document shows at once. Exposed as GET /debug/analyze (admin socket), the
gauge `meshagent_analysis_messages{code,level}` (computed at scrape time) and a section of
the status page.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.insight.analysis import CHECKS, analyze, finish
from meshagent.insight.cli import config_facts
from meshagent.insight.context import AnalysisInput, DocKey, Memo
from meshagent.insight.messages import TYPES, Message
from meshagent.insight.policy_checks import schema_message
from meshagent.insight.report import counts
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, RawResource

ANALYSIS_INTERVAL_S = 1.0  # the least time between two analyses of a changing mesh
CONFIG_SOURCES = ("files", "consul", "kubernetes")  # the table's other sources are runtime
SNAPSHOT_CHECKS = tuple(c for c in CHECKS if c[0] != "schema")  # schema: from the table


class AgentAnalysis:
    """The last analysis of the served snapshot, and the messages of current diagnostics.

    run() is called from one worker thread at a time (the agent's processing task awaits
    it); the reads (messages, report, the gauge) may come from any thread.
    """

    def __init__(self, config: Any, diagnostics: Callable[[], Sequence[Diagnostic]]) -> None:
        self._facts = config_facts(config)
        self._diagnostics = diagnostics
        self._lock = threading.Lock()
        self._version: int | None = None
        self._messages: tuple[Message, ...] = ()
        self._duration_ms = 0.0
        self._analyzed_at = 0.0
        self._memo = Memo()  # per-object results of the last run (context.Memo)

    def stale(self, snapshot: MeshSnapshot) -> bool:
        """Whether snapshot was not analyzed yet."""
        return self._version != snapshot.version

    def run(self, snapshot: MeshSnapshot, normalizer: Any) -> None:
        """capture() then analyze(): for callers that own the normalizer meanwhile."""
        self.analyze(self.capture(snapshot, normalizer))

    def capture(self, snapshot: MeshSnapshot, normalizer: Any) -> AnalysisInput:
        """What an analysis of snapshot reads of the normalizer that built it (its accepted
        documents and unresolved references): call it while no one else uses the
        normalizer. The result is immutable and may be analyzed in any thread later."""
        documents: dict[DocKey, RawResource] = {}
        accepted: Callable[[str], dict[Any, Any]] | None = getattr(normalizer, "accepted", None)
        if accepted is not None:
            for source in CONFIG_SOURCES:
                documents.update(accepted(source))
        references = getattr(normalizer, "references", None)
        return AnalysisInput(
            snapshot=snapshot,
            documents=documents,
            references=references() if references is not None else None,
            **self._facts,
        )

    def analyze(self, captured: AnalysisInput) -> None:
        """Run the snapshot checks over captured and keep the messages (one thread at a
        time: the per-object results of the last run are reused)."""
        start = time.perf_counter()
        memo = Memo(self._memo)
        found = tuple(analyze(dataclasses.replace(captured, memo=memo), SNAPSHOT_CHECKS))
        self._memo = memo
        snapshot = captured.snapshot
        with self._lock:
            self._version = snapshot.version
            self._messages = found
            self._duration_ms = (time.perf_counter() - start) * 1000
            self._analyzed_at = time.time()

    def messages(self) -> list[Message]:
        """The messages now: the snapshot's last analysis and the current diagnostics'."""
        with self._lock:
            found = list(self._messages)
        for d in self._diagnostics():
            if d.source in CONFIG_SOURCES and not d.reason.startswith("Referenced "):
                found.append(schema_message(d))
        return finish(found)

    def report(self) -> dict[str, Any]:
        """/debug/analyze: the messages as istioctl's JSON, counts per level, and when."""
        messages = self.messages()
        levels = {
            lv: sum(m.level.title == lv for m in messages) for lv in ("Error", "Warning", "Info")
        }
        with self._lock:
            return {
                "snapshot_version": self._version,
                "analyzed_at": self._analyzed_at or None,
                "duration_ms": round(self._duration_ms, 1),
                "counts": levels,
                "messages": [m.as_json() for m in messages],
            }

    def register(self, registry: CollectorRegistry) -> None:
        """Expose meshagent_analysis_messages{code,level} in registry."""
        registry.register(_Gauge(self))


class _Gauge(Collector):
    """Messages per code and level, counted when scraped (every known code, 0 when none)."""

    def __init__(self, analysis: AgentAnalysis) -> None:
        self._analysis = analysis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "meshagent_analysis_messages",
            "Current analysis messages (meshagent analyze) by code and level",
            labels=["code", "level"],
        )
        found = counts(self._analysis.messages())
        for code, t in TYPES.items():
            family.add_metric([code, t.level.title], found.get((code, t.level.title), 0))
        yield family
