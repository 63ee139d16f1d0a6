"""DestinationRule to the traffic model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.traffic import (
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    LoadBalancer,
    LocalityDistribute,
    LocalityLb,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TrafficPolicy,
)
from meshagent.normalize.convert.context import Context, items, ms, sub


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _consistent_hash(spec: Mapping[str, Any]) -> ConsistentHash:
    cookie = sub(spec, "httpCookie")
    ring = sub(spec, "ringHash")
    return ConsistentHash(
        http_header_name=str(spec.get("httpHeaderName") or ""),
        http_cookie_name=str(cookie.get("name") or ""),
        http_cookie_path=str(cookie.get("path") or ""),
        http_cookie_ttl_ms=ms(cookie.get("ttl")),
        use_source_ip=bool(spec.get("useSourceIp")),
        http_query_parameter_name=str(spec.get("httpQueryParameterName") or ""),
        maglev=spec.get("maglev") is not None,
        minimum_ring_size=_int(ring.get("minimumRingSize", spec.get("minimumRingSize"))),
        maglev_table_size=_int(sub(spec, "maglev").get("tableSize")),
    )


def _locality(spec: Mapping[str, Any]) -> LocalityLb:
    return LocalityLb(
        enabled=spec.get("enabled"),
        distribute=tuple(
            LocalityDistribute(
                str(d.get("from") or ""), tuple((str(k), int(v)) for k, v in sub(d, "to").items())
            )
            for d in items(spec, "distribute")
        ),
        failover=tuple(
            (str(f.get("from") or ""), str(f.get("to") or "")) for f in items(spec, "failover")
        ),
        failover_priority=tuple(str(p) for p in items(spec, "failoverPriority")),
    )


def _load_balancer(spec: Mapping[str, Any]) -> LoadBalancer:
    hashing = spec.get("consistentHash")
    locality = spec.get("localityLbSetting")
    warmup = sub(spec, "warmup").get("duration", spec.get("warmupDurationSecs"))
    return LoadBalancer(
        simple=str(spec.get("simple") or ""),
        consistent_hash=_consistent_hash(hashing) if hashing is not None else None,
        locality=_locality(locality) if locality is not None else None,
        warmup_ms=ms(warmup),
    )


def _connection_pool(spec: Mapping[str, Any]) -> ConnectionPool:
    tcp, http = sub(spec, "tcp"), sub(spec, "http")
    keepalive = sub(tcp, "tcpKeepalive")
    return ConnectionPool(
        tcp_max_connections=_int(tcp.get("maxConnections")),
        tcp_connect_timeout_ms=ms(tcp.get("connectTimeout")),
        tcp_keepalive_time_ms=ms(keepalive.get("time")),
        tcp_keepalive_interval_ms=ms(keepalive.get("interval")),
        tcp_keepalive_probes=_int(keepalive.get("probes")),
        tcp_max_connection_duration_ms=ms(tcp.get("maxConnectionDuration")),
        tcp_idle_timeout_ms=ms(tcp.get("idleTimeout")),
        http1_max_pending_requests=_int(http.get("http1MaxPendingRequests")),
        http2_max_requests=_int(http.get("http2MaxRequests")),
        max_requests_per_connection=_int(http.get("maxRequestsPerConnection")),
        max_retries=_int(http.get("maxRetries")),
        http_idle_timeout_ms=ms(http.get("idleTimeout")),
        h2_upgrade_policy=str(http.get("h2UpgradePolicy") or ""),
        use_client_protocol=bool(http.get("useClientProtocol")),
        max_concurrent_streams=_int(http.get("maxConcurrentStreams")),
    )


def _outlier(spec: Mapping[str, Any]) -> OutlierDetection:
    # The deprecated consecutiveErrors counts gateway errors only (502/503/504), and then
    # plain 5xx ejection is off unless consecutive5xxErrors says otherwise: Istio's reading.
    legacy = spec.get("consecutiveErrors")
    five_xx = spec.get("consecutive5xxErrors", 0 if legacy else None)
    return OutlierDetection(
        consecutive_5xx_errors=_int(five_xx),
        consecutive_gateway_errors=_int(spec.get("consecutiveGatewayErrors", legacy or None)),
        consecutive_local_origin_failures=_int(spec.get("consecutiveLocalOriginFailures")),
        split_external_local_origin_errors=bool(spec.get("splitExternalLocalOriginErrors")),
        interval_ms=ms(spec.get("interval")),
        base_ejection_time_ms=ms(spec.get("baseEjectionTime")),
        max_ejection_percent=_int(spec.get("maxEjectionPercent")),
        min_health_percent=_int(spec.get("minHealthPercent")),
    )


def _tls(spec: Mapping[str, Any]) -> ClientTls:
    return ClientTls(
        mode=str(spec.get("mode") or "DISABLE"),
        client_certificate=str(spec.get("clientCertificate") or ""),
        private_key=str(spec.get("privateKey") or ""),
        ca_certificates=str(spec.get("caCertificates") or ""),
        credential_name=str(spec.get("credentialName") or ""),
        subject_alt_names=tuple(str(s) for s in items(spec, "subjectAltNames")),
        sni=str(spec.get("sni") or ""),
        insecure_skip_verify=bool(spec.get("insecureSkipVerify")),
    )


def _opt(spec: Mapping[str, Any], key: str, build: Any) -> Any:
    value = spec.get(key)
    return build(value) if value is not None else None


def _port_policy(spec: Mapping[str, Any]) -> PortTrafficPolicy:
    return PortTrafficPolicy(
        port=int(sub(spec, "port")["number"]),
        load_balancer=_opt(spec, "loadBalancer", _load_balancer),
        connection_pool=_opt(spec, "connectionPool", _connection_pool),
        outlier_detection=_opt(spec, "outlierDetection", _outlier),
        tls=_opt(spec, "tls", _tls),
    )


def traffic_policy(spec: Mapping[str, Any]) -> TrafficPolicy:
    """A validated TrafficPolicy mapping as the model's TrafficPolicy."""
    return TrafficPolicy(
        load_balancer=_opt(spec, "loadBalancer", _load_balancer),
        connection_pool=_opt(spec, "connectionPool", _connection_pool),
        outlier_detection=_opt(spec, "outlierDetection", _outlier),
        tls=_opt(spec, "tls", _tls),
        port_level=tuple(_port_policy(p) for p in items(spec, "portLevelSettings")),
    )


def convert_destination_rule(name: str, spec: Mapping[str, Any], ctx: Context) -> DestinationRule:
    """A DestinationRule spec (validated) as the model's DestinationRule."""
    selector = spec.get("workloadSelector")
    return DestinationRule(
        name=name,
        namespace=ctx.namespace,
        host=ctx.host(str(spec["host"])),
        traffic_policy=_opt(spec, "trafficPolicy", traffic_policy),
        subsets=tuple(
            Subset(
                str(s["name"]),
                labels_of(sub(s, "labels")),
                _opt(s, "trafficPolicy", traffic_policy),
            )
            for s in items(spec, "subsets")
        ),
        export_to=tuple(str(e) for e in items(spec, "exportTo")),
        workload_selector=labels_of(sub(selector, "matchLabels")) if selector is not None else None,
        provenance=ctx.provenance,
    )
