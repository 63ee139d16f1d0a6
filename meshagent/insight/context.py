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

from collections.abc import Callable, Iterator, Mapping, Sequence
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

    def documents_of(self, kind: str) -> Iterator[RawResource]:
        """The accepted documents of kind (every source), in no particular order."""
        if self.reads is not None:
            self.reads.kinds.add(kind)
        if self.kinds is not None:
            yield from self.kinds.get(kind, {}).values()
            return
        for key, raw in self.documents.items():
            if key[1] == kind:
                yield raw

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
        s = inp.snapshot
        parts = (s.workloads, s.endpoints, s.services, inp.local_workloads)
        self._by_ns = inp.memo.get("workload_labels", parts, self._index, inp)
        self._root = inp.root_namespace

    @staticmethod
    def _index(inp: AnalysisInput) -> dict[str, set[Labels]]:
        by_ns: dict[str, set[Labels]] = {}
        snapshot = inp.snapshot
        for w in snapshot.workloads.values():
            by_ns.setdefault(w.namespace, set()).add(w.labels)
        for host, endpoints in snapshot.endpoints.items():
            service = snapshot.services.get(host)
            namespace = service.namespace if service is not None else ""
            by_ns.setdefault(namespace, set()).update(label_sets(inp, endpoints))
        for namespace, local in inp.local_workloads:
            by_ns.setdefault(namespace, set()).add(local)
        return by_ns

    def _candidates(self, namespace: str) -> Iterator[Labels]:
        if namespace == self._root:  # a root-namespace policy applies mesh-wide
            for sets in self._by_ns.values():
                yield from sets
        else:
            yield from self._by_ns.get(namespace, ())

    def any_match(self, namespace: str, selector: Labels) -> bool:
        """Whether selector picks at least one known workload in namespace."""
        return any(selector_matches(selector, labels) for labels in self._candidates(namespace))
