"""Transparent mode (capture): the listeners and clusters that netfilter-redirected traffic
reaches, as Istio's sidecar has them.

virtualOutbound (15001) takes every outbound connection the capture rules redirect. The
original_dst listener filter restores where the application meant to go, and the filter
chains match on it: a chain per HTTP port (`0.0.0.0_<port>`, routing by Host through that
port's route configuration, which gains a catch-all virtual host), a chain per address and
port of every non-HTTP service that has addresses (ServiceEntry `addresses`, Kubernetes
ClusterIPs, allocated VIPs), and the default chain for everything else: PassthroughCluster
(ORIGINAL_DST) under ALLOW_ANY (the cluster of a Sidecar's egressProxy when it names one),
BlackHoleCluster under REGISTRY_ONLY.

virtualInbound (15006) takes inbound connections: each local workload port's chains (the
same mTLS, PeerAuthentication, JWT and RBAC as the per-port inbound listeners of loopback
mode) matched by destination port, and for ports no workload declares, chains to
InboundPassthroughCluster (the original destination, from 127.0.0.6) that sniff HTTP.
"""

from __future__ import annotations

import ipaddress

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.proxy import REGISTRY_ONLY, InboundPort
from meshagent.model.security import MtlsMode
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate import protos
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.generators import identical, keep_unchanged
from meshagent.xds.translate.inbound import (
    INBOUND_SOURCE_ADDRESS,
    INBOUND_SOURCE_ADDRESS_V6,
    SNIFFED_HTTP,
    inbound_chains,
    listener_filter,
    listener_filters_for,
    mode_chains,
    mtls_mode,
    workload_ports,
)
from meshagent.xds.translate.listeners import http_connection_manager, tcp_proxy
from meshagent.xds.translate.outbound_generators import tcp_clusters
from meshagent.xds.translate.secrets import certificate_secret_name
from meshagent.xds.translate.telemetry import (
    NO_TELEMETRY,
    ListenerTelemetry,
    client_telemetry,
    server_telemetry,
    telemetry_inputs,
)

ORIGINAL_DST = "envoy.filters.listener.original_dst"
PASSTHROUGH_TIMEOUT_MS = 10_000  # Istio's connect timeout of its passthrough clusters


def _original_dst() -> lc.ListenerFilter:
    return listener_filter(ORIGINAL_DST, original_dst_pb2.OriginalDst())


def _tcp_chain(
    name: str,
    cluster: str | list[tuple[str, int]],
    telemetry: ListenerTelemetry = NO_TELEMETRY,
) -> lc.FilterChain:
    clusters = [(cluster, 100)] if isinstance(cluster, str) else cluster
    proxy = tcp_proxy(names.tcp_stat_prefix(clusters[0][0]), clusters, telemetry)
    return lc.FilterChain(
        name=name,
        filters=[lc.Filter(name=protos.TCP_PROXY, typed_config=protos.packed(proxy))],
    )


def fallback_cluster(proxy: ProxySpec) -> str:
    """Where destinations outside the registry go: through (or to the Sidecar's egressProxy),
    or nowhere."""
    if proxy.outbound_traffic_policy == REGISTRY_ONLY:
        return names.BLACKHOLE_CLUSTER
    egress = proxy.egress_proxy
    if egress is not None:
        return names.cluster_name(egress.port, egress.host, egress.subset)
    return names.PASSTHROUGH_CLUSTER


def _prefix_range(address: str) -> address_pb2.CidrRange | None:
    try:
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address),
        prefix_len=protos.uint32(network.prefixlen),
    )


def _tcp_service_chains(ctx: Context, telemetry: ListenerTelemetry) -> list[lc.FilterChain]:
    """A chain per address and non-HTTP port of every service with addresses; the first
    service (by host) keeps an address and port that several claim."""
    snapshot = ctx.snapshot
    claimed: set[tuple[str, int, int]] = set()  # (prefix, length, port)
    out: list[lc.FilterChain] = []
    for host in ctx.index.routing.sorted_hosts:
        service = snapshot.services[host]
        addresses = service.client_addresses()
        if not addresses or host.startswith("*"):
            continue
        for port in service.ports:
            if port.is_http:
                continue
            ranges = [r for r in map(_prefix_range, addresses) if r is not None]
            ranges = [r for r in ranges if _claim(r, port.number) not in claimed]
            if not ranges:
                continue
            claimed.update(_claim(r, port.number) for r in ranges)
            chain = _tcp_chain(
                names.cluster_name(port.number, host),
                tcp_clusters(ctx, host, port.number),
                telemetry,
            )
            chain.filter_chain_match.destination_port.value = port.number
            chain.filter_chain_match.prefix_ranges.extend(ranges)
            out.append(chain)
    return out


def _claim(cidr: address_pb2.CidrRange, port: int) -> tuple[str, int, int]:
    return (cidr.address_prefix, cidr.prefix_len.value, port)


def _http_chain(port: int, telemetry: ListenerTelemetry) -> lc.FilterChain:
    name = names.outbound_chain_name(port)
    manager = http_connection_manager("0.0.0.0", port, port, telemetry)
    chain = lc.FilterChain(
        name=name,
        filters=[
            lc.Filter(name=protos.HTTP_CONNECTION_MANAGER, typed_config=protos.packed(manager))
        ],
    )
    chain.filter_chain_match.destination_port.value = port
    return chain


def build_virtual_outbound(ctx: Context) -> Listener:
    """virtualOutbound: see the module docstring."""
    proxy = ctx.proxy
    out = Listener(name=names.VIRTUAL_OUTBOUND, traffic_direction=base_pb2.OUTBOUND)
    out.address.socket_address.address = "0.0.0.0"
    out.address.socket_address.port_value = proxy.virtual_outbound_port
    out.listener_filters.append(_original_dst())
    telemetry = client_telemetry(ctx.snapshot, proxy)
    out.filter_chains.extend(_http_chain(port, telemetry) for port in ctx.index.http_ports)
    out.filter_chains.extend(_tcp_service_chains(ctx, telemetry))
    out.default_filter_chain.CopyFrom(
        _tcp_chain(names.PASSTHROUGH_FILTER_CHAIN, fallback_cluster(proxy), telemetry)
    )
    return out


def _passthrough_chains(ctx: Context) -> list[lc.FilterChain]:
    """Chains for inbound ports no workload declares: to the original destination, HTTP
    (sniffed) through a connection manager, the rest as TCP; behind the mTLS mode of the
    first workload's namespace (or the mesh's)."""
    proxy = ctx.proxy
    mode, secret = MtlsMode.DISABLE, ""
    if proxy.workloads:
        workload = proxy.workloads[0]
        mode = mtls_mode(ctx.snapshot, proxy, workload, InboundPort(port=0, target_port=0))
        secret = certificate_secret_name(proxy, workload)
    if mode is MtlsMode.PERMISSIVE and not proxy.certificates:
        mode = MtlsMode.DISABLE
    cluster = names.INBOUND_PASSTHROUGH_CLUSTER
    telemetry = server_telemetry(ctx.snapshot, proxy, None)
    tcp = _tcp_chain(names.PASSTHROUGH_FILTER_CHAIN, cluster, telemetry).filters
    http = [_passthrough_http(cluster, telemetry)]
    out = []
    for filters, sniffed in ((http, True), (list(tcp), False)):
        for chain in mode_chains(mode, list(filters), secret):
            chain.name = names.PASSTHROUGH_FILTER_CHAIN
            if sniffed:  # only plaintext HTTP can be sniffed; TLS is proxied as it is
                if chain.HasField("transport_socket"):
                    continue
                chain.filter_chain_match.application_protocols.extend(SNIFFED_HTTP)
            out.append(chain)
    return out


def _passthrough_http(cluster: str, telemetry: ListenerTelemetry) -> lc.Filter:
    route = rc.Route(match=rc.RouteMatch(prefix="/"), name="default")
    route.route.cluster = cluster
    route.route.timeout.CopyFrom(protos.duration(0))
    vhost = rc.VirtualHost(name="inbound|http|0", domains=["*"], routes=[route])
    manager = hcm.HttpConnectionManager(
        stat_prefix=cluster,
        http_filters=[
            hcm.HttpFilter(
                name=protos.ROUTER_FILTER, typed_config=protos.packed(router_pb2.Router())
            )
        ],
    )
    manager.route_config.name = "InboundPassthroughCluster"
    manager.route_config.virtual_hosts.append(vhost)
    telemetry.apply_http(manager)
    return lc.Filter(name=protos.HTTP_CONNECTION_MANAGER, typed_config=protos.packed(manager))


def build_virtual_inbound(ctx: Context) -> Listener:
    """virtualInbound: see the module docstring."""
    proxy = ctx.proxy
    out = Listener(name=names.VIRTUAL_INBOUND, traffic_direction=base_pb2.INBOUND)
    out.address.socket_address.address = "0.0.0.0"
    out.address.socket_address.port_value = proxy.virtual_inbound_port
    chains: list[lc.FilterChain] = []
    for workload, port in workload_ports(proxy):
        for chain in inbound_chains(ctx, workload, port):
            chain.name = names.inbound_cluster_name(port.port)
            chain.filter_chain_match.destination_port.value = port.port
            chains.append(chain)
    chains += _passthrough_chains(ctx)
    out.listener_filters.append(_original_dst())
    out.listener_filters.extend(listener_filters_for(chains))
    out.filter_chains.extend(chains)
    return out


class VirtualListenersGenerator:
    """virtualOutbound and virtualInbound, when the proxy runs under capture."""

    name = "virtual-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        if not ctx.proxy.capture:
            return self._last  # the same (empty) list: consumers compare lists by identity
        key = _inputs(ctx.snapshot, ctx.proxy)
        if identical(key, self._key):
            return self._last
        listeners = (build_virtual_outbound(ctx), build_virtual_inbound(ctx))
        out = [Resource.pack(listener.name, listener) for listener in listeners]
        self._key, self._last = key, keep_unchanged(self._last, out)
        return self._last


def _inputs(snapshot: MeshSnapshot, proxy: ProxySpec) -> tuple[object, ...]:
    """What the virtual listeners are built from (endpoints are not among it)."""
    return (
        proxy,
        snapshot.services,
        snapshot.virtual_services,
        snapshot.destination_rules,
        snapshot.peer_authentications,
        snapshot.authorization_policies,
        snapshot.request_authentications,
        *telemetry_inputs(snapshot, proxy),
    )


def _passthrough_cluster(name: str, sources: tuple[str, ...] = ()) -> Cluster:
    """An ORIGINAL_DST cluster; sources: where its connections come from, one address per IP
    family (Envoy picks the one of the destination's family)."""
    cluster = Cluster(name=name, type=Cluster.ORIGINAL_DST, lb_policy=Cluster.CLUSTER_PROVIDED)
    cluster.connect_timeout.CopyFrom(protos.duration(PASSTHROUGH_TIMEOUT_MS))
    if sources:
        bind = cluster.upstream_bind_config
        bind.source_address.address, bind.source_address.port_value = sources[0], 0
        for other in sources[1:]:
            extra = bind.extra_source_addresses.add().address
            extra.address, extra.port_value = other, 0
    return cluster


def build_passthrough_clusters() -> list[Cluster]:
    """PassthroughCluster, BlackHoleCluster and InboundPassthroughCluster."""
    blackhole = Cluster(name=names.BLACKHOLE_CLUSTER, type=Cluster.STATIC)
    blackhole.connect_timeout.CopyFrom(protos.duration(PASSTHROUGH_TIMEOUT_MS))
    blackhole.load_assignment.cluster_name = names.BLACKHOLE_CLUSTER
    return [
        _passthrough_cluster(names.PASSTHROUGH_CLUSTER),
        blackhole,
        _passthrough_cluster(
            names.INBOUND_PASSTHROUGH_CLUSTER, (INBOUND_SOURCE_ADDRESS, INBOUND_SOURCE_ADDRESS_V6)
        ),
    ]


class PassthroughClustersGenerator:
    """The passthrough and blackhole clusters of capture mode (the same for every proxy)."""

    name = "passthrough-clusters"
    type_url = typeurls.CLUSTER

    def __init__(self) -> None:
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        if not ctx.proxy.capture:
            return self._last  # the same (empty) list: consumers compare lists by identity
        if not self._last:
            self._last = [Resource.pack(c.name, c) for c in build_passthrough_clusters()]
        return self._last
