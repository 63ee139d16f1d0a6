"""The consistency check every ResourceSet passes before it is published (go-control-plane's
`Snapshot.Consistent()`, extended to what Envoy would otherwise reject or silently lose).

A set is consistent when:
- no two resources of one type share a name (a mapping keeps one; the other is lost),
- every EDS cluster's ClusterLoadAssignment is in the set (else the cluster never warms),
- every route configuration a listener names over RDS is in the set,
- every listener binds a port in 1-65535, and no two listeners bind one address and port,
- every regex in a listener (RBAC, generated from authorization policies) compiles in Envoy:
  route regexes come from validated input, so route configurations are not decoded.

Pure: no gRPC, no I/O. A ConsistencyChecker remembers the facts (EDS names, listener
addresses, RDS names) of the last set it checked, so that a set derived from it (see
ResourceSet.changed_since) costs what changed, not the mesh: only changed clusters and
listeners are decoded, and only the names they touch are re-checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from meshagent.model.regex import regex_problem
from meshagent.xds import typeurls
from meshagent.xds.resources import Resource, ResourceSet

_HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Inconsistency:
    """One reason a ResourceSet must not be published: the resources involved, as
    (type URL, name) pairs, and why."""

    resources: tuple[tuple[str, str], ...]
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class ListenerFacts:
    """What the check reads from a listener: where it binds, the RDS names it uses, and the
    regexes in it (RBAC principals, authorization paths) that Envoy would not compile."""

    address: str
    port: int
    routes: tuple[str, ...]
    bad_regexes: tuple[tuple[str, str], ...] = ()  # (regex, why)


def eds_name(resource: Resource) -> str | None:
    """The ClusterLoadAssignment name an EDS cluster needs; None for other clusters."""
    cluster = cluster_pb2.Cluster.FromString(resource.value)
    if cluster.type != cluster_pb2.Cluster.EDS:
        return None
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def listener_facts(resource: Resource) -> ListenerFacts:
    """The address, port and RDS route configuration names of a listener."""
    listener = listener_pb2.Listener.FromString(resource.value)
    socket = listener.address.socket_address
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    routes = []
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url != _HCM_TYPE:
                continue
            manager = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
            if manager.HasField("rds"):
                routes.append(manager.rds.route_config_name)
    bad = tuple(
        (regex, problem)
        for regex in sorted(set(_regexes(json_format.MessageToDict(listener))))
        if (problem := regex_problem(regex))
    )
    return ListenerFacts(socket.address, socket.port_value, tuple(sorted(set(routes))), bad)


def _regexes(value: object) -> Iterator[str]:
    """Every safe_regex pattern in a message as MessageToDict gives it (Anys expanded)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "safeRegex" and isinstance(item, dict) and isinstance(item.get("regex"), str):
                yield item["regex"]
            else:
                yield from _regexes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _regexes(item)


def _remove(users: dict[str, set[str]], key: str, user: str) -> None:
    found = users.get(key)
    if found is not None:
        found.discard(user)
        if not found:
            del users[key]


class ConsistencyChecker:
    """Checks ResourceSets, remembering the facts of the last one (one instance per proxy).

    Not thread-safe. `check` returns the inconsistencies of the set, sorted; [] when it may
    be published.
    """

    def __init__(self) -> None:
        self._last: ResourceSet | None = None
        self._clusters: dict[str, tuple[Resource, str | None]] = {}
        self._eds_users: dict[str, set[str]] = {}  # CLA name -> clusters that need it
        self._listeners: dict[str, tuple[Resource, ListenerFacts]] = {}
        self._rds_users: dict[str, set[str]] = {}  # route config name -> listeners using it
        self._bound: dict[tuple[str, int], set[str]] = {}  # (address, port) -> listeners
        self._missing_eds: set[str] = set()
        self._missing_rds: set[str] = set()
        self._bad_ports: set[str] = set()
        self._bad_regexes: set[str] = set()

    def check(self, resources: ResourceSet) -> list[Inconsistency]:
        """Every inconsistency of resources."""
        changed = resources.changed_since(self._last) if self._last is not None else None
        clusters = resources.of(typeurls.CLUSTER)
        listeners = resources.of(typeurls.LISTENER)
        if changed is None:  # no hint: every name, reusing the facts of unchanged objects
            cluster_names: Iterable[str] = set(clusters) | set(self._clusters)
            listener_names: Iterable[str] = set(listeners) | set(self._listeners)
            eds_touched = set(self._missing_eds)
            rds_touched = set(self._missing_rds)
        else:
            cluster_names = changed.get(typeurls.CLUSTER, ())
            listener_names = changed.get(typeurls.LISTENER, ())
            eds_touched = set(changed.get(typeurls.ENDPOINT, ()))
            rds_touched = set(changed.get(typeurls.ROUTE, ()))
        eds_touched |= self._update_clusters(clusters, cluster_names)
        touched_listeners = self._update_listeners(listeners, listener_names)
        rds_touched |= {r for _, f in touched_listeners for r in f.routes}
        if changed is None:
            eds_touched |= set(self._eds_users)
            rds_touched |= set(self._rds_users)
        _refresh(self._missing_eds, eds_touched, self._eds_users, resources.of(typeurls.ENDPOINT))
        _refresh(self._missing_rds, rds_touched, self._rds_users, resources.of(typeurls.ROUTE))
        self._last = resources
        return self._report(resources)

    def _update_clusters(self, clusters: Mapping[str, Resource], names: Iterable[str]) -> set[str]:
        """Refresh the facts of the named clusters; the CLA names they needed or need."""
        touched: set[str] = set()
        for name in names:
            old = self._clusters.pop(name, None)
            if old is not None and old[1] is not None:
                touched.add(old[1])
                _remove(self._eds_users, old[1], name)
            resource = clusters.get(name)
            if resource is None:
                continue
            needs = old[1] if old is not None and old[0] is resource else eds_name(resource)
            self._clusters[name] = (resource, needs)
            if needs is not None:
                touched.add(needs)
                self._eds_users.setdefault(needs, set()).add(name)
        return touched

    def _update_listeners(
        self, listeners: Mapping[str, Resource], names: Iterable[str]
    ) -> list[tuple[str, ListenerFacts]]:
        """Refresh the facts of the named listeners; the old and new facts of each."""
        touched: list[tuple[str, ListenerFacts]] = []
        for name in names:
            old = self._listeners.pop(name, None)
            if old is not None:
                touched.append((name, old[1]))
                for route in old[1].routes:
                    _remove(self._rds_users, route, name)
                _remove_bound(self._bound, (old[1].address, old[1].port), name)
                self._bad_ports.discard(name)
                self._bad_regexes.discard(name)
            resource = listeners.get(name)
            if resource is None:
                continue
            facts = old[1] if old is not None and old[0] is resource else listener_facts(resource)
            self._listeners[name] = (resource, facts)
            touched.append((name, facts))
            for route in facts.routes:
                self._rds_users.setdefault(route, set()).add(name)
            self._bound.setdefault((facts.address, facts.port), set()).add(name)
            if not 1 <= facts.port <= MAX_PORT:
                self._bad_ports.add(name)
            if facts.bad_regexes:
                self._bad_regexes.add(name)
        return touched

    def _report(self, resources: ResourceSet) -> list[Inconsistency]:
        out = [
            _duplicate(type_url, name, found)
            for type_url, by_name in sorted(resources.duplicates.items())
            for name, found in sorted(by_name.items())
        ]
        for cla in sorted(self._missing_eds):
            users = sorted(self._eds_users[cla])
            reason = (
                f"cluster {', '.join(users)} (EDS) needs ClusterLoadAssignment {cla}, "
                "which is not generated"
            )
            named = (*_of(typeurls.CLUSTER, users), (typeurls.ENDPOINT, cla))
            out.append(Inconsistency(named, reason))
        for route in sorted(self._missing_rds):
            users = sorted(self._rds_users[route])
            reason = f"listener {', '.join(users)} uses route configuration {route!r}, " + (
                "which is not generated"
            )
            named = (*_of(typeurls.LISTENER, users), (typeurls.ROUTE, route))
            out.append(Inconsistency(named, reason))
        for name in sorted(self._bad_ports):
            port = self._listeners[name][1].port
            shown = "no valid port" if port == 0 else f"port {port}"
            reason = (
                f"listener {name} has {shown}: ports must be 1-{MAX_PORT} (outbound HTTP "
                "listeners bind the service port plus outbound.port_offset, or outbound.ports)"
            )
            out.append(Inconsistency(((typeurls.LISTENER, name),), reason))
        for name in sorted(self._bad_regexes):
            for regex, problem in self._listeners[name][1].bad_regexes:
                shown = regex if len(regex) <= 80 else regex[:77] + "..."
                reason = f"listener {name}: regex {shown!r}: {problem}"
                out.append(Inconsistency(((typeurls.LISTENER, name),), reason))
        for (address, port), names in sorted(self._bound.items()):
            if len(names) > 1:
                listed = sorted(names)
                reason = f"listeners {', '.join(listed)} all bind {address}:{port}"
                out.append(Inconsistency(_of(typeurls.LISTENER, listed), reason))
        return out


def _remove_bound(bound: dict[tuple[str, int], set[str]], at: tuple[str, int], name: str) -> None:
    found = bound.get(at)
    if found is not None:
        found.discard(name)
        if not found:
            del bound[at]


def _refresh(
    missing: set[str],
    touched: Iterable[str],
    users: Mapping[str, set[str]],
    present: Mapping[str, Resource],
) -> None:
    """Re-decide, for each touched name, whether it is needed and absent."""
    for name in touched:
        if name in users and name not in present:
            missing.add(name)
        else:
            missing.discard(name)


def _duplicate(type_url: str, name: str, found: tuple[Resource, ...]) -> Inconsistency:
    kind = typeurls.SHORT_NAMES.get(type_url, type_url)
    if type_url != typeurls.LISTENER:
        reason = f"{len(found)} {kind} resources are named {name}; only one would be served"
        return Inconsistency(((type_url, name),), reason)
    facts = [listener_facts(r) for r in found]
    routes = sorted({r for f in facts for r in f.routes}, key=_port_order)
    at = f"{facts[0].address}:{facts[0].port}"
    reason = f"{len(found)} listeners are named {name} and bind {at}"
    if routes:
        reason += f" (routes for service ports {', '.join(routes)})"
    reason += "; only one would be served: give each service port its own local port"
    return Inconsistency(((type_url, name), *_of(typeurls.ROUTE, routes)), reason)


def _of(type_url: str, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple((type_url, n) for n in names)


def _port_order(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 20, name)
