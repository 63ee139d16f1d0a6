"""References that cannot work, found in a MeshSnapshot (istioctl analyze's IST0101
ReferencedResourceNotFound): a VirtualService route or mirror to a host no service declares, to
a port the host does not have, or to a subset its DestinationRule does not define; and a
DestinationRule for a host no service declares.

As Istio's analyzer does, a host counts as declared when a service has it exactly or a wildcard
service ("*.example.com") covers it; hosts are already FQDNs (short names were resolved against
the resource's namespace when it was converted). Unlike Istio's, the subset check uses the rule
the translator applies (an exact host, else the longest wildcard). exportTo is not considered.
Only documents written as Istio resources are checked: Consul entries are converted into the
same model, but their paths would not point into anything the author wrote.

`unresolved_references` is pure and walks every VirtualService and DestinationRule (about 50 ms
at 10,000 of each). The normalizer keeps a ReferenceIndex instead, which, given a snapshot with
its changes, re-checks only the VirtualServices and DestinationRules that name a changed host
(everything after a wildcard service or rule changed, or when the changes are unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from meshagent.model.routing import Destination, TcpRoute, VirtualService
from meshagent.model.services import Service
from meshagent.model.snapshot import MeshSnapshot, SnapshotChanges
from meshagent.model.source import Provenance
from meshagent.model.traffic import DestinationRule


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A reference that cannot work: in the resource at provenance, field path, and why."""

    provenance: Provenance
    path: str
    reason: str


class _Hosts:
    """Which hosts services declare: exactly, or under a wildcard service."""

    def __init__(self, services: Mapping[str, Service]) -> None:
        self.services = services
        self._wildcards: tuple[str, ...] | None = None  # found on the first miss: a scan

    def find(self, host: str) -> Service | None:
        """The service that declares host, or None."""
        found = self.services.get(host)
        if found is not None:
            return found
        if self._wildcards is None:
            self._wildcards = tuple(h[1:] for h in self.services if h.startswith("*"))
        bare = host.lstrip("*")
        for suffix in self._wildcards:
            if bare.endswith(suffix):
                return self.services["*" + suffix]
        return None


def unresolved_references(snapshot: MeshSnapshot) -> list[Unresolved]:
    """Every reference in snapshot that cannot work, in a stable order."""
    hosts = _Hosts(snapshot.services)
    out: list[Unresolved] = []
    for _, vs in sorted(snapshot.virtual_services.items()):
        out.extend(_virtual_service(snapshot, hosts, vs))
    for host, rule in sorted(snapshot.destination_rules.items()):
        out.extend(_rule(hosts, host, rule))
    return out


def _virtual_service(snapshot: MeshSnapshot, hosts: _Hosts, vs: VirtualService) -> list[Unresolved]:
    prov = vs.provenance
    if prov is None or prov.kind != "VirtualService":
        return []
    return [
        problem
        for path, destination in _destinations(vs)
        for problem in _check(snapshot, hosts, prov, path, destination)
    ]


def _rule(hosts: _Hosts, host: str, rule: DestinationRule) -> list[Unresolved]:
    prov = rule.provenance
    if prov is None or prov.kind != "DestinationRule" or host.startswith("*"):
        return []
    if hosts.find(host) is not None:
        return []
    return [Unresolved(prov, "spec.host", f"Referenced host not found: {host!r}")]


class ReferenceIndex:
    """The unresolved references of the last snapshot given, kept per VirtualService and per
    DestinationRule so that a change re-checks only what names a changed host. One per
    normalizer; not thread-safe."""

    def __init__(self) -> None:
        self._snapshot: MeshSnapshot | None = None
        self._by_vs: dict[str, list[Unresolved]] = {}  # only those with findings
        self._by_rule: dict[str, list[Unresolved]] = {}
        self._users: dict[str, set[str]] = {}  # destination host -> VirtualService keys

    def update(self, snapshot: MeshSnapshot) -> list[Unresolved]:
        """Every unresolved reference of snapshot, in a stable order."""
        changes = snapshot.changes
        hosts = _Hosts(snapshot.services)
        if changes is None or not changes.applies(self._snapshot, snapshot) or _wide(changes):
            vs_keys: Iterable[str] = set(snapshot.virtual_services) | set(self._by_vs)
            rule_hosts: Iterable[str] = set(snapshot.destination_rules) | set(self._by_rule)
            self._users = {}
        else:
            touched = changes.services | changes.destination_rules
            vs_keys = set(changes.virtual_services)
            vs_keys.update(k for h in touched for k in self._users.get(h, ()))
            rule_hosts = touched
        for key in vs_keys:
            self._refresh_vs(snapshot, hosts, key)
        for host in rule_hosts:
            rule = snapshot.destination_rules.get(host)
            _store(self._by_rule, host, _rule(hosts, host, rule) if rule is not None else [])
        self._snapshot = snapshot
        return [
            *(u for _, found in sorted(self._by_vs.items()) for u in found),
            *(u for _, found in sorted(self._by_rule.items()) for u in found),
        ]

    def _refresh_vs(self, snapshot: MeshSnapshot, hosts: _Hosts, key: str) -> None:
        old = self._snapshot.virtual_services.get(key) if self._snapshot is not None else None
        for _, destination in _destinations(old) if old is not None else ():
            _discard(self._users, destination.host, key)
        vs = snapshot.virtual_services.get(key)
        if vs is None:
            self._by_vs.pop(key, None)
            return
        for _, destination in _destinations(vs):
            self._users.setdefault(destination.host, set()).add(key)
        _store(self._by_vs, key, _virtual_service(snapshot, hosts, vs))


def _wide(changes: SnapshotChanges) -> bool:
    """Whether a change may affect any host: a wildcard service or rule changed."""
    return any(h.startswith("*") for h in (*changes.services, *changes.destination_rules))


def _store(into: dict[str, list[Unresolved]], key: str, found: list[Unresolved]) -> None:
    if found:
        into[key] = found
    else:
        into.pop(key, None)


def _discard(users: dict[str, set[str]], host: str, key: str) -> None:
    found = users.get(host)
    if found is not None:
        found.discard(key)
        if not found:
            del users[host]


def _destinations(vs: VirtualService) -> Iterator[tuple[str, Destination]]:
    """(field path, destination) of every route and mirror destination of vs."""
    for i, route in enumerate(vs.http):
        for j, weighted in enumerate(route.route):
            yield f"spec.http[{i}].route[{j}].destination", weighted.destination
        for k, mirror in enumerate(route.mirrors):
            yield f"spec.http[{i}].mirrors[{k}].destination", mirror.destination
    for section, routes in (("tcp", vs.tcp), ("tls", vs.tls)):
        yield from _l4_destinations(section, routes)


def _l4_destinations(
    section: str, routes: tuple[TcpRoute, ...]
) -> Iterator[tuple[str, Destination]]:
    for i, route in enumerate(routes):
        for j, weighted in enumerate(route.route):
            yield f"spec.{section}[{i}].route[{j}].destination", weighted.destination


def _check(
    snapshot: MeshSnapshot, hosts: _Hosts, prov: Provenance, path: str, dest: Destination
) -> Iterator[Unresolved]:
    service = hosts.find(dest.host)
    if service is None:
        yield Unresolved(prov, f"{path}.host", f"Referenced host not found: {dest.host!r}")
    elif dest.port is not None and service.port(dest.port) is None:
        reason = f"Referenced host:port not found: '{dest.host}:{dest.port}'"
        yield Unresolved(prov, f"{path}.port.number", reason)
    if dest.subset:
        rule = snapshot.destination_rule_for(dest.host)
        if rule is None or all(s.name != dest.subset for s in rule.subsets):
            reason = (
                f"Referenced host+subset in destinationrule not found: '{dest.host}+{dest.subset}'"
            )
            yield Unresolved(prov, f"{path}.subset", reason)


def as_written(body: Mapping[str, object], path: str) -> str:
    """path as the document spells it: a mirror written as the legacy `mirror` field (the
    model lists it among `mirrors`) is `spec.http[i].mirror`, a Destination itself."""
    head, found, tail = path.partition(".mirrors[")
    if not found or not head.startswith("spec.http["):
        return path
    spec = body.get("spec")
    http = spec.get("http") if isinstance(spec, Mapping) else None
    index = int(head[len("spec.http[") : -1])
    route = http[index] if isinstance(http, list) and index < len(http) else None
    if isinstance(route, Mapping) and "mirrors" not in route and "mirror" in route:
        rest = tail.partition("]")[2]  # ".destination.host": `mirror` is the destination
        return head + ".mirror" + rest.removeprefix(".destination")
    return path
