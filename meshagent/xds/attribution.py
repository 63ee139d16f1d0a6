"""Which configuration an Envoy resource came from: resource names back to model objects and
their provenance (file:line, Consul index, resourceVersion), for errors about resources (a
failed consistency check, a NACK) that a person must fix in their files.

Names are read the way xds/names.py writes them. Pure and read-only; it scans the snapshot,
so it is meant for the rare error path, not for every publish.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Provenance
from meshagent.xds import names, typeurls

AGENT_CONFIG = "agent config"
MAX_ORIGINS = 5
_GATEWAY_TYPES = (typeurls.LISTENER, typeurls.ROUTE, typeurls.SECRET)
_LISTENER = re.compile(r"(?P<address>.+)_(?P<port>-?\d+)")


def render(provenance: Provenance | None) -> str | None:
    """ "Kind/namespace/name (location)", or None when nothing is known."""
    if provenance is None:
        return None
    return f"{provenance.ref} ({provenance.location})"


def origins(snapshot: MeshSnapshot, proxy: ProxySpec, type_url: str, name: str) -> list[str]:
    """Where the resource type_url/name came from, rendered; [] when unknown."""
    if proxy.proxy_type == ROUTER and type_url in _GATEWAY_TYPES:
        from meshagent.xds.translate.gateway import gateway_origins  # translate imports xds

        found = [o for p in gateway_origins(snapshot, proxy, type_url, name) if (o := render(p))]
        if found:
            return found
    if type_url in (typeurls.CLUSTER, typeurls.ENDPOINT):
        return _cluster(snapshot, name)
    if type_url == typeurls.ROUTE:
        return _route(snapshot, name)
    if type_url == typeurls.LISTENER:
        return _listener(snapshot, proxy, name)
    if type_url == typeurls.SECRET:
        return [f"{AGENT_CONFIG} ca"]
    return []


def describe(
    snapshot: MeshSnapshot, proxy: ProxySpec, resources: Iterable[tuple[str, str]]
) -> list[str]:
    """The distinct origins of resources ((type URL, name) pairs), at most MAX_ORIGINS of
    them and a count of the rest."""
    found: list[str] = []
    for type_url, name in resources:
        for origin in origins(snapshot, proxy, type_url, name):
            if origin not in found:
                found.append(origin)
    if len(found) > MAX_ORIGINS:
        return [*found[:MAX_ORIGINS], f"and {len(found) - MAX_ORIGINS} more"]
    return found


def _cluster(snapshot: MeshSnapshot, name: str) -> list[str]:
    parts = name.split("|")
    if len(parts) == 4 and parts[0] == names.OUTBOUND:
        _, _, subset, host = parts
        out = [render(getattr(snapshot.services.get(host), "provenance", None))]
        if subset:
            rule = snapshot.destination_rule_for(host)
            out.append(render(rule.provenance if rule is not None else None))
        return [o for o in out if o]
    if parts[0] == names.INBOUND:
        return [f"{AGENT_CONFIG} workloads, port {parts[1]}"]
    if len(parts) == 3 and parts[0] == "jwks":
        return [
            o
            for p in snapshot.request_authentications.values()
            if parts[1] in repr(p.jwt_rules) and (o := render(p.provenance))
        ]
    return []


def _route(snapshot: MeshSnapshot, name: str) -> list[str]:
    if not name.isdigit():
        return [f"{AGENT_CONFIG} workloads"] if name.startswith(names.INBOUND) else []
    return _services_on(snapshot, int(name))


def _services_on(snapshot: MeshSnapshot, port: int) -> list[str]:
    """The HTTP services on port and the VirtualServices that route their hosts."""
    hosts = {
        s.host for s in snapshot.services.values() if (p := s.port(port)) is not None and p.is_http
    }
    out = [render(snapshot.services[h].provenance) for h in sorted(hosts)]
    out += [
        render(vs.provenance)
        for _, vs in sorted(snapshot.virtual_services.items())
        if not hosts.isdisjoint(vs.hosts)
    ]
    return [o for o in out if o]


def _listener(snapshot: MeshSnapshot, proxy: ProxySpec, name: str) -> list[str]:
    if name.startswith(names.INBOUND + "_"):
        return [f"{AGENT_CONFIG} workloads", *_security_policies(snapshot), *_telemetry(snapshot)]
    match = _LISTENER.fullmatch(name)
    if match is None:
        return _telemetry(snapshot)
    local = int(match["port"])
    out = [
        f"{AGENT_CONFIG} outbound.tcp {b.host}:{b.port}"
        for b in proxy.tcp_bindings
        if b.listen_port == local and b.listen_address == match["address"]
    ]
    ports = {p for p, to in proxy.port_overrides if to == local}
    if local - proxy.port_offset not in {p for p, _ in proxy.port_overrides}:
        ports.add(local - proxy.port_offset)
    if proxy.port_offset or proxy.port_overrides:
        out.append(f"{AGENT_CONFIG} outbound.port_offset/outbound.ports")
    for port in sorted(ports):
        out += _services_on(snapshot, port)
    return out + _telemetry(snapshot)


def _telemetry(snapshot: MeshSnapshot) -> list[str]:
    """The Telemetries that put access logs (a CEL filter first: Envoy compiles it) or
    tracing on listeners."""
    found = sorted(
        (t for t in snapshot.telemetries.values() if t.access_logging or t.tracing),
        key=lambda t: (not any(r.filter for r in t.access_logging), t.namespace, t.name),
    )
    return [o for t in found if (o := render(t.provenance))]


def _security_policies(snapshot: MeshSnapshot) -> list[str]:
    """The policies that shape inbound listeners (their RBAC, JWT and TLS)."""
    found: list[Provenance | None] = [
        *(p.provenance for _, p in sorted(snapshot.authorization_policies.items())),
        *(p.provenance for _, p in sorted(snapshot.request_authentications.items())),
        *(p.provenance for _, p in sorted(snapshot.peer_authentications.items())),
    ]
    return [o for p in found if (o := render(p))]
