"""The generators, one per concern, and the per-object caches that make them incremental.

Each generator turns the Context into resources of one type. Each keeps, per host (or per port),
the model objects its last output was built from and reuses that output while they are the very
same objects: the normalizer shares unchanged objects between snapshots, so a one-endpoint change
rebuilds one ClusterLoadAssignment and nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshagent.errors import ConfigError
from meshagent.model import Endpoint, Service, TcpRoute, VirtualService
from meshagent.model.gateway import MESH_GATEWAY, match_applies
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate.clusters import ClusterInputs
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.encode import (
    ClusterTemplates,
    EndpointEncoder,
    WireVirtualHost,
    route_configuration_bytes,
    wire_virtual_host,
)
from meshagent.xds.translate.listeners import build_http_listener, build_tcp_listener
from meshagent.xds.translate.locality import LocalityPlan, failover_groups, locality_weights
from meshagent.xds.translate.networks import network_view, prioritized_view
from meshagent.xds.translate.policy import ClusterPlan, Discovery, plan_clusters
from meshagent.xds.translate.resolve import (
    all_source_endpoints,
    has_sources,
    source_hosts,
    sources,
)
from meshagent.xds.translate.route_action import RouteScope, destination_cluster
from meshagent.xds.translate.routes import (
    address_domains,
    catch_all_virtual_host,
    domains_for,
)
from meshagent.xds.translate.telemetry import (
    NO_TELEMETRY,
    ListenerTelemetry,
    client_telemetry,
    telemetry_inputs,
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


class ClientTelemetry:
    """The CLIENT side's access logs and tracing (telemetry.py), rebuilt only when the
    Telemetries or the providers' services change."""

    def __init__(self) -> None:
        self._key: Key = ()
        self.value: ListenerTelemetry = NO_TELEMETRY

    def update(self, ctx: Context) -> bool:
        """Recompute for ctx when its inputs changed (rare); whether it was recomputed.
        Listeners rebuilt with an equal value keep their objects (keep_unchanged)."""
        key = (ctx.proxy, *telemetry_inputs(ctx.snapshot, ctx.proxy))
        if identical(key, self._key):
            return False
        self._key = key
        self.value = client_telemetry(ctx.snapshot, ctx.proxy)
        return True


class HttpListenersGenerator:
    """One outbound HTTP listener per HTTP port number of any service."""

    name = "http-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], Resource] = {}
        self._none: list[Resource] = []  # one object: consumers compare lists by identity
        self._last: list[Resource] = []
        self._telemetry = ClientTelemetry()

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.proxy.capture:  # the ports are chains of virtualOutbound (transparent.py)
            return self._none
        if self._telemetry.update(ctx):
            self._cache.clear()
        out: list[Resource] = []
        proxy = ctx.proxy
        for port in ctx.index.http_ports:
            key = (proxy.outbound_bind(port), proxy.outbound_port(port), port)
            found = self._cache.get(key)
            if found is None:
                listener = build_http_listener(*key, self._telemetry.value)
                found = self._cache[key] = Resource.pack(listener.name, listener)
            out.append(found)
        self._last = keep_unchanged(self._last, out)
        return self._last


def tcp_route_for(vs: VirtualService | None, port: int) -> TcpRoute | None:
    """The first TCP route of vs that applies to port.

    Matches on subnets or source labels cannot hold for a loopback listener of a proxy
    without labels, so only port (or no condition at all) counts.
    """
    if vs is None:
        return None
    for route in vs.tcp:
        if not route.matches or any(
            (m.port is None or m.port == port)
            and not m.destination_subnets
            and not m.source_labels
            and match_applies(m.gateways, vs.namespace, MESH_GATEWAY)
            for m in route.matches
        ):
            return route
    return None


def tcp_clusters(ctx: Context, host: str, port: int) -> list[tuple[str, int]]:
    """Where TCP to host:port goes: (cluster, weight) of its VirtualService's TCP route, else
    the port's cluster of host."""
    route = tcp_route_for(ctx.index.routing.vs_for(host), port)
    if route is None or not route.route:
        return [(names.cluster_name(port, host), 100)]
    scope = RouteScope(port, ctx.snapshot.services, ctx.index.rules)
    return [(destination_cluster(w.destination, scope), w.weight) for w in route.route]


class TcpListenersGenerator:
    """A TCP listener for each TcpBinding of the proxy, to its cluster or weighted clusters."""

    name = "tcp-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._last: list[Resource] = []
        self._telemetry = ClientTelemetry()

    def generate(self, ctx: Context) -> list[Resource]:
        self._telemetry.update(ctx)
        taken = {
            names.listener_name(ctx.proxy.outbound_bind(p), ctx.proxy.outbound_port(p))
            for p in ctx.index.http_ports
        }
        out: list[Resource] = []
        for binding in sorted(ctx.proxy.tcp_bindings, key=lambda b: (b.host, b.port)):
            name = names.listener_name(binding.listen_address, binding.listen_port)
            if name in taken:
                raise ConfigError(
                    f"TCP binding {binding.host}:{binding.port} listens on {name}, "
                    "which another outbound listener already uses",
                    field="tcp_bindings",
                )
            taken.add(name)
            listener = build_tcp_listener(
                binding.listen_address,
                binding.listen_port,
                names.tcp_stat_prefix(names.cluster_name(binding.port, binding.host)),
                tcp_clusters(ctx, binding.host, binding.port),
                self._telemetry.value,
            )
            out.append(Resource.pack(name, listener))
        # Few and cheap to build, but consumers compare by identity: keep unchanged objects.
        self._last = keep_unchanged(self._last, out)
        return self._last


class RoutesGenerator:
    """One RouteConfiguration per HTTP port, rebuilt only when one of its virtual hosts is."""

    name = "routes"
    type_url = typeurls.ROUTE

    def __init__(self) -> None:
        # Virtual hosts are kept serialized (encode/route.py): configurations join their bytes.
        self._vhosts: dict[tuple[str, int], tuple[Key, WireVirtualHost]] = {}
        self._vhosts_next: dict[tuple[str, int], tuple[Key, WireVirtualHost]] = {}
        self._configs: dict[int, tuple[Key, Resource]] = {}
        self._destinations: dict[int, tuple[VirtualService, tuple[str, ...]]] = {}
        self._last: list[Resource] = []
        self._catch_all_vhost: WireVirtualHost | None = None  # the proxy's; built once

    def _destination_hosts(self, vs: VirtualService) -> tuple[str, ...]:
        cached = self._destinations.get(id(vs))
        if cached is not None and cached[0] is vs:
            return cached[1]
        hosts = {w.destination.host for r in vs.http for w in r.route}
        hosts |= {m.destination.host for r in vs.http for m in r.mirrors}
        found = tuple(sorted(hosts))
        self._destinations[id(vs)] = (vs, found)
        return found

    def _vhost_key(self, ctx: Context, host: str, vs: VirtualService | None) -> Key:
        """Everything a virtual host is built from: routed and destination services, rules."""
        services = ctx.snapshot.services
        rules = ctx.index.rules
        if vs is None:  # the default route: to host's own port, hashed by host's own rule
            return (services.get(host), rules.rule_for(host))
        hosts = self._destination_hosts(vs)
        return (
            services.get(host),
            vs,
            *(services.get(h) for h in hosts),
            *(rules.rule_for(h) for h in hosts),
        )

    def _vhost(self, ctx: Context, scope: RouteScope, host: str, namespace: str) -> WireVirtualHost:
        vs = ctx.index.routing.vs_for(host)
        key = self._vhost_key(ctx, host, vs)
        at = (host, scope.port)
        cached = self._vhosts.get(at)
        if cached is not None and same_key(cached[0], key):
            self._vhosts_next[at] = cached
            return cached[1]
        domains = domains_for(
            host, scope.port, namespace=namespace, proxy_namespace=ctx.proxy.namespace
        )
        service = ctx.snapshot.services.get(host) if ctx.proxy.capture else None
        if service is not None:
            domains += address_domains(service, scope.port)
        built = wire_virtual_host(host, domains, vs, scope)
        self._vhosts_next[at] = (key, built)
        return built

    def _config(self, ctx: Context, port: int) -> Resource:
        routing = ctx.index.routing
        scope = RouteScope(port, ctx.snapshot.services, ctx.index.rules)
        vhost = self._vhost
        vhosts = [vhost(ctx, scope, s.host, s.namespace) for s in routing.http_ports.get(port, ())]
        extra = routing.extra_hosts.get(port, ())
        vhosts += [vhost(ctx, scope, h, vs.namespace) for h, vs in extra]
        key: Key = tuple(vhosts)
        cached = self._configs.get(port)
        if cached is not None and identical(cached[0], key):
            return cached[1]
        if ctx.proxy.capture:
            vhosts.append(self._catch_all(ctx))
        resource = Resource.from_value(
            names.route_name(port), typeurls.ROUTE, route_configuration_bytes(port, vhosts)
        )
        if cached is not None and cached[1].version == resource.version:
            resource = cached[1]
        self._configs[port] = (key, resource)
        return resource

    def _catch_all(self, ctx: Context) -> WireVirtualHost:
        """Under capture, the last virtual host of every port (transparent.py)."""
        if self._catch_all_vhost is None:
            message = catch_all_virtual_host(ctx.proxy)
            self._catch_all_vhost = WireVirtualHost.from_message(message)
        return self._catch_all_vhost

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.changes.routing:
            # Virtual hosts built or reused in this pass become the cache; the rest are gone.
            self._vhosts_next = {}
            self._last = [self._config(ctx, port) for port in ctx.index.http_ports]
            self._vhosts, self._vhosts_next = self._vhosts_next, {}
            self._forget_unused(ctx)
        return self._last

    def _forget_unused(self, ctx: Context) -> None:
        """Drop cached configs of ports that are gone and routing data of deleted VSs."""
        ports = set(ctx.index.http_ports)
        self._configs = {p: v for p, v in self._configs.items() if p in ports}
        live = {id(vs) for vs in ctx.snapshot.virtual_services.values()}
        self._destinations = {k: v for k, v in self._destinations.items() if k in live}
