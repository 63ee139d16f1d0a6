"""The running agent's analysis (meshagent.insight): the same messages as `meshagent analyze`.

The snapshot checks run in a worker thread, only when the snapshot's version changed since
the last run, and at most once per ANALYSIS_INTERVAL_S (a burst of changes is analyzed once,
at its end); their messages are kept. The schema messages come from
the agent's current diagnostics (agent/diagnostics.py) whenever they are read, so a fixed or
newly rejected document shows at once. Exposed as GET /debug/analyze (admin socket), the
gauge `meshagent_analysis_messages{code,level}` (computed at scrape time) and a section of
the status page.

Incremental: the accepted documents are kept up to date from the normalizer's changed keys
(Normalizer.accepted_changes), and a check runs again only when what it read changed: the
snapshot maps it declares (SNAPSHOT_READS: the normalizer shares unchanged maps between
snapshots) or a document it read (AnalysisInput records them). One WorkloadEntry change
re-runs the checks of workloads and endpoints, not the ServiceEntry checks, and costs the
size of the change (issue 17). The messages are those of a whole analysis.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meshagent.insight.analysis import CHECKS, Check, finish, run_check
from meshagent.insight.cli import config_facts
from meshagent.insight.context import AnalysisInput, DocKey, DocumentReads, Memo
from meshagent.insight.messages import TYPES, Message
from meshagent.insight.policy_checks import schema_message
from meshagent.insight.report import counts
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, RawResource

ANALYSIS_INTERVAL_S = 1.0  # the least time between two analyses of a changing mesh
CONFIG_SOURCES = ("files", "consul", "kubernetes")  # the table's other sources are runtime
SNAPSHOT_CHECKS = tuple(c for c in CHECKS if c[0] != "schema")  # schema: from the table
# The MeshSnapshot maps each check reads (besides documents, which are recorded as it reads
# them, and the agent config's facts, fixed for an AgentAnalysis). A check not named here
# runs every time. Keep in step with the checks (insight/*_checks.py).
_POLICIES = ("authorization_policies", "peer_authentications", "request_authentications")
SNAPSHOT_READS: dict[str, tuple[str, ...]] = {
    "gateway_bindings": ("gateways", "virtual_services"),
    "conflicting_hosts": ("virtual_services",),
    "shadowed_rules": ("virtual_services",),
    "subsets": ("destination_rules", "workload_destination_rules", "services", "endpoints"),
    "selectors": (
        *_POLICIES,
        "sidecars",
        "workload_destination_rules",
        "workloads",
        "endpoints",
        "services",
    ),
    "sidecars": ("sidecars",),
    "gateway_selectors": ("workloads", "gateways"),
    "conflicting_gateways": ("gateways",),
    "service_entry_protocols": (),
    "unset_protocols": (),
}


@dataclasses.dataclass(frozen=True, slots=True)
class _CheckRun:
    """One check's last run: the snapshot maps it read (the objects), the documents it
    read, its messages and its per-object results."""

    maps: tuple[object, ...]
    reads: DocumentReads
    messages: tuple[Message, ...]
    memo: Memo

    def holds(self, maps: tuple[object, ...], changed: set[DocKey]) -> bool:
        """Whether these messages still hold: the same maps, none of its documents changed."""
        if len(maps) != len(self.maps):
            return False
        if any(a is not b for a, b in zip(maps, self.maps, strict=True)):
            return False
        keys, kinds = self.reads.keys, self.reads.kinds
        return not any(key in keys or key[1] in kinds for key in changed)


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
        self._runs: dict[str, _CheckRun] = {}  # each check's last run
        # The accepted documents, kept up to date from the normalizer's changed keys
        # (capture), all of them and by kind; the normalizer they follow (None: copied whole
        # at each capture); the keys changed since the last analysis (None: unknown).
        self._documents: dict[DocKey, RawResource] = {}
        self._kinds: dict[str, dict[DocKey, RawResource]] = {}
        self._follows: Any = None
        self._changed: set[DocKey] | None = None

    def stale(self, snapshot: MeshSnapshot) -> bool:
        """Whether snapshot was not analyzed yet."""
        return self._version != snapshot.version

    def run(self, snapshot: MeshSnapshot, normalizer: Any) -> None:
        """capture() then analyze(): for callers that own the normalizer meanwhile."""
        self.analyze(self.capture(snapshot, normalizer))

    def capture(self, snapshot: MeshSnapshot, normalizer: Any) -> AnalysisInput:
        """What an analysis of snapshot reads of the normalizer that built it (its accepted
        documents and unresolved references): call it while no one else uses the
        normalizer, and analyze the result before the next capture (the documents are kept
        up to date in place: at the cost of what changed since the last capture)."""
        changes: Callable[[], set[DocKey]] | None = getattr(normalizer, "accepted_changes", None)
        accepted_of = getattr(normalizer, "accepted_of", None)
        if changes is not None and accepted_of is not None and normalizer is self._follows:
            try:
                keys = [k for k in changes() if k[0] in CONFIG_SOURCES]
                for key, raw in accepted_of(keys).items():
                    self._keep(key, raw)
            except BaseException:
                self._follows = None  # the changes taken are not all kept: copy whole next
                raise
            if self._changed is not None:
                self._changed.update(keys)
        else:
            if changes is not None:
                changes()  # from here on, the changes are followed
            self._copy_whole(normalizer)
            self._follows = normalizer if accepted_of is not None else None
            self._changed = None
        references = getattr(normalizer, "references", None)
        return AnalysisInput(
            snapshot=snapshot,
            documents=MappingProxyType(self._documents),
            kinds=MappingProxyType(self._kinds),
            references=references() if references is not None else None,
            **self._facts,
        )

    def _copy_whole(self, normalizer: Any) -> None:
        self._documents, self._kinds = {}, {}
        accepted: Callable[[str], dict[Any, Any]] | None = getattr(normalizer, "accepted", None)
        if accepted is not None:
            for source in CONFIG_SOURCES:
                for key, raw in accepted(source).items():
                    self._keep(key, raw)

    def _keep(self, key: DocKey, raw: RawResource | None) -> None:
        if raw is None:
            self._documents.pop(key, None)
            self._kinds.get(key[1], {}).pop(key, None)
        else:
            self._documents[key] = raw
            self._kinds.setdefault(key[1], {})[key] = raw

    def analyze(self, captured: AnalysisInput) -> None:
        """Run the snapshot checks over captured and keep the messages (one thread at a
        time): a check whose input did not change since its last run keeps its messages."""
        start = time.perf_counter()
        changed, self._changed = self._changed, set()
        snapshot = captured.snapshot
        found: dict[Message, None] = {}
        runs: dict[str, _CheckRun] = {}
        try:
            for name, check in SNAPSHOT_CHECKS:
                run = self._check(name, check, captured, changed)
                runs[name] = run
                for message in run.messages:
                    found.setdefault(message, None)
        except BaseException:
            self._changed = None  # what changed is not known any more: all run next time
            raise
        self._runs = runs
        messages = tuple(finish(found))
        with self._lock:
            self._version = snapshot.version
            self._messages = messages
            self._duration_ms = (time.perf_counter() - start) * 1000
            self._analyzed_at = time.time()

    def _check(
        self, name: str, check: Check, captured: AnalysisInput, changed: set[DocKey] | None
    ) -> _CheckRun:
        """The check's last run when it still holds, else a new one."""
        last = self._runs.get(name)
        fields = SNAPSHOT_READS.get(name)
        maps = tuple(getattr(captured.snapshot, f) for f in fields or ())
        known = last is not None and fields is not None and changed is not None
        if known and last is not None and changed is not None and last.holds(maps, changed):
            return last
        memo = Memo(last.memo if last is not None else None)
        reads = DocumentReads()
        inp = dataclasses.replace(captured, memo=memo, reads=reads)
        messages = tuple(run_check(name, check, inp))
        if any(m.code == "IST0001" for m in messages):  # a bug: its kept state is suspect
            memo = Memo()
        return _CheckRun(maps, reads, messages, memo)

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
