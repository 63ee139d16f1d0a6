"""What every generator reads: the snapshot, the proxy, and lookups derived from the snapshot.

MeshIndex answers "which services listen on HTTP port P", "which VirtualService binds host H"
and "which DestinationRule applies to H" without scanning the mesh per question. It is rebuilt
only when the snapshot's services, virtual services or destination rules actually changed, so an
endpoint-only change does not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from meshagent.model import DestinationRule, MeshSnapshot, ProxySpec, Service, VirtualService
from meshagent.model.proxy import ROUTER

T = TypeVar("T")

# Istio puts routes for VirtualService hosts that name no service on the HTTP port 80.
DEFAULT_HTTP_PORT = 80


def same_objects(old: Mapping[str, object] | None, new: Mapping[str, object]) -> bool:
    """True when new holds the very same objects under the same keys as old."""
    if old is None:
        return False
    if old is new:
        return True
    return len(old) == len(new) and all(old.get(k) is v for k, v in new.items())


def wildcard_matches(pattern: str, host: str) -> bool:
    """Istio host matching: `*` matches all, `*.x.com` matches any host ending in `.x.com`."""
    return pattern == "*" or (pattern.startswith("*") and host.endswith(pattern[1:]))


def _longest_wildcard(host: str, patterns: list[tuple[str, T]]) -> T | None:
    # patterns are sorted longest first, so the first hit is the most specific one.
    for pattern, value in patterns:
        if wildcard_matches(pattern, host):
            return value
    return None


class RuleIndex:
    """DestinationRule by host: exact first, then the longest matching wildcard."""

    def __init__(self, rules: Mapping[str, DestinationRule]) -> None:
        self._exact = {h: r for h, r in rules.items() if not h.startswith("*")}
        self._wild: list[tuple[str, DestinationRule]] = sorted(
            ((h, r) for h, r in rules.items() if h.startswith("*")),
            key=lambda item: (-len(item[0]), item[0]),
        )

    def rule_for(self, host: str) -> DestinationRule | None:
        """The DestinationRule that applies to host, if any."""
        found = self._exact.get(host)
        if found is not None or not self._wild:
            return found
        return _longest_wildcard(host, self._wild)


class RoutingIndex:
    """Sidecar-bound VirtualServices by host, and hosts that only a VirtualService names.

    When several VirtualServices bind one host, the first by "namespace/name" wins (Istio
    picks the oldest; we have no creation time, so the order must be stable instead).
    """

    def __init__(
        self, services: Mapping[str, Service], virtual_services: Mapping[str, VirtualService]
    ) -> None:
        self._exact: dict[str, VirtualService] = {}
        wild: dict[str, VirtualService] = {}
        for key in sorted(virtual_services):
            vs = virtual_services[key]
            if not vs.applies_to_sidecars:
                continue
            for host in vs.hosts:
                target = wild if host.startswith("*") else self._exact
                target.setdefault(host, vs)
        self._wild: list[tuple[str, VirtualService]] = sorted(
            wild.items(), key=lambda item: (-len(item[0]), item[0])
        )
        self.sorted_hosts = sorted(services)
        self.http_ports = _http_ports(services, self.sorted_hosts)
        self.extra_hosts = _extra_hosts(services, self._exact, wild)

    def vs_for(self, host: str) -> VirtualService | None:
        """The VirtualService that routes host for sidecars, if any."""
        found = self._exact.get(host)
        if found is not None or not self._wild:
            return found
        return _longest_wildcard(host, self._wild)


def _http_ports(
    services: Mapping[str, Service], sorted_hosts: list[str]
) -> dict[int, list[Service]]:
    """Services by HTTP port number, each list sorted by host (sorted_hosts: services')."""
    by_port: dict[int, list[Service]] = {}
    for host in sorted_hosts:
        service = services[host]
        for port in service.ports:
            if port.is_http:
                by_port.setdefault(port.number, []).append(service)
    return by_port


def _vs_ports(vs: VirtualService) -> set[int]:
    """The ports a service-less VirtualService host is routed on."""
    ports: set[int] = set()
    for route in vs.http:
        matched = [m.port for m in route.matches]
        if not matched or None in matched:
            ports.add(DEFAULT_HTTP_PORT)
        ports.update(p for p in matched if p is not None)
    return ports


def _extra_hosts(
    services: Mapping[str, Service],
    exact: Mapping[str, VirtualService],
    wild: Mapping[str, VirtualService],
) -> dict[int, list[tuple[str, VirtualService]]]:
    """VirtualService hosts that match no service, by the port they are routed on."""
    extra: dict[int, list[tuple[str, VirtualService]]] = {}
    candidates = [(h, vs) for h, vs in exact.items() if h not in services]
    candidates += [
        (h, vs) for h, vs in wild.items() if not any(wildcard_matches(h, s) for s in services)
    ]
    for host, vs in sorted(candidates, key=lambda item: item[0]):
        for port in sorted(_vs_ports(vs)):
            extra.setdefault(port, []).append((host, vs))
    return extra


def _routing(snapshot: MeshSnapshot) -> RoutingIndex:
    return RoutingIndex(snapshot.services, snapshot.virtual_services)


def proxy_rules(snapshot: MeshSnapshot, proxy: ProxySpec | None) -> Mapping[str, DestinationRule]:
    """The DestinationRules by host for proxy: the mesh-wide ones, overridden by each rule
    with a workloadSelector that selects one of proxy's local workloads (same namespace,
    labels a superset of the selector's), as Istio prefers a workload's own rule. The local
    workloads share one outbound config, so a rule selecting one of them applies to all.
    A router is a workload of its own: a rule applies to it when it selects the router's
    labels in the router's namespace (as Istio selects a gateway's pod)."""
    scoped = snapshot.workload_destination_rules
    if not scoped or proxy is None:
        return snapshot.destination_rules
    selves = [(w.namespace, w.labels) for w in proxy.workloads]
    if proxy.proxy_type == ROUTER:
        selves.append((proxy.namespace, proxy.labels))
    if not selves:
        return snapshot.destination_rules
    rules = dict(snapshot.destination_rules)
    for key in sorted(scoped, reverse=True):  # the first by "namespace/name" wins
        rule = scoped[key]
        wanted = set(rule.workload_selector or ())
        if any(ns == rule.namespace and wanted <= set(labels) for ns, labels in selves):
            rules[rule.host] = rule
    return rules


@dataclass(slots=True)
class MeshIndex:
    """The lookups of one snapshot; parts are carried over from the previous snapshot."""

    rules: RuleIndex
    routing: RoutingIndex

    @classmethod
    def update(
        cls,
        previous: MeshIndex | None,
        snapshot: MeshSnapshot,
        changes: Changes,
        proxy: ProxySpec | None = None,
    ) -> MeshIndex:
        """An index for snapshot, reusing the parts of previous whose inputs are unchanged.

        proxy: its local workloads pick the workload-scoped DestinationRules that apply."""
        if previous is None or changes.everything:
            return cls(RuleIndex(proxy_rules(snapshot, proxy)), _routing(snapshot))
        rules = RuleIndex(proxy_rules(snapshot, proxy)) if changes.rules else previous.rules
        rebuild = changes.virtual_services or not changes.services_equal
        return cls(rules, _routing(snapshot) if rebuild else previous.routing)

    @property
    def http_ports(self) -> list[int]:
        """Every port that gets an outbound HTTP listener, ascending."""
        return sorted({*self.routing.http_ports, *self.routing.extra_hosts})


@dataclass(frozen=True, slots=True)
class Changes:
    """What differs from the previous generate() call, so generators can skip the rest.

    service_hosts / endpoint_hosts: hosts whose Service / endpoint tuple is not the very same
    object as before (added and removed hosts included). same_hosts: the set of service hosts
    is unchanged. services_equal: every replaced Service equals the one it replaced (the
    normalizer rebuilt it, but nothing in it changed). Only meaningful when not `everything`.
    """

    everything: bool = True
    rules: bool = True
    virtual_services: bool = True
    same_hosts: bool = False
    services_equal: bool = False
    service_hosts: frozenset[str] = frozenset()
    endpoint_hosts: frozenset[str] = frozenset()

    @property
    def all_hosts(self) -> bool:
        """True when every host must be revisited, not only the changed ones."""
        return self.everything or self.rules or not self.same_hosts

    @property
    def dirty_hosts(self) -> frozenset[str]:
        """Hosts whose service or endpoints were replaced."""
        return self.service_hosts | self.endpoint_hosts

    @property
    def routing(self) -> bool:
        """True when routes may differ."""
        return self.all_hosts or self.virtual_services or not self.services_equal


ALL_CHANGED = Changes()


def _changed_hosts(old: Mapping[str, object], new: Mapping[str, object]) -> frozenset[str]:
    changed = {h for h, v in new.items() if old.get(h) is not v}
    changed.update(h for h in old if h not in new)
    return frozenset(changed)


def changes_between(old: MeshSnapshot | None, new: MeshSnapshot, proxy_changed: bool) -> Changes:
    """The Changes from old to new (everything, when there is no old or the proxy changed).

    Uses the changes the normalizer attached to new when they lead from old; else compares
    the maps, which costs O(mesh).
    """
    if old is None or proxy_changed:
        return ALL_CHANGED
    hint = new.changes
    if hint is not None and hint.applies(old, new):
        return _changes(
            old,
            new,
            hint.services,
            hint.endpoints,
            rules=bool(hint.destination_rules),
            virtual_services=bool(hint.virtual_services),
        )
    return _changes(
        old,
        new,
        _changed_hosts(old.services, new.services),
        _changed_hosts(old.endpoints, new.endpoints),
        rules=not same_objects(old.destination_rules, new.destination_rules)
        or not same_objects(old.workload_destination_rules, new.workload_destination_rules),
        virtual_services=not same_objects(old.virtual_services, new.virtual_services),
    )


def _changes(
    old: MeshSnapshot,
    new: MeshSnapshot,
    services: frozenset[str],
    endpoints: frozenset[str],
    *,
    rules: bool,
    virtual_services: bool,
) -> Changes:
    same_hosts = len(old.services) == len(new.services) and all(
        h in old.services and h in new.services for h in services
    )
    return Changes(
        everything=False,
        rules=rules,
        virtual_services=virtual_services,
        same_hosts=same_hosts,
        services_equal=same_hosts and all(old.services[h] == new.services[h] for h in services),
        service_hosts=services,
        endpoint_hosts=endpoints,
    )


@dataclass(slots=True)
class Context:
    """The inputs of one generate() call, shared by all generators. Read-only by convention."""

    snapshot: MeshSnapshot
    proxy: ProxySpec
    index: MeshIndex
    changes: Changes = ALL_CHANGED
