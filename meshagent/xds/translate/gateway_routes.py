"""Route configurations of a gateway: the VirtualServices bound to its servers.

A VirtualService binds a server when its `gateways:` names the server's Gateway, it is
exported to the router's namespace, and one of its hosts meets one of the server's hosts
that the VirtualService's namespace may use (`ns/host`, `*/host`). Each host in common
becomes a virtual host `<host>:<port>` (the more specific of the two names, as Istio's
host intersection); VirtualServices that meet on one host append their routes in order.
An httpsRedirect server answers every request with a redirect to https (require_tls ALL),
also for its hosts no VirtualService binds. A configuration left without virtual hosts gets
Istio's `blackhole:<port>` that answers 404.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from meshagent.model import HttpMatch, MeshSnapshot, ProxySpec, VirtualService
from meshagent.model.gateway import bound_gateways, split_server_host
from meshagent.model.labels import selector_matches
from meshagent.xds import names
from meshagent.xds.translate.context import RuleIndex
from meshagent.xds.translate.gateway_plan import PlacedServer
from meshagent.xds.translate.route_action import RouteScope
from meshagent.xds.translate.routes import build_route


def host_subset(narrow: str, wide: str) -> bool:
    """Whether every name narrow matches, wide matches too (Istio's Name.SubsetOf)."""
    if narrow == wide:
        return True
    if not wide.startswith("*"):
        return False
    if narrow.startswith("*"):
        return narrow[1:].endswith(wide[1:])
    return narrow.endswith(wide[1:])


def intersect_hosts(server_hosts: Iterable[str], vs_hosts: Iterable[str]) -> list[str]:
    """Names both sides serve: for each pair that meets, the more specific name, once."""
    out: list[str] = []
    wanted = list(vs_hosts)
    for mine in server_hosts:
        for theirs in wanted:
            found = (
                mine if host_subset(mine, theirs) else theirs if host_subset(theirs, mine) else None
            )
            if found is not None and found not in out:
                out.append(found)
    return out


def hosts_for_namespace(server_hosts: Iterable[str], namespace: str) -> list[str]:
    """The host parts of server hosts ("ns/host") a VirtualService of namespace may bind."""
    out = []
    for entry in server_hosts:
        ns, host = split_server_host(entry)
        if ns in ("*", namespace):
            out.append(host)
    return out


def exported_to(vs: VirtualService, namespace: str) -> bool:
    """Whether vs is visible in namespace (exportTo: none or `*` = everywhere, `.` = its own)."""
    if not vs.export_to:
        return True
    return any(
        e == "*" or e == namespace or (e == "." and vs.namespace == namespace) for e in vs.export_to
    )


def bound_virtual_services(
    snapshot: MeshSnapshot, gateway_key: str, proxy: ProxySpec
) -> list[VirtualService]:
    """The VirtualServices bound to the Gateway gateway_key and visible to proxy, in Istio's
    order (its VirtualServicesForGateway): those private to the router's namespace, then
    those exported to it by name, then the public ones; each group oldest first, which
    without creation times is by name, then namespace (Istio's tie-break)."""
    out = []
    for vs in snapshot.virtual_services.values():
        bound = vs.gateways and gateway_key in bound_gateways(vs.gateways, vs.namespace)
        if bound and exported_to(vs, proxy.namespace):
            out.append(vs)
    out.sort(key=lambda vs: (_visibility_rank(vs, proxy.namespace), vs.name, vs.namespace))
    return out


def _visibility_rank(vs: VirtualService, namespace: str) -> int:
    """0: private to namespace (exportTo `.` or its own namespace), 1: exported to namespace
    by name, 2: public (no exportTo, or `*`), as Istio indexes VirtualServices."""
    if not vs.export_to or "*" in vs.export_to:
        return 2
    if vs.namespace == namespace and ("." in vs.export_to or namespace in vs.export_to):
        return 0
    return 1


def _applies(match: HttpMatch, port: int, proxy: ProxySpec, gateway: str, ns: str) -> bool:
    """A match's port must be the server's; then, as Istio's sourceMatchHTTP, a match with
    `gateways:` holds when they name the server's Gateway (key gateway; ns: the
    VirtualService's namespace), whatever its sourceLabels, and one without holds when its
    sourceLabels are the router's own labels."""
    if match.port is not None and match.port != port:
        return False
    if match.gateways:
        return gateway in bound_gateways(match.gateways, ns)
    return not match.source_labels or selector_matches(match.source_labels, proxy.labels)


def gateway_routes(
    vs: VirtualService, scope: RouteScope, proxy: ProxySpec, gateway: str = ""
) -> list[rc.Route]:
    """vs's HTTP routes on a server of the Gateway gateway ("namespace/name"), in order."""
    out: list[rc.Route] = []
    for route in vs.http:
        matches: list[HttpMatch | None] = (
            [m for m in route.matches if _applies(m, scope.port, proxy, gateway, vs.namespace)]
            if route.matches
            else [None]
        )
        for match in matches:
            built = build_route(route, match, scope)
            if built is not None:
                out.append(built)
    return out


def _virtual_host(host: str, port: int, routes: list[rc.Route]) -> rc.VirtualHost:
    return rc.VirtualHost(
        name=names.virtual_host_name(host, port),
        domains=[host],
        routes=routes,
        include_request_attempt_count=True,
    )


def build_gateway_route_configuration(
    route_name: str,
    servers: list[PlacedServer],
    snapshot: MeshSnapshot,
    proxy: ProxySpec,
    rules: RuleIndex,
) -> route_pb2.RouteConfiguration:
    """The RouteConfiguration route_name of servers (all on one port)."""
    port = servers[0].server.port
    scope = RouteScope(port, snapshot.services, rules)
    # By host ignoring case, as Envoy matches domains (it rejects the whole configuration for
    # two that differ in case only): the routes of both join the first spelling's host.
    vhosts: dict[str, rc.VirtualHost] = {}
    for placed in servers:
        redirect = placed.server.tls is not None and placed.server.tls.https_redirect
        for vs in bound_virtual_services(snapshot, placed.gateway.key, proxy):
            allowed = hosts_for_namespace(placed.server.hosts, vs.namespace)
            common = intersect_hosts(allowed, vs.hosts)
            if not common:
                continue
            routes = gateway_routes(vs, scope, proxy, placed.gateway.key)
            for host in map(str.lower, common):  # Istio lowercases the virtual hosts
                vhost = vhosts.get(host)
                if vhost is None:
                    vhost = vhosts[host.lower()] = _virtual_host(host, port, [])
                vhost.routes.extend(routes)
                if redirect:
                    vhost.require_tls = rc.VirtualHost.ALL
        if redirect:
            for entry in placed.server.hosts:
                host = split_server_host(entry)[1].lower()
                vhost = vhosts.get(host)
                if vhost is None:
                    vhost = vhosts[host.lower()] = _virtual_host(host, port, [])
                vhost.require_tls = rc.VirtualHost.ALL
    out = route_pb2.RouteConfiguration(name=route_name, ignore_port_in_host_matching=True)
    out.validate_clusters.value = False
    if not vhosts:
        out.virtual_hosts.append(
            rc.VirtualHost(name=names.gateway_blackhole_virtual_host_name(port), domains=["*"])
        )
        return out
    for vhost in vhosts.values():
        sort_catch_all_last(vhost)
    out.virtual_hosts.extend(vhosts[h] for h in sorted(vhosts))  # Istio sorts by name
    return out


def is_catch_all(route: rc.Route) -> bool:
    """Istio's IsCatchAllRoute: path prefix `/` (or path-separated prefix `/`, or regex
    `.*`) and no header, query or metadata condition."""
    match = route.match
    which = match.WhichOneof("path_specifier")
    if which == "prefix":
        path_all = match.prefix == "/"
    elif which == "path_separated_prefix":
        path_all = match.path_separated_prefix == "/"
    elif which == "safe_regex":
        path_all = match.safe_regex.regex == ".*"
    else:
        path_all = False
    return (
        path_all and not match.headers and not match.query_parameters and not match.dynamic_metadata
    )


def sort_catch_all_last(vhost: rc.VirtualHost) -> None:
    """Istio's SortVHostRoutes on a gateway virtual host: catch-all routes move to the end,
    the others keep their order (so a VirtualService bound after another that ends in a
    catch-all still gets its specific paths)."""
    flags = [is_catch_all(r) for r in vhost.routes]
    if flags == sorted(flags):
        return  # already in order (the common case): no copy
    ordered = [r for r, f in zip(vhost.routes, flags, strict=True) if not f]
    ordered += [r for r, f in zip(vhost.routes, flags, strict=True) if f]
    copies = [rc.Route() for _ in ordered]
    for copy, route in zip(copies, ordered, strict=True):
        copy.CopyFrom(route)
    del vhost.routes[:]
    vhost.routes.extend(copies)
