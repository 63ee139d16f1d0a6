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

Pure: the snapshot in, findings out. It walks every VirtualService and DestinationRule, so the
normalizer runs it only when services, virtual services or destination rules changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from meshagent.model.routing import Destination, TcpRoute, VirtualService
from meshagent.model.services import Service
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance


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
        self.wildcards = tuple(h[1:] for h in services if h.startswith("*"))

    def find(self, host: str) -> Service | None:
        """The service that declares host, or None."""
        found = self.services.get(host)
        if found is not None:
            return found
        bare = host.lstrip("*")
        for suffix in self.wildcards:
            if bare.endswith(suffix):
                return self.services["*" + suffix]
        return None


def unresolved_references(snapshot: MeshSnapshot) -> list[Unresolved]:
    """Every reference in snapshot that cannot work, in a stable order."""
    hosts = _Hosts(snapshot.services)
    out: list[Unresolved] = []
    for _, vs in sorted(snapshot.virtual_services.items()):
        if vs.provenance is not None and vs.provenance.kind == "VirtualService":
            out.extend(
                problem
                for path, destination in _destinations(vs)
                for problem in _check(snapshot, hosts, vs.provenance, path, destination)
            )
    for host, rule in sorted(snapshot.destination_rules.items()):
        prov = rule.provenance
        if prov is None or prov.kind != "DestinationRule" or host.startswith("*"):
            continue
        if hosts.find(host) is None:
            out.append(Unresolved(prov, "spec.host", f"Referenced host not found: {host!r}"))
    return out


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
