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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from meshagent.insight.messages import Message
from meshagent.model.labels import Labels, selector_matches
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, Provenance, RawResource
from meshagent.normalize.validate import locate

DocKey = tuple[str, str, str, str]  # RawResource.key: (source, kind, namespace, name)


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

    def document(self, prov: Provenance | None) -> RawResource | None:
        """The accepted document a model object came from, if it is known."""
        if prov is None:
            return None
        found = self.documents.get((prov.source, prov.kind, prov.namespace, prov.name))
        if found is None:  # the document named no namespace
            found = self.documents.get((prov.source, prov.kind, "", prov.name))
        return found

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


def selector_text(selector: Labels) -> str:
    """A label selector as Kubernetes prints one: "app=a,version=v1"."""
    return ",".join(f"{k}={v}" for k, v in selector)


class WorkloadLabels:
    """The distinct label sets of the workloads the input knows, by namespace."""

    def __init__(self, inp: AnalysisInput) -> None:
        by_ns: dict[str, set[Labels]] = {}
        snapshot = inp.snapshot
        for w in snapshot.workloads.values():
            by_ns.setdefault(w.namespace, set()).add(w.labels)
        for host, endpoints in snapshot.endpoints.items():
            service = snapshot.services.get(host)
            namespace = service.namespace if service is not None else ""
            labels = by_ns.setdefault(namespace, set())
            for e in endpoints:
                if e.labels:
                    labels.add(e.labels)
        for namespace, local in inp.local_workloads:
            by_ns.setdefault(namespace, set()).add(local)
        self._by_ns = by_ns
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
