"""Sidecar scoping: which Sidecar applies to a proxy, and the view of the mesh it imports.

The translator does not ask each generator to honour a Sidecar: it translates from a view of
the snapshot (ScopedView) whose services and VirtualServices are only those the Sidecar's
egress hosts import, and from a proxy whose outbound traffic policy, egress proxy, outbound
binds and inbound ports are the Sidecar's (effective_proxy).

Selection, as Istio's: for a sidecar proxy in namespace N, the first Sidecar of N (by name:
files carry no creation time, Istio takes the oldest) whose workloadSelector matches the
proxy's labels; else N's Sidecar without a selector; else the root namespace's Sidecar
without a selector (the mesh-wide default, its `.` meaning N). Routers (gateways) ignore
Sidecars.

Egress hosts `ns/host`: ns is a namespace, `*` (any), `.` (the proxy's) or `~` (none); host
an FQDN, `*.suffix` or `*`. A service is imported when its host falls within a host listed
for its namespace, else within one listed for `*`. A VirtualService is imported when one of
its hosts overlaps a host listed for its namespace or for `*`; the services its routes name
are imported with it, as Istio infers them. An egress listener with a port imports its
services on that port only. The egressProxy's service is always imported (its cluster is
where unknown destinations go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from meshagent.model import (
    InboundPort,
    LocalWorkload,
    MeshSnapshot,
    ProxySpec,
    Service,
    SnapshotChanges,
    VirtualService,
    selector_matches,
)
from meshagent.model.proxy import ROUTER
from meshagent.model.sidecar import (
    ANY_NAMESPACE,
    CURRENT_NAMESPACE,
    UNIX_PREFIX,
    EgressListener,
    IngressListener,
    Sidecar,
)

ALL_PORTS: frozenset[int] = frozenset({-1})  # a marker: the whole service is imported


def _proxy_labels(proxy: ProxySpec, namespace: str) -> list[tuple[tuple[str, str], ...]]:
    """The label sets a workloadSelector of namespace may match: the proxy's own (agent
    config `node.labels`) and those of its local workloads in that namespace."""
    sets = [proxy.labels] if proxy.labels else []
    sets += [w.labels for w in proxy.workloads if w.namespace == namespace]
    return sets


def _selects(sidecar: Sidecar, proxy: ProxySpec) -> bool:
    selector = sidecar.workload_selector or ()
    return any(
        selector_matches(selector, labels) for labels in _proxy_labels(proxy, sidecar.namespace)
    )


def select_sidecar(sidecars: Mapping[str, Sidecar], proxy: ProxySpec) -> Sidecar | None:
    """The Sidecar that applies to proxy (see the module docstring), or None."""
    if not sidecars or proxy.proxy_type == ROUTER:
        return None
    own = sorted(
        (s for s in sidecars.values() if s.namespace == proxy.namespace), key=lambda s: s.name
    )
    for sidecar in own:
        if sidecar.workload_selector is not None and _selects(sidecar, proxy):
            return sidecar
    for sidecar in own:
        if sidecar.workload_selector is None:
            return sidecar
    root = sorted(
        (
            s
            for s in sidecars.values()
            if s.namespace == proxy.root_namespace and s.workload_selector is None
        ),
        key=lambda s: s.name,
    )
    return root[0] if root else None


def host_within(host: str, pattern: str) -> bool:
    """Whether every name host stands for is one pattern stands for (Istio's SubsetOf):
    `*` holds all, `*.x.com` holds `a.x.com` and `*.a.x.com`, an FQDN only itself."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return host == pattern


def hosts_overlap(a: str, b: str) -> bool:
    """Whether some name is matched by both a and b (Istio's Matches, used for
    VirtualService hosts)."""
    return host_within(a, b) or host_within(b, a)


@dataclass(frozen=True, slots=True)
class _Listener:
    port: int | None  # None: every port
    by_namespace: Mapping[str, tuple[str, ...]]

    def matches(self, host: str, namespace: str) -> bool:
        own = self.by_namespace.get(namespace)
        if own is not None and any(host_within(host, p) for p in own):
            return True
        wild = self.by_namespace.get(ANY_NAMESPACE)
        return wild is not None and any(host_within(host, p) for p in wild)

    def overlaps(self, hosts: Iterable[str], namespace: str) -> bool:
        patterns = self.by_namespace.get(namespace, ()) + self.by_namespace.get(ANY_NAMESPACE, ())
        return any(hosts_overlap(h, p) for h in hosts for p in patterns)


def _compile(listener: EgressListener, namespace: str) -> _Listener:
    by_namespace: dict[str, list[str]] = {}
    for host in listener.hosts:
        ns = namespace if host.namespace == CURRENT_NAMESPACE else host.namespace
        by_namespace.setdefault(ns, []).append(host.host)
    port = listener.port.number if listener.port is not None else None
    return _Listener(port, {ns: tuple(hs) for ns, hs in by_namespace.items()})


class Imports:
    """What a Sidecar's egress listeners import, for a proxy in namespace."""

    def __init__(self, sidecar: Sidecar, namespace: str) -> None:
        self._listeners = [_compile(e, namespace) for e in sidecar.egress]
        proxy = sidecar.egress_proxy
        self.always = frozenset({proxy.host}) if proxy is not None else frozenset()
        self.everything = not self._listeners or any(
            listener.port is None and listener.by_namespace.get(ANY_NAMESPACE) == ("*",)
            for listener in self._listeners
        )

    def service_ports(self, service: Service) -> frozenset[int]:
        """ALL_PORTS, the port numbers of service imported, or none."""
        ports: set[int] = set()
        for listener in self._listeners:
            if not listener.matches(service.host, service.namespace):
                continue
            if listener.port is None:
                return ALL_PORTS
            if service.port(listener.port) is not None:
                ports.add(listener.port)
        return frozenset(ports)

    def virtual_service(self, vs: VirtualService) -> bool:
        """Whether vs is imported."""
        return any(listener.overlaps(vs.hosts, vs.namespace) for listener in self._listeners)


def destinations(virtual_services: Iterable[VirtualService]) -> frozenset[str]:
    """The hosts the routes of virtual_services send traffic to (mirrors included)."""
    out: set[str] = set()
    for vs in virtual_services:
        for route in vs.http:
            out.update(w.destination.host for w in route.route)
            out.update(m.destination.host for m in route.mirrors)
        for l4 in (*vs.tcp, *vs.tls):
            out.update(w.destination.host for w in l4.route)
    return frozenset(out)


# -- the proxy a Sidecar makes ---------------------------------------------------------------


def _endpoint(listener: IngressListener) -> tuple[str, int]:
    """(address, port) the application of an ingress listener is reached on."""
    written = listener.default_endpoint
    fallback = listener.port.target_port or listener.port.number
    if not written:
        return "", fallback
    if written.startswith(UNIX_PREFIX):
        return written, 0
    host, _, port = written.rpartition(":")
    host = host.strip("[]")
    # 0.0.0.0 / :: mean "the instance's address" in Istio; on this host, its loopback.
    address = {"0.0.0.0": "", "127.0.0.1": "", "::": "::1"}.get(host, host)
    return address, int(port)


def ingress_ports(sidecar: Sidecar) -> tuple[InboundPort, ...]:
    """The inbound ports a Sidecar's ingress listeners declare."""
    out = []
    for listener in sidecar.ingress:
        address, port = _endpoint(listener)
        out.append(
            InboundPort(
                port=listener.port.number,
                target_port=port,
                protocol=listener.port.protocol,
                name=listener.port.name,
                bind=listener.bind,
                target_address=address,
                tls=listener.tls,
            )
        )
    return tuple(out)


def _with_ingress(proxy: ProxySpec, sidecar: Sidecar) -> tuple[LocalWorkload, ...]:
    """proxy's workloads, those the Sidecar applies to serving its ingress ports instead of
    their own: the first of them takes them all (they share the proxy's listeners)."""
    ports = ingress_ports(sidecar)
    out: list[LocalWorkload] = []
    given = False
    for workload in proxy.workloads:
        applies = sidecar.namespace in (
            workload.namespace,
            proxy.root_namespace,
        ) and selector_matches(sidecar.workload_selector or (), workload.labels)
        if not applies:
            out.append(workload)
            continue
        out.append(replace(workload, ports=() if given else ports))
        given = True
    return tuple(out)


def effective_proxy(proxy: ProxySpec, sidecar: Sidecar | None) -> ProxySpec:
    """proxy as the Sidecar shapes it (itself without one)."""
    if sidecar is None:
        return proxy
    changes: dict[str, object] = {}
    if sidecar.outbound_traffic_policy:
        changes["outbound_traffic_policy"] = sidecar.outbound_traffic_policy
    if sidecar.egress_proxy is not None:
        changes["egress_proxy"] = sidecar.egress_proxy
    binds = tuple(
        (e.port.number, e.bind)
        for e in sidecar.egress
        if e.port is not None and e.bind and not e.bind.startswith(UNIX_PREFIX)
    )
    if binds:
        changes["outbound_binds"] = binds
    if sidecar.ingress:
        changes["workloads"] = _with_ingress(proxy, sidecar)
    return replace(proxy, **changes) if changes else proxy  # type: ignore[arg-type]


# -- the view of the mesh ------------------------------------------------------------------------


class ScopedView:
    """The snapshot a proxy is translated from under its Sidecar, kept up to date at the
    cost of the change: an unchanged object stays the very same object in the view, and
    the view's SnapshotChanges name only what changed in it (or are None when the Sidecar
    or the proxy changed, so that the translator compares the view's maps).

    Not thread-safe: one per Translator.
    """

    def __init__(self) -> None:
        self._input: tuple[ProxySpec, Mapping[str, Sidecar]] | None = None
        self._sidecar: Sidecar | None = None
        self._proxy: ProxySpec | None = None  # the effective proxy
        self._imports: Imports | None = None
        self._source: MeshSnapshot | None = None  # the snapshot the view was made from
        self._view: MeshSnapshot | None = None
        self._inferred: frozenset[str] = frozenset()
        self._trimmed: dict[str, tuple[Service, frozenset[int], Service]] = {}

    @property
    def sidecar(self) -> Sidecar | None:
        """The Sidecar that applied at the last call."""
        return self._sidecar

    def view(self, snapshot: MeshSnapshot, proxy: ProxySpec) -> tuple[MeshSnapshot, ProxySpec]:
        """(the snapshot as proxy sees it, the proxy as its Sidecar shapes it)."""
        rescoped = self._select(snapshot, proxy)
        assert self._proxy is not None
        imports = self._imports
        if imports is None:  # nothing filtered: the snapshot itself
            out = snapshot
            if rescoped and self._view is not None and self._view is not self._source:
                out = replace(snapshot, changes=None)  # its hint is not about the old view
        elif rescoped or not self._applies(snapshot):
            out = self._rebuild(snapshot, imports)
        else:
            out = self._update(snapshot, imports)
        self._source, self._view = snapshot, out
        return out, self._proxy

    def _select(self, snapshot: MeshSnapshot, proxy: ProxySpec) -> bool:
        """Pick the Sidecar; True when it (or the proxy) differs from the last call."""
        key = (proxy, snapshot.sidecars)
        if self._input is not None and self._input[0] is proxy and self._input[1] is key[1]:
            return False
        sidecar = select_sidecar(snapshot.sidecars, proxy)
        same = self._input is not None and self._input[0] == proxy and sidecar is self._sidecar
        self._input = key
        if same:
            return False
        self._sidecar = sidecar
        self._proxy = effective_proxy(proxy, sidecar)
        imports = Imports(sidecar, proxy.namespace) if sidecar is not None else None
        self._imports = None if imports is None or imports.everything else imports
        self._trimmed = {}
        return True

    def _applies(self, snapshot: MeshSnapshot) -> bool:
        hint = snapshot.changes
        return hint is not None and hint.applies(self._source, snapshot)

    def _scoped(self, service: Service, imports: Imports) -> Service | None:
        """service as the view holds it: whole, trimmed to the imported ports, or None."""
        ports = imports.service_ports(service)
        if ports is ALL_PORTS:
            return service
        if not ports:
            host = service.host
            return service if host in self._inferred or host in imports.always else None
        cached = self._trimmed.get(service.host)
        if cached is not None and cached[0] is service and cached[1] == ports:
            return cached[2]
        trimmed = replace(service, ports=tuple(p for p in service.ports if p.number in ports))
        self._trimmed[service.host] = (service, ports, trimmed)
        return trimmed

    def _rebuild(self, snapshot: MeshSnapshot, imports: Imports) -> MeshSnapshot:
        """The view from scratch: O(mesh), when the Sidecar or the proxy changed, or the
        snapshot's changes do not lead from the last one."""
        vss = {k: vs for k, vs in snapshot.virtual_services.items() if imports.virtual_service(vs)}
        self._inferred = destinations(vss.values())
        services = {}
        for host, service in snapshot.services.items():
            scoped = self._scoped(service, imports)
            if scoped is not None:
                services[host] = scoped
        live = {h: v for h, v in self._trimmed.items() if h in services}
        self._trimmed = live
        return replace(
            snapshot,
            services=MappingProxyType(services),
            virtual_services=MappingProxyType(vss),
            changes=None,
        )

    def _update(self, snapshot: MeshSnapshot, imports: Imports) -> MeshSnapshot:
        """The last view with the snapshot's changes applied: O(change + view)."""
        hint = snapshot.changes
        view = self._view
        assert hint is not None and view is not None
        vss, changed_vs, flipped = self._update_virtual_services(snapshot, hint, imports)
        services, changed = view.services, set()
        hosts = set(hint.services) | flipped
        if hosts:
            updated = dict(services)
            for host in hosts:
                found = snapshot.services.get(host)
                scoped = None if found is None else self._scoped(found, imports)
                old = updated.get(host)
                if scoped is None and old is not None:
                    del updated[host]
                    changed.add(host)
                elif scoped is not None and scoped is not old:
                    updated[host] = scoped
                    changed.add(host)
            if changed:
                services = MappingProxyType(updated)
        # Only the maps the view filters differ from the snapshot's changes; the rest (and
        # any kind added later) pass through: the view shares those maps.
        changes = replace(hint, services=frozenset(changed), virtual_services=frozenset(changed_vs))
        return replace(snapshot, services=services, virtual_services=vss, changes=changes)

    def _update_virtual_services(
        self, snapshot: MeshSnapshot, hint: SnapshotChanges, imports: Imports
    ) -> tuple[Mapping[str, VirtualService], set[str], frozenset[str]]:
        """(the view's VirtualServices, the keys changed in it, the hosts whose inference
        as a destination changed)."""
        assert self._view is not None
        vss = self._view.virtual_services
        if not hint.virtual_services:
            return vss, set(), frozenset()
        updated = dict(vss)
        changed: set[str] = set()
        for key in hint.virtual_services:
            vs = snapshot.virtual_services.get(key)
            if vs is not None and imports.virtual_service(vs):
                if updated.get(key) is not vs:
                    updated[key] = vs
                    changed.add(key)
            elif updated.pop(key, None) is not None:
                changed.add(key)
        if not changed:
            return vss, changed, frozenset()
        inferred = destinations(updated.values())
        flipped = inferred ^ self._inferred
        self._inferred = inferred
        return MappingProxyType(updated), changed, flipped
