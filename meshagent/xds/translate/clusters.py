"""Outbound Cluster resources, built by small configurers, one aspect each.

`build_cluster(plan)` applies every configurer in CONFIGURERS order to a fresh Cluster: the
one definition of a cluster's shape (encode/cluster.py serializes most clusters from
templates cut out of its output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.cluster.v3 import outlier_detection_pb2
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from meshagent.model import ConnectionPool, Endpoint, OutlierDetection
from meshagent.xds.translate import protos
from meshagent.xds.translate.endpoints import endpoints_of_plan
from meshagent.xds.translate.policy import ClusterPlan, Discovery
from meshagent.xds.translate.tls import MeshTls, upstream_transport_socket

Configurer = Callable[[Cluster, ClusterPlan, "ClusterInputs"], None]

_SIMPLE_LB = {
    "ROUND_ROBIN": Cluster.ROUND_ROBIN,
    "LEAST_REQUEST": Cluster.LEAST_REQUEST,
    "LEAST_CONN": Cluster.LEAST_REQUEST,
    "RANDOM": Cluster.RANDOM,
}


@dataclass(frozen=True, slots=True)
class ClusterInputs:
    """What a cluster needs beyond its plan: the endpoints (read by DNS clusters only), and
    mesh mTLS when the proxy has certificates and the cluster uses it."""

    endpoints: tuple[Endpoint, ...] = ()
    mesh_tls: MeshTls | None = None


def configure_discovery(cluster: Cluster, plan: ClusterPlan, inputs: ClusterInputs) -> None:
    """Discovery type: EDS over ADS, DNS with inline hosts, or original destination."""
    if plan.discovery is Discovery.EDS:
        cluster.type = Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(protos.ADS_CONFIG_SOURCE)
    elif plan.discovery is Discovery.ORIGINAL_DST:
        cluster.type = Cluster.ORIGINAL_DST
        cluster.lb_policy = Cluster.CLUSTER_PROVIDED
    else:
        dns = plan.discovery is Discovery.STRICT_DNS
        cluster.type = Cluster.STRICT_DNS if dns else Cluster.LOGICAL_DNS
        # IPv4 first: many VM networks have no IPv6 route, yet names resolve to AAAA records.
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
        cluster.load_assignment.CopyFrom(_dns_assignment(plan, inputs))


def _dns_assignment(plan: ClusterPlan, inputs: ClusterInputs) -> endpoint_pb2.ClusterLoadAssignment:
    """Hosts for Envoy to resolve: the endpoints' addresses, else the service host itself."""
    pairs = endpoints_of_plan(plan, inputs.endpoints)
    if not inputs.endpoints:
        pairs = [(plan.service.host, plan.port.target_port or plan.port.number)]
    if plan.discovery is Discovery.LOGICAL_DNS:
        # Envoy accepts exactly one host for LOGICAL_DNS; Istio likewise uses the first.
        pairs = pairs[:1]
    group = endpoint_components_pb2.LocalityLbEndpoints()
    for address, port in pairs:
        group.lb_endpoints.add().endpoint.address.socket_address.CopyFrom(
            address_pb2.SocketAddress(address=address, port_value=port)
        )
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=plan.name, endpoints=[group])


def configure_connect_timeout(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """Connect timeout: the rule's, else Istio's 10s default."""
    pool = plan.policy.connection_pool
    timeout = pool.tcp_connect_timeout_ms if pool else None
    if timeout:
        cluster.connect_timeout.CopyFrom(protos.duration(timeout))
    else:
        cluster.connect_timeout.seconds = protos.DEFAULT_CONNECT_TIMEOUT_MS // 1000


def configure_load_balancer(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """lb_policy, and the ring/table size of consistent hashing."""
    lb = plan.policy.load_balancer
    if lb is None or plan.discovery is Discovery.ORIGINAL_DST:
        return
    hashing = lb.consistent_hash
    if hashing is None:
        cluster.lb_policy = _SIMPLE_LB.get(lb.simple.upper(), Cluster.ROUND_ROBIN)
    elif hashing.maglev:
        cluster.lb_policy = Cluster.MAGLEV
        if hashing.maglev_table_size:
            cluster.maglev_lb_config.table_size.value = hashing.maglev_table_size
    else:
        cluster.lb_policy = Cluster.RING_HASH
        if hashing.minimum_ring_size:
            cluster.ring_hash_lb_config.minimum_ring_size.value = hashing.minimum_ring_size


def configure_locality_weights(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """Locality-weighted balancing, when a distribute rule weighs the localities (locality.py).

    Envoy then sends nothing to a locality without a weight, as distribute asks.
    """
    if plan.locality is not None and plan.locality.weights:
        cluster.common_lb_config.locality_weighted_lb_config.SetInParent()


def configure_circuit_breakers(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """Thresholds: the rule's limits, else effectively unlimited as in Istio.

    Envoy's own defaults (1024 connections, 3 retries...) would silently cap a busy VM.
    """
    pool = plan.policy.connection_pool or ConnectionPool()
    limit = protos.MAX_UINT32
    thresholds = cluster.circuit_breakers.thresholds.add()
    thresholds.max_connections.value = pool.tcp_max_connections or limit
    thresholds.max_pending_requests.value = pool.http1_max_pending_requests or limit
    thresholds.max_requests.value = pool.http2_max_requests or limit
    thresholds.max_retries.value = pool.max_retries or limit
    thresholds.track_remaining = True


def configure_tcp_keepalive(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """TCP keepalive probes on upstream connections, when the rule asks for them."""
    pool = plan.policy.connection_pool
    if pool is None or not (
        pool.tcp_keepalive_time_ms or pool.tcp_keepalive_interval_ms or pool.tcp_keepalive_probes
    ):
        return
    keepalive = cluster.upstream_connection_options.tcp_keepalive
    if pool.tcp_keepalive_probes:
        keepalive.keepalive_probes.value = pool.tcp_keepalive_probes
    if pool.tcp_keepalive_time_ms:
        keepalive.keepalive_time.value = max(1, pool.tcp_keepalive_time_ms // 1000)
    if pool.tcp_keepalive_interval_ms:
        keepalive.keepalive_interval.value = max(1, pool.tcp_keepalive_interval_ms // 1000)


def configure_outlier_detection(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """Passive health checking, with Istio's enforcement choices."""
    outlier = plan.policy.outlier_detection
    if outlier is None:
        return
    cluster.outlier_detection.CopyFrom(_outlier(outlier))
    if outlier.min_health_percent is not None:
        cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
            percent_pb2.Percent(value=float(outlier.min_health_percent))
        )


def _enforcing(count: int) -> wrappers_pb2.UInt32Value:
    # A configured detector is enforced always; a zero count switches it off entirely.
    return protos.uint32(100 if count > 0 else 0)


def _outlier(outlier: OutlierDetection) -> outlier_detection_pb2.OutlierDetection:
    # Success-rate ejection is off: Istio exposes no knobs for it and neither do we.
    out = outlier_detection_pb2.OutlierDetection(enforcing_success_rate=protos.uint32(0))
    if outlier.consecutive_5xx_errors is not None:
        out.consecutive_5xx.value = outlier.consecutive_5xx_errors
        out.enforcing_consecutive_5xx.CopyFrom(_enforcing(outlier.consecutive_5xx_errors))
    if outlier.consecutive_gateway_errors is not None:
        out.consecutive_gateway_failure.value = outlier.consecutive_gateway_errors
        out.enforcing_consecutive_gateway_failure.CopyFrom(
            _enforcing(outlier.consecutive_gateway_errors)
        )
    if outlier.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        if outlier.consecutive_local_origin_failures:
            out.consecutive_local_origin_failure.value = outlier.consecutive_local_origin_failures
            out.enforcing_consecutive_local_origin_failure.value = 100
    if outlier.interval_ms is not None:
        out.interval.CopyFrom(protos.duration(outlier.interval_ms))
    if outlier.base_ejection_time_ms is not None:
        out.base_ejection_time.CopyFrom(protos.duration(outlier.base_ejection_time_ms))
    if outlier.max_ejection_percent:
        out.max_ejection_percent.value = outlier.max_ejection_percent
    return out


def configure_http_protocol(cluster: Cluster, plan: ClusterPlan, _: ClusterInputs) -> None:
    """HTTP upstream options: HTTP/2 where the port speaks it, per-connection limits."""
    if not plan.port.is_http:
        return
    options = _http_protocol_options(plan)
    if options is not None:
        cluster.typed_extension_protocol_options[protos.HTTP_PROTOCOL_OPTIONS].Pack(options)


def _common_http_options(pool: ConnectionPool | None) -> protocol_pb2.HttpProtocolOptions | None:
    if pool is None:
        return None
    common = protocol_pb2.HttpProtocolOptions()
    if pool.http_idle_timeout_ms is not None:
        common.idle_timeout.CopyFrom(protos.duration(pool.http_idle_timeout_ms))
    if pool.tcp_max_connection_duration_ms:
        common.max_connection_duration.CopyFrom(
            protos.duration(pool.tcp_max_connection_duration_ms)
        )
    if pool.max_requests_per_connection:
        common.max_requests_per_connection.value = pool.max_requests_per_connection
    return common if common.ByteSize() else None


def _http_protocol_options(plan: ClusterPlan) -> upstream_http.HttpProtocolOptions | None:
    pool = plan.policy.connection_pool
    common = _common_http_options(pool)
    http2 = plan.port.is_http2 or (pool is not None and pool.h2_upgrade_policy == "UPGRADE")
    downstream = pool is not None and pool.use_client_protocol
    if common is None and not http2 and not downstream:
        return None
    h2 = protocol_pb2.Http2ProtocolOptions()
    if pool is not None and pool.max_concurrent_streams:
        h2.max_concurrent_streams.value = pool.max_concurrent_streams
    options = upstream_http.HttpProtocolOptions()
    if common is not None:
        options.common_http_protocol_options.CopyFrom(common)
    if downstream:
        options.use_downstream_protocol_config.http2_protocol_options.CopyFrom(h2)
        options.use_downstream_protocol_config.http_protocol_options.SetInParent()
    elif http2:
        options.explicit_http_config.http2_protocol_options.CopyFrom(h2)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    return options


def configure_transport_socket(cluster: Cluster, plan: ClusterPlan, inputs: ClusterInputs) -> None:
    """Upstream TLS, when the rule originates it or mesh mTLS applies (see tls.py)."""
    socket = upstream_transport_socket(plan, inputs.mesh_tls)
    if socket is not None:
        cluster.transport_socket.CopyFrom(socket)


CONFIGURERS: tuple[Configurer, ...] = (
    configure_discovery,
    configure_connect_timeout,
    configure_load_balancer,
    configure_locality_weights,
    configure_circuit_breakers,
    configure_tcp_keepalive,
    configure_outlier_detection,
    configure_http_protocol,
    configure_transport_socket,
)


def build_cluster(plan: ClusterPlan, inputs: ClusterInputs) -> Cluster:
    """The Cluster for plan."""
    cluster = Cluster(name=plan.name)
    for configure in CONFIGURERS:
        configure(cluster, plan, inputs)
    return cluster
