"""Traffic policy toward a host, as DestinationRule declares it.

Durations are whole milliseconds. None means "not set": Envoy's default applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.labels import Labels
from meshagent.model.source import Provenance


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    http_header_name: str = ""
    http_cookie_name: str = ""
    http_cookie_path: str = ""
    http_cookie_ttl_ms: int | None = None
    use_source_ip: bool = False
    http_query_parameter_name: str = ""
    maglev: bool = False  # False: ring hash
    minimum_ring_size: int | None = None
    maglev_table_size: int | None = None


@dataclass(frozen=True, slots=True)
class LocalityDistribute:
    source: str
    to: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class LocalityLb:
    enabled: bool | None = None
    distribute: tuple[LocalityDistribute, ...] = ()
    failover: tuple[tuple[str, str], ...] = ()  # (from, to)
    failover_priority: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    simple: str = ""  # ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH, UNSPECIFIED
    consistent_hash: ConsistentHash | None = None
    locality: LocalityLb | None = None
    warmup_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    tcp_max_connections: int | None = None
    tcp_connect_timeout_ms: int | None = None
    tcp_keepalive_time_ms: int | None = None
    tcp_keepalive_interval_ms: int | None = None
    tcp_keepalive_probes: int | None = None
    tcp_max_connection_duration_ms: int | None = None
    tcp_idle_timeout_ms: int | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None
    http_idle_timeout_ms: int | None = None
    h2_upgrade_policy: str = ""  # DEFAULT, DO_NOT_UPGRADE, UPGRADE
    use_client_protocol: bool = False
    max_concurrent_streams: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    consecutive_local_origin_failures: int | None = None
    split_external_local_origin_errors: bool = False
    interval_ms: int | None = None
    base_ejection_time_ms: int | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True, slots=True)
class ClientTls:
    mode: str  # DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class PortTrafficPolicy:
    port: int
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None
    port_level: tuple[PortTrafficPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Labels
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class ResolverTarget:
    """Where a host's traffic resolves instead of (or after) its own endpoints: another host,
    maybe narrowed to one of its subsets ("" = that host's default subset, else all)."""

    host: str
    subset: str = ""


@dataclass(frozen=True, slots=True)
class Failover:
    """Targets tried in order once the endpoints of `subset` ("*": any subset without an
    entry of its own, and the whole host) have none left to serve."""

    subset: str
    targets: tuple[ResolverTarget, ...]


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """Policy for one host (FQDN or wildcard like *.example.com)."""

    name: str
    namespace: str
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: Labels | None = None
    provenance: Provenance | None = None
    # Not in Istio: the subset that requests naming no subset go to (Consul's resolver
    # DefaultSubset); "" means all of the host's endpoints.
    default_subset: str = ""
    # Not in Istio either (Consul's resolver Redirect and Failover): every request for the host
    # resolves to redirect's endpoints; failover lists fallback targets per subset.
    redirect: ResolverTarget | None = None
    failover: tuple[Failover, ...] = ()

    def failover_for(self, subset: str) -> Failover | None:
        """The failover entry of subset ("" = the whole host), else the "*" entry."""
        wildcard = None
        for f in self.failover:
            if f.subset == subset and subset:
                return f
            if f.subset == "*":
                wildcard = f
        return wildcard

    def subset(self, name: str) -> Subset | None:
        for s in self.subsets:
            if s.name == name:
                return s
        return None
