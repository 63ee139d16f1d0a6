"""Gateway servers that route streams, not requests: TCP, TLS terminated then TCP, PASSTHROUGH
(TLS forwarded untouched, chosen by SNI) and AUTO_PASSTHROUGH (the east-west gateway).

As Istio builds them (its gateway.go):
- **TCP** (and TLS that the gateway terminates): one filter chain, a tcp_proxy to the
  destinations of the first `tcp:` route of a bound VirtualService whose matches hold on the
  server (port, `gateways:`); a terminated TLS server's chain matches its hosts by SNI.
- **PASSTHROUGH**: a filter chain per match of the `tls:` routes of bound VirtualServices
  that holds on the server, matched on the match's `sniHosts`, tcp_proxy to the route's
  destinations; the client's TLS reaches the backend, whose certificate the client sees.
- **AUTO_PASSTHROUGH**: no VirtualService: a filter chain per port (and DestinationRule
  subset) of every mesh-internal service whose host the server's hosts cover, matched on the
  SNI that mesh mTLS sends (`outbound_.<port>_.<subset>_.<host>`) and Istio's mTLS ALPNs,
  to a plaintext "SNI-DNAT" cluster of that name: the client's mTLS passes through to the
  workload, which terminates it. The clusters take their endpoints from the ordinary
  outbound cluster's (EDS service name `outbound|<port>|<subset>|<host>`).

A server for which nothing routes gets no chain (Istio logs it); a listener left without
chains is not sent (gateway.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3 import listener_components_pb2 as lc

from meshagent.model import MeshSnapshot, ProxySpec, Service, TcpRoute, VirtualService
from meshagent.model.gateway import AUTO_PASSTHROUGH, match_applies, split_server_host
from meshagent.model.routing import L4Match
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.clusters import ClusterInputs, build_cluster
from meshagent.xds.translate.context import Context, RuleIndex
from meshagent.xds.translate.gateway_plan import PlacedServer
from meshagent.xds.translate.gateway_routes import bound_virtual_services, host_subset
from meshagent.xds.translate.gateway_tls import downstream_tls
from meshagent.xds.translate.listeners import tcp_proxy
from meshagent.xds.translate.policy import ClusterPlan, Discovery, plan_clusters
from meshagent.xds.translate.route_action import RouteScope, destination_cluster
from meshagent.xds.translate.telemetry import client_telemetry

# The ALPN values a mesh mTLS client may offer (Istio's allIstioMtlsALPNs): AUTO_PASSTHROUGH
# chains match only these, so plain TLS cannot reach a workload through the gateway.
ISTIO_MTLS_ALPNS = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")


def _tcp_filter(route: TcpRoute, scope: RouteScope, ctx: Context) -> lc.Filter:
    clusters = [(destination_cluster(w.destination, scope), w.weight) for w in route.route]
    proxy = tcp_proxy(names.tcp_stat_prefix(clusters[0][0]), clusters)
    client_telemetry(ctx.snapshot, ctx.proxy).apply_tcp(proxy)  # a router logs as CLIENT
    return lc.Filter(name=protos.TCP_PROXY, typed_config=protos.packed(proxy))


def _holds(matches: tuple[L4Match, ...], placed: PlacedServer, vs: VirtualService) -> list[L4Match]:
    """The matches that hold on placed's server: its port and its Gateway."""
    server, key = placed.server, placed.gateway.key
    return [
        m
        for m in matches
        if m.port in (None, server.port) and match_applies(m.gateways, vs.namespace, key)
    ]


def _bound_with_hosts(
    placed: PlacedServer, snapshot: MeshSnapshot, proxy: ProxySpec
) -> Iterator[VirtualService]:
    """Bound VirtualServices with a host in common with the server (Istio's
    pickMatchingGatewayHosts: for TCP and TLS any host in common will do)."""
    for vs in bound_virtual_services(snapshot, placed.gateway.key, proxy):
        for entry in placed.server.hosts:
            ns, host = split_server_host(entry)
            if ns not in ("*", vs.namespace):
                continue
            if any(host_subset(h, host) or host_subset(host, h) for h in vs.hosts):
                yield vs
                break


def tcp_chains(placed: PlacedServer, ctx: Context) -> list[lc.FilterChain]:
    """A TCP server, or a TLS server the gateway terminates: the first `tcp:` route that
    holds on it; no chain when none does."""
    scope = RouteScope(placed.server.port, ctx.snapshot.services, ctx.index.rules)
    for vs in _bound_with_hosts(placed, ctx.snapshot, ctx.proxy):
        for route in vs.tcp:
            if route.route and (not route.matches or _holds(route.matches, placed, vs)):
                chain = lc.FilterChain(filters=[_tcp_filter(route, scope, ctx)])
                tls = placed.server.tls
                if tls is not None and tls.terminates:
                    chain.filter_chain_match.server_names.extend(placed.sni_hosts)
                    chain.transport_socket.CopyFrom(downstream_tls(tls, alpn=()))
                return [chain]
    return []


def passthrough_chains(placed: PlacedServer, ctx: Context) -> list[lc.FilterChain]:
    """PASSTHROUGH: a chain per `tls:` match that holds on the server, by its sniHosts.
    AUTO_PASSTHROUGH: see auto_passthrough_chains."""
    tls = placed.server.tls
    if tls is not None and tls.mode == AUTO_PASSTHROUGH:
        return auto_passthrough_chains(placed, ctx)
    scope = RouteScope(placed.server.port, ctx.snapshot.services, ctx.index.rules)
    out: list[lc.FilterChain] = []
    for vs in _bound_with_hosts(placed, ctx.snapshot, ctx.proxy):
        for route in vs.tls:
            if not route.route:
                continue
            for match in _holds(route.matches, placed, vs):
                chain = lc.FilterChain(filters=[_tcp_filter(route, scope, ctx)])
                chain.filter_chain_match.server_names.extend(match.sni_hosts)
                out.append(chain)
    return out


def auto_passthrough_targets(
    placed: PlacedServer, snapshot: MeshSnapshot, proxy: ProxySpec, rules: RuleIndex
) -> Iterator[tuple[str, ClusterPlan]]:
    """(SNI-DNAT cluster name, the ordinary cluster's plan) for every port and subset of
    the mesh-internal services the server's hosts cover, by host."""
    hosts = [split_server_host(h)[1] for h in placed.server.hosts]
    for key in sorted(snapshot.services):
        service = snapshot.services[key]
        if service.mesh_external or not any(host_subset(service.host, h) for h in hosts):
            continue
        for plan in _plans(service, rules, proxy):
            # UDP is not proxied; an original-destination cluster would send the stream
            # back to the gateway itself (the address the client connected to).
            if plan.port.protocol.upper() == "UDP" or plan.discovery is Discovery.ORIGINAL_DST:
                continue
            yield names.outbound_sni(plan.port.number, plan.subset, service.host), plan


def _plans(service: Service, rules: RuleIndex, proxy: ProxySpec) -> tuple[ClusterPlan, ...]:
    return plan_clusters(service, rules.rule_for(service.host), proxy)


def auto_passthrough_chains(placed: PlacedServer, ctx: Context) -> list[lc.FilterChain]:
    """A chain per SNI-DNAT cluster (see module), matched on its name and the mTLS ALPNs."""
    out = []
    for sni, _ in auto_passthrough_targets(placed, ctx.snapshot, ctx.proxy, ctx.index.rules):
        proxy = tcp_proxy(names.tcp_stat_prefix(sni), [(sni, 100)])
        chain = lc.FilterChain(
            filters=[lc.Filter(name=protos.TCP_PROXY, typed_config=protos.packed(proxy))]
        )
        chain.filter_chain_match.server_names.append(sni)
        chain.filter_chain_match.application_protocols.extend(ISTIO_MTLS_ALPNS)
        out.append(chain)
    return out


def sni_dnat_cluster(name: str, plan: ClusterPlan, snapshot: MeshSnapshot) -> Cluster:
    """The plaintext cluster an AUTO_PASSTHROUGH chain forwards to: the ordinary cluster's
    settings without its TLS (the client's mTLS passes through), its endpoints by EDS
    from the ordinary cluster's assignment (or inline for DNS clusters)."""
    endpoints = snapshot.endpoints.get(plan.service.host, ())
    cluster = build_cluster(plan, ClusterInputs(endpoints=endpoints))
    cluster.name = name
    cluster.ClearField("transport_socket")
    if cluster.type == Cluster.EDS:
        cluster.eds_cluster_config.service_name = plan.name
    elif cluster.HasField("load_assignment"):
        cluster.load_assignment.cluster_name = name
    return cluster
