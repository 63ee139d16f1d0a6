"""RouteConfigurations: one per HTTP port, one virtual host per host reachable on it.

A host without a VirtualService gets Istio's default route (everything to the port's
cluster, no timeout, default retries). With one, each HttpMatch of each HttpRoute becomes one
Envoy route, in order; matches bound to another port, or to source labels (this proxy has
none), or to gateways only (match.gateways without `mesh`), are left out, and a route left
with no match is skipped. As in Istio, no catch-all is
appended after a VirtualService's routes.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from meshagent.model import (
    Destination,
    HttpMatch,
    HttpRoute,
    Service,
    VirtualService,
    WeightedDestination,
)
from meshagent.model.gateway import MESH_GATEWAY
from meshagent.model.proxy import REGISTRY_ONLY, ProxySpec
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate import route_action as actions
from meshagent.xds.translate.route_action import RouteScope
from meshagent.xds.translate.route_decorations import (
    apply_filter_configs,
    apply_header_ops,
    merge_header_ops,
)
from meshagent.xds.translate.route_match import build_route_match

KUBERNETES_SERVICE_INFIX = ".svc."


def domains_for(host: str, port: int, *, namespace: str, proxy_namespace: str) -> list[str]:
    """Host names a client may use for host: the FQDN, and Istio's short forms of
    `<name>.<ns>.svc.<suffix>` (the bare name only within the proxy's own namespace),
    each also with `:port`."""
    # Spelled out rather than looped: this runs once per host and port of the mesh.
    at = f":{port}"
    if KUBERNETES_SERVICE_INFIX not in host or host.startswith("*"):
        return [host, host + at]
    name, ns, _rest = host.split(".", 2)
    short = f"{name}.{ns}"
    svc = short + ".svc"
    if namespace == proxy_namespace:
        return [host, host + at, name, name + at, short, short + at, svc, svc + at]
    return [host, host + at, short, short + at, svc, svc + at]


def address_domains(service: Service, port: int) -> list[str]:
    """Under capture, a client may call a service by its address (a VIP, a ClusterIP), and
    the Host header is then that address: `ip`, `ip:port` (IPv6 in brackets), as in Istio.
    CIDR ranges name no host."""
    out: list[str] = []
    for address in service.client_addresses():
        if "/" in address:
            continue
        shown = f"[{address}]" if ":" in address else address
        out += [shown, f"{shown}:{port}"]
    return out


def _cluster_weights(
    destinations: Iterable[WeightedDestination], scope: RouteScope
) -> list[rc.WeightedCluster.ClusterWeight]:
    out = []
    for weighted in destinations:
        entry = rc.WeightedCluster.ClusterWeight(
            name=actions.destination_cluster(weighted.destination, scope),
            weight=protos.uint32(weighted.weight),
        )
        apply_header_ops(entry, weighted.headers)
        out.append(entry)
    return out


def _forward(out: rc.Route, route: HttpRoute, match: HttpMatch | None, scope: RouteScope) -> None:
    """A forwarding action: cluster(s), hashing, timeout, retries, mirrors, rewrite."""
    action = actions.no_timeout()
    # Zero-weight destinations receive nothing; Envoy needs none of them listed.
    destinations = [w for w in route.route if w.weight > 0] or list(route.route)
    if len(destinations) == 1:
        action.cluster = actions.destination_cluster(destinations[0].destination, scope)
    else:
        action.weighted_clusters.clusters.extend(_cluster_weights(destinations, scope))
    hashing = actions.route_hash(route, scope)
    action.hash_policy.extend(actions.hash_policies(hashing))
    if route.timeout_ms is not None:
        # A zero grpc_timeout_header_max (the no-timeout default) would make Envoy ignore the
        # route timeout; bound gRPC's header and whole streams by the same timeout instead.
        timeout = protos.duration(route.timeout_ms)
        action.timeout.CopyFrom(timeout)
        action.max_stream_duration.max_stream_duration.CopyFrom(timeout)
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(timeout)
    retry = actions.retry_policy(route.retries, hashing=hashing is not None)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    action.request_mirror_policies.extend(actions.mirror_policy(m, scope) for m in route.mirrors)
    if route.rewrite is not None:
        actions.configure_rewrite(action, route.rewrite, match)
    out.route.CopyFrom(action)


def build_route(route: HttpRoute, match: HttpMatch | None, scope: RouteScope) -> rc.Route | None:
    """The Envoy route for one (HttpRoute, HttpMatch) pair; None when it has no action."""
    out = rc.Route(
        name=names.http_route_name(route.name, match.name if match else ""),
        match=build_route_match(match),
    )
    if route.redirect is not None:
        out.redirect.CopyFrom(actions.redirect_action(route.redirect))
    elif route.direct_response is not None:
        out.direct_response.CopyFrom(actions.direct_response_action(route.direct_response))
    elif route.route:
        _forward(out, route, match, scope)
    else:
        return None
    headers = route.headers
    if len(route.route) == 1:
        headers = merge_header_ops(headers, route.route[0].headers)
    apply_header_ops(out, headers)
    apply_filter_configs(out, route.fault, route.cors)
    return out


def _matches_on_port(route: HttpRoute, port: int) -> list[int | None]:
    """Indices of the matches of route that apply on port: [None] for a catch-all, [] for
    none."""
    if not route.matches:
        return [None]
    return [
        i
        for i, m in enumerate(route.matches)
        if (m.port is None or m.port == port)
        and not m.source_labels
        and (not m.gateways or MESH_GATEWAY in m.gateways)
    ]


def route_sources(vs: VirtualService, port: int) -> list[tuple[int, int | None]]:
    """(index in vs.http, index in its matches or None for a catch-all) of each Envoy route
    that virtual_service_routes builds on port, in order: the one place that decides which
    HTTP routes become Envoy routes (`meshagent explain` reads it too)."""
    return [
        (i, j)
        for i, route in enumerate(vs.http)
        if route.redirect is not None or route.direct_response is not None or route.route
        for j in _matches_on_port(route, port)
    ]


def virtual_service_routes(vs: VirtualService, scope: RouteScope) -> list[rc.Route]:
    """Every Envoy route of vs's HTTP routes that applies on scope.port, in order."""
    out: list[rc.Route] = []
    for i, j in route_sources(vs, scope.port):
        route = vs.http[i]
        built = build_route(route, None if j is None else route.matches[j], scope)
        assert built is not None  # route_sources keeps only routes with an action
        out.append(built)
    return out


def _plain_default_route() -> rc.Route:
    out = rc.Route(name=names.default_route_name(), match=build_route_match(None))
    out.route.CopyFrom(actions.no_timeout())
    retry = actions.retry_policy(None, hashing=False)
    assert retry is not None  # the default policy always exists
    out.route.retry_policy.CopyFrom(retry)
    return out


# The default route of every host without consistent hashing, but for the cluster name: most
# hosts in a mesh, so it is built once and copied.
_PLAIN_DEFAULT_ROUTE = _plain_default_route()


def plain_default_route() -> rc.Route:
    """The default route without consistent hashing and without its cluster name (shared:
    never mutate it)."""
    return _PLAIN_DEFAULT_ROUTE


def default_route(host: str, scope: RouteScope) -> rc.Route:
    """Istio's route for a host no VirtualService shapes: everything to its port's cluster."""
    destination = Destination(host, port=scope.port)
    out = rc.Route()
    if actions.destination_hash(destination, scope) is None:
        out.CopyFrom(_PLAIN_DEFAULT_ROUTE)
        out.route.cluster = actions.destination_cluster(destination, scope)
        return out
    out.name, out.match.prefix = names.default_route_name(), "/"
    _forward(out, HttpRoute(route=(WeightedDestination(destination),)), None, scope)
    return out


def build_virtual_host(
    host: str, domains: list[str], vs: VirtualService | None, scope: RouteScope
) -> rc.VirtualHost:
    """The virtual host for host on scope.port."""
    routes = virtual_service_routes(vs, scope) if vs is not None else [default_route(host, scope)]
    return rc.VirtualHost(
        name=names.virtual_host_name(host, scope.port), domains=domains, routes=routes
    )


def build_route_configuration(
    port: int, virtual_hosts: Iterable[rc.VirtualHost]
) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration of port. A domain already claimed by an earlier virtual host is
    dropped from later ones: Envoy rejects a configuration that lists a domain twice."""
    out = route_pb2.RouteConfiguration(name=names.route_name(port))
    # Routes may name clusters that arrive later over CDS; do not reject them meanwhile.
    out.validate_clusters.value = False
    seen: set[str] = set()
    for vhost in virtual_hosts:
        if seen.isdisjoint(vhost.domains):
            out.virtual_hosts.append(vhost)
            seen.update(vhost.domains)
            continue
        kept = [d for d in vhost.domains if d not in seen]
        if kept:
            added = out.virtual_hosts.add()
            added.CopyFrom(vhost)
            del added.domains[:]
            added.domains.extend(kept)
            seen.update(kept)
    return out


def catch_all_virtual_host(proxy: ProxySpec) -> rc.VirtualHost:
    """The last virtual host of every outbound HTTP route configuration under capture: a
    Host no service claims goes through (allow_any; to the egressProxy's cluster when the
    Sidecar names one) or gets 502 (block_all), as in Istio."""
    route = rc.Route(match=rc.RouteMatch(prefix="/"))
    if proxy.outbound_traffic_policy == REGISTRY_ONLY:
        route.name = names.BLOCK_ALL_VIRTUAL_HOST
        route.direct_response.status = 502
        name = names.BLOCK_ALL_VIRTUAL_HOST
    else:
        route.name = names.ALLOW_ANY_VIRTUAL_HOST
        egress = proxy.egress_proxy  # a Sidecar's outboundTrafficPolicy.egressProxy
        route.route.cluster = (
            names.PASSTHROUGH_CLUSTER
            if egress is None
            else names.cluster_name(egress.port, egress.host, egress.subset)
        )
        route.route.timeout.CopyFrom(protos.duration(0))
        name = names.ALLOW_ANY_VIRTUAL_HOST
    return rc.VirtualHost(name=name, domains=["*"], routes=[route])
