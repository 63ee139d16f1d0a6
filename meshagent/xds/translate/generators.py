"""The generators, one per concern, and the per-object caches that make them incremental.

Each generator turns the Context into resources of one type. Each keeps, per host (or per port),
the model objects its last output was built from and reuses that output while they are the very
same objects: the normalizer shares unchanged objects between snapshots, so a one-endpoint change
rebuilds one ClusterLoadAssignment and nothing else.

This module holds the generator protocol, the reuse helpers every generator shares
(identical, keep_unchanged, PlanCache) and the per-host cluster and endpoint generators; the
sidecar's outbound listeners and routes are in outbound_generators.py, the other concerns in
their own modules (gateway, inbound, transparent, jwt, secrets).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshagent.model import Endpoint, Service
from meshagent.xds import typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate.clusters import ClusterInputs
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.encode import (
    ClusterTemplates,
    EndpointEncoder,
)
from meshagent.xds.translate.locality import LocalityPlan, failover_groups, locality_weights
from meshagent.xds.translate.networks import network_view, prioritized_view
from meshagent.xds.translate.policy import ClusterPlan, Discovery, plan_clusters
from meshagent.xds.translate.resolve import (
    all_source_endpoints,
    has_sources,
    source_hosts,
    sources,
)
from meshagent.xds.translate.tls import auto_mtls, mesh_tls_for

Key = tuple[object, ...]
Entry = tuple[Key, list[Resource]]  # one host's output and the objects it was built from


def same_key(old: Key, new: Key) -> bool:
    """Whether cached output built from the model objects in old still holds for new.

    Usually the very same objects (the normalizer shares unchanged ones); an object the
    normalizer rebuilt with equal contents counts as unchanged too.
    """
    return len(old) == len(new) and all(a is b or a == b for a, b in zip(old, new, strict=True))


def identical(old: Key, new: Key) -> bool:
    """Identity comparison, for keys of Envoy messages (whose == would compare contents)."""
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))


def keep_unchanged(old: list[Resource], new: list[Resource]) -> list[Resource]:
    """new, with each resource whose bytes did not change replaced by its old object, so that
    consumers comparing by identity see no change where there is none (old itself when
    nothing changed)."""
    previous = {r.name: r for r in old}
    out = []
    for resource in new:
        before = previous.get(resource.name)
        out.append(
            before if before is not None and before.version == resource.version else resource
        )
    return old if identical(tuple(out), tuple(old)) else out  # nothing new: the same list


class Generator(Protocol):
    """One concern of the translation. `name` appears in errors; output is one type URL.

    A generator returns the very same list object as last time when nothing changed.
    """

    name: str
    type_url: str

    def generate(self, ctx: Context) -> list[Resource]:
        """Every resource of this concern; the list must not be altered by the caller."""
        ...


@dataclass(frozen=True, slots=True)
class Patch:
    """The previous output of a generator with `replaced` swapped in by name: same names,
    same order. `resources` gives the whole output when a consumer needs it."""

    replaced: Mapping[str, Resource]
    resources: Callable[[], list[Resource]]


@runtime_checkable
class IncrementalGenerator(Generator, Protocol):
    """A generator that can tell what changed instead of returning everything."""

    def generate_patch(self, ctx: Context) -> Patch | list[Resource]:
        """A Patch when ctx.changes allow it, else every resource (as generate)."""
        ...


class PlanCache:
    """Cluster plans per host, shared by the cluster and endpoint generators."""

    def __init__(self) -> None:
        self._by_host: dict[str, tuple[Key, tuple[ClusterPlan, ...]]] = {}
        # host -> the other hosts its clusters take endpoints from (resolve.py); few hosts
        self._sources: dict[str, tuple[str, ...]] = {}
        # Plans already checked against the Context in _checked_in: the second generator
        # asking about a host within one generate() call gets them without a comparison.
        self._checked_in: Context | None = None
        self._checked: dict[str, tuple[ClusterPlan, ...]] = {}

    def plans(self, ctx: Context, service: Service) -> tuple[ClusterPlan, ...]:
        """The cluster plans of service, rebuilt only when it or its rule changed."""
        if ctx is not self._checked_in:
            self._checked_in, self._checked = ctx, {}
        host = service.host
        plans = self._checked.get(host)
        if plans is not None:
            return plans
        rule = ctx.index.rules.rule_for(host)
        key: Key = (service, rule)
        cached = self._by_host.get(host)
        if cached is not None and same_key(cached[0], key):
            plans = cached[1]
        else:
            plans = plan_clusters(service, rule, ctx.proxy)
            self._by_host[host] = (key, plans)
            if self._sources or (rule is not None and (rule.redirect or rule.failover)):
                self._note_sources(host, plans)
        self._checked[host] = plans
        return plans

    def _note_sources(self, host: str, plans: tuple[ClusterPlan, ...]) -> None:
        # Called only when host's rule resolves elsewhere or some host does: most meshes
        # have no redirect or failover, and their hosts skip the scan.
        hosts = tuple(sorted({h for p in plans for h in source_hosts(p)}))
        if hosts:
            self._sources[host] = hosts
        else:
            self._sources.pop(host, None)

    def source_key(self, ctx: Context, host: str) -> Key:
        """What host's output depends on in the hosts its clusters take endpoints from."""
        found = self._sources.get(host)
        if not found:
            return ()
        endpoints, rules = ctx.snapshot.endpoints, ctx.index.rules
        return tuple(x for h in found for x in (endpoints.get(h, ()), rules.rule_for(h)))

    def with_dependents(self, hosts: frozenset[str] | set[str]) -> set[str]:
        """hosts, and the hosts whose clusters take endpoints from any of them."""
        out = set(hosts)
        for host, found in self._sources.items():
            if not out.isdisjoint(found):
                out.add(host)
        return out

    def retain(self, services: Mapping[str, Service]) -> None:
        """Forget the plans of hosts that are no longer services."""
        if len(self._by_host) > len(services):
            self._by_host = {h: v for h, v in self._by_host.items() if h in services}
            self._sources = {h: v for h, v in self._sources.items() if h in services}


class PerHostGenerator(ABC):
    """Resources built host by host, each host's output cached by the objects it came from.

    A full pass (services or rules changed) walks every host in order, reusing cached output
    whose inputs are identical. Otherwise only hosts whose endpoints changed are revisited.
    """

    name = ""
    type_url = ""

    def __init__(self, plans: PlanCache) -> None:
        self._plans = plans
        self._by_host: dict[str, Entry] = {}
        self._last: list[Resource] | None = []  # None: _by_host changed since it was built

    def reset_build_caches(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called before a full pass: drop helper caches that only grow between passes."""

    @abstractmethod
    def key(self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]) -> Key:
        """The objects this host's output depends on."""

    @abstractmethod
    def build(
        self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]
    ) -> list[Resource]:
        """This host's resources."""

    def _host(self, ctx: Context, service: Service) -> Entry:
        plans = self._plans.plans(ctx, service)
        key = self.key(ctx, service, plans)
        cached = self._by_host.get(service.host)
        if cached is None:
            return key, self.build(ctx, service, plans)
        if same_key(cached[0], key):
            return cached
        return key, keep_unchanged(cached[1], self.build(ctx, service, plans))

    def _full(self, ctx: Context) -> None:
        services = ctx.snapshot.services
        self.reset_build_caches()
        if self._by_host:
            self._by_host = {
                h: self._host(ctx, services[h]) for h in ctx.index.routing.sorted_hosts
            }
        else:
            self._by_host = self._first(ctx, services)
        self._plans.retain(services)

    def _first(self, ctx: Context, services: Mapping[str, Service]) -> dict[str, Entry]:
        """Every host built, with nothing cached to compare with (the first pass, the
        costliest one: a whole mesh)."""
        plans_of, key, build = self._plans.plans, self.key, self.build
        out: dict[str, Entry] = {}
        for host in ctx.index.routing.sorted_hosts:
            service = services[host]
            plans = plans_of(ctx, service)
            out[host] = (key(ctx, service, plans), build(ctx, service, plans))
        return out

    def _partial(self, ctx: Context) -> dict[str, Resource] | None:
        """Revisit hosts whose service or endpoints changed: the resources replaced by name,
        or None when some host's resource names changed (the output's shape)."""
        services = ctx.snapshot.services
        replaced: dict[str, Resource] | None = {}
        for host in sorted(self._plans.with_dependents(ctx.changes.dirty_hosts)):
            service = services.get(host)
            if service is None:
                continue
            old = self._by_host.get(host)
            if old is None:  # only after an earlier failure: start over
                self._full(ctx)
                self._last = None
                return None
            entry = self._host(ctx, service)
            if entry is old:
                continue
            self._by_host[host] = entry
            self._last = None
            if replaced is not None:
                replaced = _replacements(old[1], entry[1], replaced)
        return replaced

    def resources(self) -> list[Resource]:
        """Every resource of the current output, host by host (the list is shared)."""
        if self._last is None:
            self._last = [r for _, built in self._by_host.values() for r in built]
        return self._last

    def generate_patch(self, ctx: Context) -> Patch | list[Resource]:
        if ctx.changes.all_hosts:
            self._full(ctx)
            self._last = None
            return self.resources()
        replaced = self._partial(ctx)
        if replaced is None:
            return self.resources()
        return Patch(replaced, self.resources)

    def generate(self, ctx: Context) -> list[Resource]:
        out = self.generate_patch(ctx)
        return out if isinstance(out, list) else out.resources()


def _replacements(
    old: list[Resource], new: list[Resource], into: dict[str, Resource]
) -> dict[str, Resource] | None:
    """into, plus the resources of new that replace another object of old under the same
    name; None when the names (or their order) differ."""
    if len(old) != len(new):
        return None
    for before, after in zip(old, new, strict=True):
        if before.name != after.name:
            return None
        if before is not after:
            into[after.name] = after
    return into


class ClustersGenerator(PerHostGenerator):
    """One Cluster per service port and per (port, subset) of the host's DestinationRule."""

    name = "clusters"
    type_url = typeurls.CLUSTER

    def key(self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]) -> Key:
        # Only DNS clusters carry their hosts inline, and mesh mTLS names the endpoints'
        # identities, so only those depend on the endpoints.
        if not _reads_endpoints(plans, mtls=bool(ctx.proxy.certificates)):
            return (plans,)
        endpoints = ctx.snapshot.endpoints.get(service.host, ())
        return (plans, endpoints, *self._plans.source_key(ctx, service.host))

    def __init__(self, plans: PlanCache) -> None:
        super().__init__(plans)
        self._templates = ClusterTemplates()

    def reset_build_caches(self) -> None:
        self._templates = ClusterTemplates()

    def build(
        self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]
    ) -> list[Resource]:
        if ctx.proxy.certificates:
            return self._build_with_mtls(ctx, service, plans)
        # Without certificates, no cluster has mesh mTLS: most are a shared template after
        # their name, and only the others need their inputs.
        shared = self._templates.shared
        out = []
        for p in plans:
            value = shared(p)
            if value is None:
                endpoints = ctx.snapshot.endpoints.get(service.host, ())
                value = self._templates.serialize(p, ClusterInputs(endpoints=endpoints))
            out.append(Resource.from_value(p.name, typeurls.CLUSTER, value))
        return out

    def _build_with_mtls(
        self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]
    ) -> list[Resource]:
        endpoints = ctx.snapshot.endpoints.get(service.host, ())
        plain = ClusterInputs(endpoints=endpoints)
        # Failover and redirect targets answer for this host too: their identities count.
        peers = all_source_endpoints(plans, service.host, ctx.snapshot.endpoints)
        mesh = ClusterInputs(endpoints, mesh_tls_for(ctx.proxy.trust_domain, service, peers))
        serialize = self._templates.serialize
        return [
            Resource.from_value(
                p.name, typeurls.CLUSTER, serialize(p, mesh if auto_mtls(p) else plain)
            )
            for p in plans
        ]


def _reads_endpoints(plans: tuple[ClusterPlan, ...], *, mtls: bool) -> bool:
    """Whether any of plans' clusters is built from endpoints: DNS ones, and mesh mTLS ones
    when the proxy has certificates."""
    for p in plans:
        if p.discovery is Discovery.STRICT_DNS or p.discovery is Discovery.LOGICAL_DNS:
            return True
        if mtls and auto_mtls(p):
            return True
    return False


class EndpointsGenerator(PerHostGenerator):
    """A ClusterLoadAssignment for every EDS cluster."""

    name = "endpoints"
    type_url = typeurls.ENDPOINT

    def __init__(self, plans: PlanCache) -> None:
        super().__init__(plans)
        self._encoder = EndpointEncoder()

    def reset_build_caches(self) -> None:
        self._encoder = EndpointEncoder()

    def key(self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]) -> Key:
        proxy = ctx.proxy  # its network and gateways: multi-network rewrites
        endpoints = ctx.snapshot.endpoints.get(service.host, ())
        source = self._plans.source_key(ctx, service.host)
        if source:
            return (plans, endpoints, proxy.network, proxy.network_gateways, *source)
        return (plans, endpoints, proxy.network, proxy.network_gateways)

    def build(
        self, ctx: Context, service: Service, plans: tuple[ClusterPlan, ...]
    ) -> list[Resource]:
        endpoints = ctx.snapshot.endpoints.get(service.host, ())
        encode = self._encoder.load_assignment
        # Without a network of its own, the proxy reaches every endpoint directly: the
        # network view is the identity, and it is skipped (once per cluster of the mesh).
        network = ctx.proxy.network
        out = []
        for plan in plans:
            if plan.discovery is not Discovery.EDS:
                continue
            if has_sources(plan):
                value = self._prioritized(ctx, plan)
            elif plan.locality is not None:
                value = self._by_locality(ctx, plan, plan.locality, endpoints)
            elif network:
                value = encode(*network_view(plan, endpoints, ctx.proxy))
            else:
                value = encode(plan, endpoints)
            out.append(Resource.from_value(plan.name, typeurls.ENDPOINT, value))
        return out

    def _prioritized(self, ctx: Context, plan: ClusterPlan) -> bytes:
        groups = [
            (prioritized_view(plan, labels, found, ctx.proxy), own)
            for labels, found, own in sources(plan, ctx.snapshot.endpoints, ctx.index.rules)
        ]
        return self._encoder.prioritized_assignment(plan, groups)

    def _by_locality(
        self,
        ctx: Context,
        plan: ClusterPlan,
        locality: LocalityPlan,
        endpoints: tuple[Endpoint, ...],
    ) -> bytes:
        chosen = prioritized_view(plan, plan.labels, endpoints, ctx.proxy)
        if locality.weights:
            weights = locality_weights(locality, chosen)
            return self._encoder.prioritized_assignment(plan, [(chosen, True)], weights)
        groups = [(group, True) for group in failover_groups(locality, chosen)]
        return self._encoder.prioritized_assignment(plan, groups)
