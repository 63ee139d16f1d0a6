"""What an analysis reads: the snapshot, the accepted documents behind it, the normalizer's
diagnostics, and what the agent config says about this host.

"Proxy" here means a host a Gateway can select: every WorkloadEntry of the snapshot (each VM
runs a meshagent proxy, as a sidecar or a router) and, when an agent config is given, this
host's own node if it is a router (`node.type: router`, labels `node.labels`). "Workload"
means what a workloadSelector can select: WorkloadEntries, the labelled endpoints of services
(ServiceEntry endpoints, Consul instances, Kubernetes endpoints) and the agent config's local
workloads and node labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshagent.insight.messages import Message
from meshagent.model.labels import Labels, selector_matches
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, Provenance, RawResource
from meshagent.normalize.validate import locate

DocKey = tuple[str, str, str, str]  # RawResource.key: (source, kind, namespace, name)
T = TypeVar("T")


class Memo:
    """Results of per-object work, kept across analyses of successive snapshots.

    The model and the accepted documents are immutable and reused while unchanged, so a
    result keyed by the identity of the objects it was computed from stays right for as long
    as those very objects are in the input. Each analysis keeps only the entries it used.
    """

    def __init__(self, previous: Memo | None = None) -> None:
        self._old: dict[tuple[str, int], tuple[tuple[object, ...], Any]] = (
            previous._new if previous is not None else {}
        )
        self._new: dict[tuple[str, int], tuple[tuple[object, ...], Any]] = {}
        # Indexes kept up to date from one analysis to the next (e.g. _LabelIndex), by name.
        self.state: dict[str, Any] = previous.state if previous is not None else {}

    def get(self, name: str, parts: tuple[object, ...], compute: Callable[..., T], *args: Any) -> T:
        """compute(*args), or its result from an earlier analysis over the same parts (the
        very objects, or equal ones); args must derive from parts and the input only."""
        key = (name, id(parts[0]))
        found = self._old.get(key) or self._new.get(key)
        # Tuple equality tests identity first: cheap for the very same objects.
        if found is not None and found[0] == parts:
            self._new[key] = found
            result: T = found[1]
            return result
        value = compute(*args)
        self._new[key] = (parts, value)
        return value


@dataclass(frozen=True, slots=True)
class AnalysisInput:
    """Everything one analysis reads; nothing in it is altered.

    documents: the accepted raw documents by RawResource.key (to locate fields and read what
    the model does not keep, such as a port written without a protocol). diagnostics: the
    normalizer's current ones (reported as schema messages). routers: the label sets of this
    host's node when it is a router, by namespace. local_workloads: (namespace, labels) of
    the agent config's workloads and node.
    """

    snapshot: MeshSnapshot
    documents: Mapping[DocKey, RawResource] = field(default_factory=dict)
    diagnostics: Sequence[Diagnostic] = ()
    routers: tuple[tuple[str, Labels], ...] = ()
    local_workloads: tuple[tuple[str, Labels], ...] = ()
    root_namespace: str = "istio-system"
    # The normalizer's unresolved-reference warnings (Normalizer.references(), kept up to
    # date incrementally); None: the references check computes them from the snapshot.
    references: Sequence[Diagnostic] | None = None
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)
    # documents by kind (the same objects), when the caller keeps such an index (the agent's
    # analysis does); None: documents_of filters documents.
    kinds: Mapping[str, Mapping[DocKey, RawResource]] | None = field(
        default=None, compare=False, repr=False
    )
    # What a check read of documents, recorded for the agent's incremental analysis
    # (agent/analysis_runtime.py); None: not recorded.
    reads: DocumentReads | None = field(default=None, compare=False, repr=False)

    def document(self, prov: Provenance | None) -> RawResource | None:
        """The accepted document a model object came from, if it is known."""
        if prov is None:
            return None
        key = (prov.source, prov.kind, prov.namespace, prov.name)
        found = self.documents.get(key)
        if found is None:  # the document named no namespace
            found = self.documents.get((prov.source, prov.kind, "", prov.name))
        if self.reads is not None:
            self.reads.keys.add(key)
            self.reads.keys.add((prov.source, prov.kind, "", prov.name))
        return found

    def documents_of(self, kind: str) -> Mapping[DocKey, RawResource]:
        """The accepted documents of kind (every source) by key, in no particular order."""
        if self.reads is not None:
            self.reads.kinds.add(kind)
        if self.kinds is not None:
            return self.kinds.get(kind, {})
        return {key: raw for key, raw in self.documents.items() if key[1] == kind}

    def message(self, code: str, prov: Provenance, path: str, text: str) -> Message:
        """A message about the resource at prov, located at field path when lines are known."""
        raw = self.document(prov)
        location = locate(raw, path) if raw is not None else prov.location
        return Message(
            code=code,
            text=text,
            kind=prov.kind,
            namespace=prov.namespace,
            name=prov.name,
            location=location,
            field=path,
            source=prov.source,
        )


@dataclass(slots=True)
class DocumentReads:
    """The document keys (AnalysisInput.document) and whole kinds (documents_of) read."""

    keys: set[DocKey] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)


def label_sets(inp: AnalysisInput, endpoints: Sequence[Any]) -> frozenset[Labels]:
    """The distinct label sets of endpoints (usually one per version), memoized."""
    return inp.memo.get("label_sets", (endpoints,), lambda: frozenset(e.labels for e in endpoints))


def selector_text(selector: Labels) -> str:
    """A label selector as Kubernetes prints one: "app=a,version=v1"."""
    return ",".join(f"{k}={v}" for k, v in selector)


class WorkloadLabels:
    """The distinct label sets of the workloads the input knows, by namespace."""

    def __init__(self, inp: AnalysisInput) -> None:
        index = inp.memo.state.get("workload_labels")
        if not isinstance(index, _LabelIndex):
            index = inp.memo.state["workload_labels"] = _LabelIndex()
        self._by_ns = index.update(inp)
        self._root = inp.root_namespace

    def _candidates(self, namespace: str) -> Iterator[Labels]:
        if namespace == self._root:  # a root-namespace policy applies mesh-wide
            for sets in self._by_ns.values():
                yield from sets
        else:
            yield from self._by_ns.get(namespace, ())

    def any_match(self, namespace: str, selector: Labels) -> bool:
        """Whether selector picks at least one known workload in namespace."""
        return any(selector_matches(selector, labels) for labels in self._candidates(namespace))


_Contribution = tuple[str, frozenset[Labels]]  # (namespace, label sets) of a workload or host


class _LabelIndex:
    """WorkloadLabels' index, kept from one analysis to the next: each workload's and each
    host's label sets and namespace, counted by namespace; an update looks at the workloads
    and hosts that changed (SnapshotChanges when the snapshot follows the one indexed, else
    the maps compared by identity), not at the whole mesh."""

    def __init__(self) -> None:
        self._snapshot: MeshSnapshot | None = None
        self._local: tuple[tuple[str, Labels], ...] = ()
        self._of: dict[tuple[str, str], _Contribution] = {}  # ("w", name) or ("e", host)
        self._counts: dict[str, dict[Labels, int]] = {}

    def update(self, inp: AnalysisInput) -> Mapping[str, Mapping[Labels, int]]:
        """The label sets by namespace (with how many workloads or hosts have each)."""
        s, last = inp.snapshot, self._snapshot
        if last is None or inp.local_workloads != self._local:
            self._of, self._counts = {}, {}
            workloads: Iterable[str] = s.workloads
            hosts: Iterable[str] = s.endpoints
            for namespace, labels in inp.local_workloads:
                self._count(namespace, frozenset((labels,)), 1)
            self._local = inp.local_workloads
        elif s.changes is not None and s.changes.applies(last, s):
            workloads = s.changes.workloads
            hosts = s.changes.endpoints | s.changes.services
        else:
            workloads = _differ(last.workloads, s.workloads)
            hosts = _differ(last.endpoints, s.endpoints) | _differ(last.services, s.services)
        for name in workloads:
            w = s.workloads.get(name)
            self._set(("w", name), None if w is None else (w.namespace, frozenset((w.labels,))))
        for host in hosts:
            endpoints = s.endpoints.get(host)
            service = s.services.get(host)
            namespace = service.namespace if service is not None else ""
            found = None if endpoints is None else (namespace, label_sets(inp, endpoints))
            self._set(("e", host), found)
        self._snapshot = s
        return self._counts

    def _set(self, key: tuple[str, str], found: _Contribution | None) -> None:
        old = self._of.pop(key, None)
        if old is not None:
            self._count(old[0], old[1], -1)
        if found is not None:
            self._of[key] = found
            self._count(found[0], found[1], 1)

    def _count(self, namespace: str, sets: frozenset[Labels], step: int) -> None:
        counts = self._counts.setdefault(namespace, {})
        for labels in sets:
            left = counts.get(labels, 0) + step
            if left:
                counts[labels] = left
            else:
                del counts[labels]


def _differ(old: Mapping[str, object], new: Mapping[str, object]) -> set[str]:
    """The keys whose value is not the very same object in both (or is in one only)."""
    if old is new:
        return set()
    found = {k for k, v in new.items() if old.get(k) is not v}
    found.update(k for k in old if k not in new)
    return found
