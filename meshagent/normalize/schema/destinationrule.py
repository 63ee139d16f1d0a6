"""The DestinationRule schema (networking.istio.io v1, v1beta1, v1alpha3 share it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.normalize.schema.common import (
    LABELS,
    NON_NEG_INT32,
    PERCENT,
    PORT,
    PORT_SELECTOR,
    SUBSET_NAME,
    UINT32,
    ExportTo,
    HostName,
)
from meshagent.normalize.schema.core import (
    Bool,
    Duration,
    Enum,
    F,
    Float,
    Int,
    Issues,
    Lazy,
    ListOf,
    MapOf,
    Obj,
    Str,
    join,
)

UINT64 = Int(0, 2**64 - 1, allow_string=True)

HTTP_COOKIE = Obj(
    {
        "name": F(Str(non_empty=True), required=True),
        "path": F(Str()),
        "ttl": F(Duration()),
        "attributes": F(
            ListOf(Obj({"name": F(Str(non_empty=True), required=True), "value": F(Str())})),
            todo="cookie attributes",
        ),
    }
)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, int(n**0.5) + 1, 2))


def _prime_table_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    # Envoy rejects a cluster whose Maglev table size is not prime; catch it here instead.
    size = value.get("tableSize")
    if size is not None and not _is_prime(int(size)):
        issues.error(join(path, "tableSize"), f"{size} is not a prime number")


CONSISTENT_HASH = Obj(
    {
        "httpHeaderName": F(Str(non_empty=True)),
        "httpCookie": F(HTTP_COOKIE),
        "useSourceIp": F(Bool()),
        "httpQueryParameterName": F(Str(non_empty=True)),
        "ringHash": F(Obj({"minimumRingSize": F(UINT64)})),
        "maglev": F(Obj({"tableSize": F(UINT64)}, rules=[_prime_table_rule])),
        "minimumRingSize": F(UINT64, deprecated="use ringHash.minimumRingSize"),
    },
    oneof=[
        ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"),
        ("ringHash", "maglev", "minimumRingSize"),
    ],
)


def _distribute_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    total = sum((value.get("to") or {}).values())
    if total != 100:
        issues.error(join(path, "to"), f"weights across localities must sum to 100, not {total}")


def _failover_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("from") and value.get("from") == value.get("to"):
        issues.error(join(path, "to"), "failover 'from' and 'to' must differ")


def _locality_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("distribute") and value.get("failover"):
        issues.error(join(path, "failover"), "distribute and failover cannot be set together")


LOCALITY_LB = Obj(
    {
        "distribute": F(
            ListOf(Obj({"from": F(Str()), "to": F(MapOf(UINT32))}, rules=[_distribute_rule]))
        ),
        "failover": F(ListOf(Obj({"from": F(Str()), "to": F(Str())}, rules=[_failover_rule]))),
        "failoverPriority": F(ListOf(Str(non_empty=True))),
        "enabled": F(Bool()),
    },
    rules=[_locality_rule],
)


def _warmup_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("duration") is None:
        issues.error(join(path, "duration"), "Required value: warmup needs a duration")


WARMUP = Obj(
    {
        "duration": F(Duration(min_ms=1)),
        "minimumPercent": F(Float(0.0, 100.0)),
        "aggression": F(Float(1.0, None)),
    },
    rules=[_warmup_rule],
)

LOAD_BALANCER = Obj(
    {
        "simple": F(
            Enum(
                (
                    "UNSPECIFIED",
                    "LEAST_CONN",
                    "RANDOM",
                    "PASSTHROUGH",
                    "ROUND_ROBIN",
                    "LEAST_REQUEST",
                )
            )
        ),
        "consistentHash": F(CONSISTENT_HASH),
        "localityLbSetting": F(LOCALITY_LB),
        "warmupDurationSecs": F(Duration(min_ms=1), todo="slow-start warmup"),
        "warmup": F(WARMUP, todo="slow-start warmup"),
    },
    oneof=[("simple", "consistentHash"), ("warmupDurationSecs", "warmup")],
)

TCP_SETTINGS = Obj(
    {
        "maxConnections": F(NON_NEG_INT32),
        "connectTimeout": F(Duration(min_ms=1)),
        "tcpKeepalive": F(
            Obj(
                {
                    "probes": F(UINT32),
                    "time": F(Duration(min_ms=1)),
                    "interval": F(Duration(min_ms=1)),
                }
            )
        ),
        "maxConnectionDuration": F(Duration(min_ms=1)),
        "idleTimeout": F(Duration()),
    }
)

HTTP_SETTINGS = Obj(
    {
        "http1MaxPendingRequests": F(NON_NEG_INT32),
        "http2MaxRequests": F(NON_NEG_INT32),
        "maxRequestsPerConnection": F(NON_NEG_INT32),
        "maxRetries": F(NON_NEG_INT32),
        "idleTimeout": F(Duration()),
        "h2UpgradePolicy": F(Enum(("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"))),
        "useClientProtocol": F(Bool()),
        "maxConcurrentStreams": F(NON_NEG_INT32),
        "http2KeepAlive": F(
            Obj({"interval": F(Duration(min_ms=1)), "timeout": F(Duration(min_ms=1))}),
            todo="HTTP/2 keepalive",
        ),
    }
)


def _pool_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("tcp") is None and value.get("http") is None:
        issues.error(path, "connectionPool must set tcp and/or http")


CONNECTION_POOL = Obj({"tcp": F(TCP_SETTINGS), "http": F(HTTP_SETTINGS)}, rules=[_pool_rule])

OUTLIER_DETECTION = Obj(
    {
        "consecutiveErrors": F(NON_NEG_INT32, deprecated="use consecutive5xxErrors"),
        "splitExternalLocalOriginErrors": F(Bool()),
        "consecutiveLocalOriginFailures": F(UINT32),
        "consecutiveGatewayErrors": F(UINT32),
        "consecutive5xxErrors": F(UINT32),
        "interval": F(Duration(min_ms=1)),
        "baseEjectionTime": F(Duration(min_ms=1)),
        "maxEjectionPercent": F(Int(0, 100)),
        "minHealthPercent": F(Int(0, 100)),
    }
)

TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


def _tls_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    mode = value.get("mode") or "DISABLE"
    files = ("clientCertificate", "privateKey", "caCertificates", "credentialName")
    if mode == "ISTIO_MUTUAL":
        for key in files:
            if value.get(key):
                issues.error(join(path, key), "must not be set with mode ISTIO_MUTUAL")
    if mode == "MUTUAL" and not value.get("credentialName"):
        for key in ("clientCertificate", "privateKey"):
            if not value.get(key):
                issues.error(join(path, key), "required for mode MUTUAL without credentialName")


CLIENT_TLS = Obj(
    {
        "mode": F(Enum(TLS_MODES)),
        "clientCertificate": F(Str()),
        "privateKey": F(Str()),
        "caCertificates": F(Str()),
        "credentialName": F(Str()),
        "subjectAltNames": F(ListOf(Str())),
        "sni": F(Str()),
        "insecureSkipVerify": F(Bool()),
        "caCrl": F(Str(), todo="certificate revocation lists"),
    },
    rules=[_tls_rule],
)

TUNNEL = Obj(
    {
        "protocol": F(Enum(("CONNECT", "POST"))),
        "targetHost": F(Str(non_empty=True), required=True),
        "targetPort": F(PORT, required=True),
    }
)


def _port_policy_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if not (value.get("port") or {}).get("number"):
        issues.error(join(path, "port.number"), "required field is missing")
    if not any(value.get(k) is not None for k in _PORT_POLICY_FIELDS if k != "port"):
        issues.error(path, "port traffic policy must set at least one policy")


_PORT_POLICY_FIELDS = {
    "port": F(PORT_SELECTOR),
    "loadBalancer": F(LOAD_BALANCER),
    "connectionPool": F(CONNECTION_POOL),
    "outlierDetection": F(OUTLIER_DETECTION),
    "tls": F(CLIENT_TLS),
}
PORT_TRAFFIC_POLICY = Obj(_PORT_POLICY_FIELDS, rules=[_port_policy_rule])


def _policy_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    seen: set[Any] = set()
    for i, setting in enumerate(value.get("portLevelSettings") or []):
        number = (setting.get("port") or {}).get("number")
        if number in seen:
            issues.error(
                f"{path}.portLevelSettings[{i}].port.number",
                f"port {number} has more than one port-level policy",
            )
        seen.add(number)


TRAFFIC_POLICY = Obj(
    {
        "loadBalancer": F(LOAD_BALANCER),
        "connectionPool": F(CONNECTION_POOL),
        "outlierDetection": F(OUTLIER_DETECTION),
        "tls": F(CLIENT_TLS),
        "portLevelSettings": F(ListOf(PORT_TRAFFIC_POLICY)),
        "tunnel": F(TUNNEL, todo="upstream tunneling"),
        "proxyProtocol": F(Obj({"version": F(Enum(("V1", "V2")))}), todo="PROXY protocol"),
        "retryBudget": F(
            Obj({"percent": F(PERCENT), "minRetryConcurrency": F(UINT32)}), todo="retry budgets"
        ),
    },
    rules=[_policy_rule],
)

SUBSET = Obj(
    {
        "name": F(SUBSET_NAME, required=True),
        "labels": F(LABELS),
        "trafficPolicy": F(Lazy(lambda: TRAFFIC_POLICY)),
    }
)


def _selector_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """A rule with a workloadSelector stays in its namespace (Istio's validateExportTo)."""
    selector = value.get("workloadSelector")
    if selector is None:
        return
    if not selector.get("matchLabels"):
        issues.warn(
            join(path, "workloadSelector"),
            "workload selector specified without labels: applies to the whole namespace",
        )
    export = set(value.get("exportTo") or ())
    if export and (export & {"*", "~"} or len(export) > 1):
        issues.error(
            join(path, "exportTo"),
            "destination rule with workload selector cannot have exportTo beyond current namespace",
        )


def _spec_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    names: set[Any] = set()
    for i, subset in enumerate(value.get("subsets") or []):
        name = subset.get("name")
        if name in names:
            issues.error(f"{path}.subsets[{i}].name", f"duplicate subset name {name!r}")
        names.add(name)


SPEC = Obj(
    {
        "host": F(HostName(), required=True),
        "trafficPolicy": F(TRAFFIC_POLICY),
        "subsets": F(ListOf(SUBSET)),
        "exportTo": F(ExportTo()),
        # istio.type.v1beta1.WorkloadSelector (matchLabels), unlike ServiceEntry's selector.
        "workloadSelector": F(Obj({"matchLabels": F(LABELS)})),
    },
    rules=[_spec_rule, _selector_rule],
)

__all__ = ["SPEC"]
