"""`meshagent explain`: every input that shaped one Envoy resource of this host.

Given a cluster, listener, route configuration (or ROUTE_CONFIG/VIRTUAL_HOST[/ROUTE]) or an
endpoint address, it names the documents the resource came from (file:line, Consul index and
config entry, Kubernetes resourceVersion), the fields of each that were read (with their
lines where the source has lines), and who won each precedence conflict over the hosts
involved. It reads the snapshot, the raw documents and the ResourceSet; which HTTP routes
become which Envoy routes it asks the translator (routes.route_sources), and resources it
has no detail for fall back to xds/attribution.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from meshagent.errors import MeshAgentError
from meshagent.insight.documents import (
    Documents,
    Field,
    document_of,
    fields,
    file_of,
    index_of,
    lookup,
)
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.model.routing import VirtualService
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance, RawResource
from meshagent.normalize.validate import display_name
from meshagent.xds import attribution, names, typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate.context import RoutingIndex, RuleIndex, proxy_rules
from meshagent.xds.translate.routes import route_sources
from meshagent.xds.translate.scope import ScopedView

KINDS = {
    "cluster": typeurls.CLUSTER,
    "listener": typeurls.LISTENER,
    "route": typeurls.ROUTE,
    "endpoint": typeurls.ENDPOINT,
}
MAX_ENDPOINT_INPUTS = 5
# Keys of a Consul config entry that say nothing about traffic (or are shown otherwise).
_CONSUL_BOOKKEEPING = frozenset(
    {"Kind", "Name", "Subsets", "Meta", "CreateIndex", "ModifyIndex", "Namespace", "Partition"}
)


class ExplainError(MeshAgentError):
    """The resource asked about is not one this host's Envoy has (or could have)."""


@dataclass(frozen=True, slots=True)
class Input:
    """One document that shaped the resource, and the fields of it that were read."""

    role: str  # "service", "destination rule", "virtual service", "endpoints", "sidecar", ...
    ref: str  # "VirtualService/default/reviews", "ConsulConfigEntry/service-resolver/api"
    location: str  # "mesh/vs.yaml:3", "consul index 42", "resourceVersion 7"
    fields: tuple[Field, ...] = ()
    file: str = ""  # the file fields' lines are in ("" when none)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "ref": self.ref,
            "location": self.location,
            "fields": [f.to_json() for f in self.fields],
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Conflict:
    """Several documents claim one host; the winner serves, the losers are ignored."""

    subject: str
    winner: str
    losers: tuple[str, ...]
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "winner": self.winner,
            "losers": list(self.losers),
            "rule": self.rule,
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """What `meshagent explain` prints about one resource."""

    kind: str
    name: str
    served: bool
    inputs: tuple[Input, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "served": self.served,
            "inputs": [i.to_json() for i in self.inputs],
            "conflicts": [c.to_json() for c in self.conflicts],
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class View:
    """What is explained: the snapshot, the proxy, what it is served and the documents."""

    snapshot: MeshSnapshot
    proxy: ProxySpec
    resources: ResourceSet
    documents: Documents
    sidecar: Provenance | None = None
    _routing: RoutingIndex | None = None
    _rules: RuleIndex | None = None
    _by_host: dict[str, list[VirtualService]] | None = None

    @property
    def routing(self) -> RoutingIndex:
        """The VirtualService of each host, as the translator picks it (built once)."""
        if self._routing is None:
            self._routing = RoutingIndex(self.snapshot.services, self.snapshot.virtual_services)
        return self._routing

    @property
    def sidecar_routing(self) -> dict[str, list[VirtualService]]:
        """Every sidecar-bound VirtualService naming each host, by namespace/name (built once)."""
        if self._by_host is None:
            self._by_host = {}
            for _, vs in sorted(self.snapshot.virtual_services.items()):
                if vs.applies_to_sidecars:
                    for host in vs.hosts:
                        self._by_host.setdefault(host, []).append(vs)
        return self._by_host

    @property
    def rules(self) -> RuleIndex:
        """The DestinationRule of each host for this proxy (built once)."""
        if self._rules is None:
            self._rules = RuleIndex(proxy_rules(self.snapshot, self.proxy))
        return self._rules

    @classmethod
    def scoped(
        cls, snapshot: MeshSnapshot, proxy: ProxySpec, resources: ResourceSet, docs: Documents
    ) -> View:
        """The view under proxy's Sidecar, as the translator sees the mesh."""
        scope = ScopedView()
        seen, effective = scope.view(snapshot, proxy)
        sidecar = scope.sidecar.provenance if scope.sidecar is not None else None
        return cls(seen, effective, resources, docs, sidecar)


@dataclass(slots=True)
class _Found:
    """Inputs and conflicts being gathered, without duplicates."""

    inputs: list[Input] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _at: dict[tuple[str, str, str], int] = field(default_factory=dict)  # input -> position

    def add(self, item: Input | None) -> None:
        """Add item; one input per document and role, its fields merged."""
        if item is None:
            return
        key = (item.role, item.ref, item.location)
        k = self._at.get(key)
        if k is None:
            self._at[key] = len(self.inputs)
            self.inputs.append(item)
            return
        known = self.inputs[k]
        more = tuple(f for f in item.fields if f not in known.fields)
        self.inputs[k] = replace(known, fields=known.fields + more)

    def drop(self, role: str) -> None:
        """Forget the inputs of role (a finer account of them follows)."""
        self.inputs = [i for i in self.inputs if i.role != role]
        self._at = {(i.role, i.ref, i.location): k for k, i in enumerate(self.inputs)}

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def conflict(self, item: Conflict | None) -> None:
        if item is not None and item not in self.conflicts:
            self.conflicts.append(item)


def explain(view: View, name: str, kind: str | None = None) -> Explanation:
    """The inputs of the resource name (of kind, else guessed); ExplainError when unknown."""
    kind = kind or _guess_kind(view, name)
    found = _Found()
    if kind == "cluster":
        served = name in view.resources.of(typeurls.CLUSTER)
        _cluster(view, name, found)
    elif kind == "route":
        served = _route(view, name, found)
    elif kind == "listener":
        served = name in view.resources.of(typeurls.LISTENER)
        _attributed(view, typeurls.LISTENER, name, found)
    elif kind == "endpoint":
        served = _endpoint(view, name, found)
    else:
        raise ExplainError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if not served and not found.inputs:
        raise ExplainError(f"no {kind} {name!r} is served to this host's Envoy")
    if kind != "endpoint":
        _patches(view, KINDS[kind], name.split("/", 1)[0] if kind == "route" else name, found)
    if view.sidecar is not None:
        found.add(_input("sidecar (scopes what this proxy sees)", view, view.sidecar, ()))
    if not found.inputs and not found.notes:
        found.note("built by the agent from its own config; no mesh document shapes it")
    return Explanation(
        kind, name, served, tuple(found.inputs), tuple(found.conflicts), tuple(found.notes)
    )


def _guess_kind(view: View, name: str) -> str:
    for kind in ("cluster", "listener", "route"):
        if name in view.resources.of(KINDS[kind]):
            return kind
    head = name.split("/", 1)[0]
    if "/" in name and head in view.resources.of(typeurls.ROUTE):
        return "route"
    if name.startswith(names.OUTBOUND + "|") or name.startswith(names.INBOUND + "|"):
        return "cluster"
    if _address(name) is not None:
        return "endpoint"
    raise ExplainError(
        f"no cluster, listener, route configuration or endpoint {name!r} is served to this "
        "host's Envoy (see `meshagent proxy-config clusters|listeners|routes`)"
    )


# -- documents as inputs ---------------------------------------------------------------------


def _ref(raw: RawResource) -> str:
    return f"{raw.kind}/{display_name(raw)}"


def _input(
    role: str, view: View, provenance: Provenance | None, paths: Iterable[str], note: str = ""
) -> Input | None:
    """The document behind provenance as an input, with those of paths it has."""
    if provenance is None:
        return None
    raw = document_of(view.documents, provenance)
    if raw is None:
        return Input(role, provenance.ref, provenance.location, note=note)
    return Input(role, _ref(raw), raw.provenance.location, fields(raw, paths), file_of(raw), note)


def _service(view: View, host: str, port: int | None, found: _Found) -> None:
    service = view.snapshot.services.get(host)
    if service is None:
        found.note(f"no service defines host {host}")
        return
    raw = document_of(view.documents, service.provenance)
    paths = ["spec.resolution", "spec.location"]
    if raw is not None:
        hosts = lookup(raw.body, "spec.hosts")[1]
        if isinstance(hosts, list) and host in hosts:
            paths.insert(0, f"spec.hosts[{hosts.index(host)}]")
        ports = lookup(raw.body, "spec.ports")[1]
        k = None if port is None else index_of(ports, {"number": port})
        k = k if k is not None or port is None else index_of(ports, {"port": port})
        if k is not None:
            paths.insert(1, f"spec.ports[{k}]")
    found.add(_input("service", view, service.provenance, paths))
    found.conflict(_claim_conflict(view, host, services=True))


def _rule(view: View, host: str, subset: str, port: int | None, found: _Found) -> None:
    rule = view.rules.rule_for(host)
    if rule is None:
        if subset:
            found.note(f"no DestinationRule applies to {host}: subset {subset} is unknown")
        return
    raw = document_of(view.documents, rule.provenance)
    body = raw.body if raw is not None else {}
    paths = ["spec.host", *_keys(body, "spec.trafficPolicy", skip="portLevelSettings")]
    levels = lookup(body, "spec.trafficPolicy.portLevelSettings")[1]
    k = index_of(levels, {"port": {"number": port}}) if port is not None else None
    if k is not None:
        paths.append(f"spec.trafficPolicy.portLevelSettings[{k}]")
    k = index_of(lookup(body, "spec.subsets")[1], {"name": subset}) if subset else None
    if k is not None:
        paths.append(f"spec.subsets[{k}]")
    if subset:  # a Consul service-resolver's subsets, and its other settings
        paths.append(f"Subsets.{subset}")
    paths += [f"{k}" for k in body if k[:1].isupper() and k not in _CONSUL_BOOKKEEPING]
    found.add(_input("destination rule", view, rule.provenance, paths))
    if rule.workload_selector is None:
        found.conflict(_claim_conflict(view, rule.host, services=False))


def _keys(body: Any, path: str, *, skip: str = "") -> list[str]:
    value = lookup(body, path)[1]
    return [f"{path}.{k}" for k in value if k != skip] if isinstance(value, dict) else []


def _claim_conflict(view: View, host: str, *, services: bool) -> Conflict | None:
    claimants = view.documents.claimants(host)[0 if services else 1]
    if len(claimants) < 2:
        return None
    winner, losers = claimants[0], claimants[1:]
    if any(raw.source != winner.source for raw in losers):
        rule = (
            "between sources, sources.consul.precedence and sources.kubernetes.precedence "
            "decide (files first by default)"
        )
    else:
        rule = "the oldest definition wins (first seen; arriving together: by namespace/name)"
    what = "service host" if services else "DestinationRule host"
    return Conflict(f"{what} {host}", _where(winner), tuple(_where(r) for r in losers), rule)


def _where(raw: RawResource) -> str:
    return f"{_ref(raw)} ({raw.provenance.location})"


def _attributed(view: View, type_url: str, name: str, found: _Found) -> None:
    """The coarse origins xds/attribution.py knows (what NACK messages name)."""
    for origin in attribution.origins(view.snapshot, view.proxy, type_url, name):
        ref, _, location = origin.partition(" (")
        found.add(Input("input", ref, location.rstrip(")")))


def _patches(view: View, type_url: str, name: str, found: _Found) -> None:
    """The EnvoyFilters and WasmPlugins that changed or added the resource (after
    translation, so what they did is not in the documents' fields above)."""
    for origin in view.resources.patched_by.get((type_url, name), ()):
        ref, _, location = origin.partition(" (")
        found.add(Input("patched by", ref, location.rstrip(")")))


# -- clusters and endpoints ------------------------------------------------------------------


def _cluster(view: View, name: str, found: _Found) -> None:
    parts = name.split("|")
    if len(parts) == 4 and parts[0] == names.OUTBOUND and parts[1].isdigit():
        _, port, subset, host = parts
        _service(view, host, int(port), found)
        _rule(view, host, subset, int(port), found)
        _endpoint_sources(view, host, found)
        return
    _attributed(view, typeurls.CLUSTER, name, found)


def _endpoint_sources(view: View, host: str, found: _Found) -> None:
    """Where the endpoints of host come from, when not from the service's own document."""
    service = view.snapshot.services.get(host)
    own = service.provenance if service is not None else None
    seen: list[Provenance] = []
    for endpoint in view.snapshot.endpoints.get(host, ()):
        prov = endpoint.provenance
        if prov is not None and prov not in seen and (own is None or prov.ref != own.ref):
            seen.append(prov)
    for prov in seen[:MAX_ENDPOINT_INPUTS]:
        found.add(_input("endpoints", view, prov, ["spec.address", "spec.labels"]))
    if len(seen) > MAX_ENDPOINT_INPUTS:
        found.note(f"and {len(seen) - MAX_ENDPOINT_INPUTS} more endpoint sources")


def _address(text: str) -> tuple[str, int | None] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or host.count(":") == 1:
        host, port = text, ""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return host.strip("[]"), int(port) if port else None


def _endpoint(view: View, name: str, found: _Found) -> bool:
    parsed = _address(name)
    if parsed is None:
        raise ExplainError(f"{name!r} is not an endpoint address (IP or IP:PORT)")
    address, port = parsed
    served = False
    needle = address.encode()
    for cluster, resource in sorted(view.resources.of(typeurls.ENDPOINT).items()):
        if needle not in resource.value or not _has_endpoint(
            json_format.MessageToDict(resource.body), address, port
        ):
            continue
        served = True
        found.note(f"endpoint of cluster {cluster}")
        parts = cluster.split("|")
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        host = parts[3]
        for endpoint in view.snapshot.endpoints.get(host, ()):
            if endpoint.address == address:
                _endpoint_input(view, endpoint.provenance, address, found)
        _service(view, host, int(parts[1]), found)
        _rule(view, host, parts[2], int(parts[1]), found)
    return served


def _endpoint_input(view: View, provenance: Provenance | None, address: str, found: _Found) -> None:
    raw = document_of(view.documents, provenance)
    k = index_of(lookup(raw.body, "spec.endpoints")[1], {"address": address}) if raw else None
    paths = [f"spec.endpoints[{k}]"] if k is not None else ["spec.address", "spec.labels"]
    found.add(_input("endpoint", view, provenance, paths))


def _has_endpoint(cla: dict[str, Any], address: str, port: int | None) -> bool:
    for locality in cla.get("endpoints", []):
        for lb in locality.get("lbEndpoints", []):
            socket = lb.get("endpoint", {}).get("address", {}).get("socketAddress", {})
            if socket.get("address") == address and port in (None, socket.get("portValue")):
                return True
    return False


# -- routes ----------------------------------------------------------------------------------


def _route(view: View, name: str, found: _Found) -> bool:
    config_name, _, rest = name.partition("/")
    vhost_name, _, route_name = rest.partition("/")
    resource = view.resources.of(typeurls.ROUTE).get(config_name)
    if resource is None:
        raise ExplainError(f"no route configuration {config_name!r} is served to this host")
    config = route_pb2.RouteConfiguration.FromString(resource.value)
    vhosts: list[dict[str, Any]] = [
        {"name": v.name, "routes": [{"name": r.name} for r in v.routes]}
        for v in config.virtual_hosts
    ]
    if view.proxy.proxy_type == ROUTER or not config_name.isdigit():
        _attributed(view, typeurls.ROUTE, config_name, found)
        return True
    if not vhost_name:
        for each in vhosts:
            _virtual_host(view, each, found)
        return True
    vhost = next((v for v in vhosts if v["name"] == vhost_name), None)
    if vhost is None:
        raise ExplainError(f"route configuration {config_name} has no virtual host {vhost_name!r}")
    vs = _virtual_host(view, vhost, found)
    if route_name:
        _one_route(view, vhost, route_name, vs, found)
    return True


def _virtual_host(view: View, vhost: dict[str, Any], found: _Found) -> Any:
    """The service and VirtualService of a virtual host (`host:port`); the VirtualService."""
    host, _, port_text = str(vhost.get("name", "")).rpartition(":")
    if not port_text.isdigit():
        return None
    port = int(port_text)
    _service(view, host, port, found)
    vs = view.routing.vs_for(host)
    if vs is None:
        found.note(f"{host}:{port}: no VirtualService, the default route to its cluster")
        return None
    raw = document_of(view.documents, vs.provenance)
    hosts = lookup(raw.body, "spec.hosts")[1] if raw is not None else None
    paths = [
        f"spec.hosts[{hosts.index(h)}]"
        for h in vs.hosts
        if isinstance(hosts, list) and h in hosts and (h == host or h.startswith("*"))
    ]
    found.add(_input("virtual service", view, vs.provenance, paths))
    found.conflict(_vs_conflict(view, host, vs))
    return vs


def _vs_conflict(view: View, host: str, winner: Any) -> Conflict | None:
    """VirtualServices for sidecars that also name host: the first by namespace/name wins."""
    losers = [vs for vs in view.sidecar_routing.get(host, ()) if vs is not winner]
    if not losers:
        return None
    return Conflict(
        f"VirtualService host {host}",
        attribution.render(winner.provenance) or winner.name,
        tuple(attribution.render(vs.provenance) or vs.name for vs in losers),
        "the first VirtualService by namespace/name wins; the others are ignored for this host",
    )


def _one_route(view: View, vhost: dict[str, Any], wanted: str, vs: Any, found: _Found) -> None:
    routes = vhost.get("routes", [])
    index = next((i for i, r in enumerate(routes) if r.get("name") == wanted), None)
    if index is None and wanted.isdigit() and int(wanted) < len(routes):
        index = int(wanted)
    if index is None:
        raise ExplainError(
            f"virtual host {vhost.get('name')} has no route {wanted!r} "
            "(give its name or its 0-based index)"
        )
    if vs is None:
        return  # the default route: the service is all there is
    port = int(str(vhost["name"]).rpartition(":")[2])
    sources = route_sources(vs, port)
    if index >= len(sources):
        return
    i, j = sources[index]
    route = vs.http[i]
    paths = [
        f"spec.http[{i}].{k}"
        for k in (
            "name",
            "timeout",
            "retries",
            "fault",
            "mirror",
            "mirrors",
            "rewrite",
            "redirect",
            "directResponse",
            "headers",
            "corsPolicy",
        )
    ]
    if j is not None:
        paths.insert(1, f"spec.http[{i}].match[{j}]")
    for k in range(len(route.route)):
        paths += [f"spec.http[{i}].route[{k}].destination", f"spec.http[{i}].route[{k}].weight"]
    found.drop("virtual service")  # now with the route's fields
    raw = document_of(view.documents, vs.provenance)
    hosts = (
        [f"spec.hosts[{k}]" for k, _ in enumerate(lookup(raw.body, "spec.hosts")[1] or [])]
        if raw is not None
        else []
    )
    found.add(_input("virtual service", view, vs.provenance, [*hosts, *paths]))
    if raw is not None and len(lookup(raw.body, "spec.http")[1] or []) != len(vs.http):
        found.note("routes merged from delegate VirtualServices: indices are the merged ones")
    for weighted in route.route:
        dest = weighted.destination
        _service(view, dest.host, dest.port or port, found)
        _rule(view, dest.host, dest.subset, dest.port or port, found)
    found.note(
        f"Envoy route {index} of {vhost['name']} is built from spec.http[{i}]"
        + (f".match[{j}]" if j is not None else " (no match: all requests)")
    )


# -- text ------------------------------------------------------------------------------------


def render(explanation: Explanation) -> str:
    """The explanation as text for a terminal."""
    state = "served" if explanation.served else "NOT served"
    lines = [f"{explanation.kind} {explanation.name} ({state})"]
    for item in explanation.inputs:
        lines.append(f"  {item.role}: {item.ref}  {item.location}")
        width = max((len(f.path) for f in item.fields), default=0)
        for f in item.fields:
            where = f"{item.file}:{f.line}" if f.line is not None and item.file else ""
            lines.append(f"      {f.path:<{width}}  {where:<24} {f.value}".rstrip())
        if item.note:
            lines.append(f"      ({item.note})")
    for c in explanation.conflicts:
        lines.append(f"  conflict over {c.subject}: {c.winner} wins")
        lines.extend(f"      lost: {loser}" for loser in c.losers)
        lines.append(f"      ({c.rule})")
    lines.extend(f"  note: {n}" for n in explanation.notes)
    return "\n".join(lines) + "\n"
