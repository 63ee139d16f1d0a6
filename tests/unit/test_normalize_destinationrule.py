"""DestinationRule validation (located diagnostics) and conversion to the traffic model."""

from __future__ import annotations

from meshagent.model.traffic import DestinationRule
from meshagent.normalize.convert import convert
from tests.unit.normalize_helpers import diagnostics, errors, raw, warnings

HEAD = """\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
"""

GOOD = (
    HEAD
    + """\
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie:
          name: user
          ttl: 0s
        ringHash:
          minimumRingSize: "1024"
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive:
          time: 7200s
          interval: 75s
      http:
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        h2UpgradePolicy: UPGRADE
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
    tls:
      mode: ISTIO_MUTUAL
    portLevelSettings:
    - port:
        number: 9080
      loadBalancer:
        simple: LEAST_REQUEST
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
"""
)


def _convert(text: str) -> DestinationRule:
    rule, problems = convert(raw(text), domain_suffix="cluster.local", default_namespace="ns1")
    assert not problems and isinstance(rule, DestinationRule)
    return rule


def test_valid_rule_has_no_diagnostics_and_converts() -> None:
    # given a rule without namespace; when converting with default namespace ns1
    assert diagnostics(GOOD) == []
    rule = _convert(GOOD)
    # then the host resolves in the default namespace and durations are ms
    assert rule.host == "reviews.ns1.svc.cluster.local" and rule.namespace == "ns1"
    policy = rule.traffic_policy
    assert policy is not None and policy.load_balancer is not None
    hashing = policy.load_balancer.consistent_hash
    assert hashing is not None
    assert (hashing.http_cookie_name, hashing.http_cookie_ttl_ms) == ("user", 0)
    assert hashing.minimum_ring_size == 1024 and not hashing.maglev
    pool = policy.connection_pool
    assert pool is not None
    assert (pool.tcp_max_connections, pool.tcp_connect_timeout_ms) == (100, 30)
    assert pool.tcp_keepalive_time_ms == 7_200_000 and pool.h2_upgrade_policy == "UPGRADE"
    od = policy.outlier_detection
    assert od is not None and (od.interval_ms, od.base_ejection_time_ms) == (300_000, 900_000)
    assert policy.tls is not None and policy.tls.mode == "ISTIO_MUTUAL"
    assert policy.port_level[0].port == 9080
    assert [s.name for s in rule.subsets] == ["v1", "v2"]
    assert rule.subsets[0].labels == (("version", "v1"),)
    assert rule.subset("v2") is not None


def test_host_is_required() -> None:
    text = HEAD.replace("  host: reviews\n", "  subsets: []\n")
    assert errors(text) == [("mesh.yaml:5", "spec.host")]


def test_duplicate_subset_names() -> None:
    text = HEAD + "  subsets:\n  - name: v1\n  - name: v1\n"
    assert errors(text) == [("mesh.yaml:9", "spec.subsets[1].name")]


def test_bad_enum() -> None:
    text = HEAD + "  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n"
    assert errors(text) == [("mesh.yaml:9", "spec.trafficPolicy.loadBalancer.simple")]


def test_simple_and_consistent_hash_are_mutually_exclusive() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
      consistentHash:
        useSourceIp: true
"""
    )
    assert errors(text) == [("mesh.yaml:10", "spec.trafficPolicy.loadBalancer.consistentHash")]


def test_bad_duration_and_out_of_range_percent() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    outlierDetection:
      interval: 5 minutes
      maxEjectionPercent: 101
"""
    )
    assert errors(text) == [
        ("mesh.yaml:9", "spec.trafficPolicy.outlierDetection.interval"),
        ("mesh.yaml:10", "spec.trafficPolicy.outlierDetection.maxEjectionPercent"),
    ]


def test_warmup_rules_follow_istio() -> None:
    base = HEAD + "  trafficPolicy:\n    loadBalancer:\n      warmup:\n"
    assert errors(base + "        minimumPercent: 5\n") == [
        ("mesh.yaml:9", "spec.trafficPolicy.loadBalancer.warmup.duration")
    ]
    assert errors(base + "        duration: 10s\n        aggression: 0.5\n") == [
        ("mesh.yaml:11", "spec.trafficPolicy.loadBalancer.warmup.aggression")
    ]
    assert errors(base + "        duration: 10s\n        minimumPercent: 100\n") == []


def test_mutual_tls_needs_certificates_unless_credential_name() -> None:
    text = HEAD + "  trafficPolicy:\n    tls:\n      mode: MUTUAL\n"
    assert errors(text) == [
        ("mesh.yaml:8", "spec.trafficPolicy.tls.clientCertificate"),
        ("mesh.yaml:8", "spec.trafficPolicy.tls.privateKey"),
    ]
    assert errors(text + "      credentialName: client-cert\n") == []


def test_port_level_setting_needs_a_port() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    portLevelSettings:
    - loadBalancer:
        simple: RANDOM
"""
    )
    assert errors(text) == [("mesh.yaml:9", "spec.trafficPolicy.portLevelSettings[0].port.number")]


def test_locality_distribute_weights_must_sum_to_100() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-west/zone1/*
          to:
            us-west/zone1/*: 80
            us-west/zone2/*: 10
"""
    )
    assert errors(text) == [
        ("mesh.yaml:12", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to")
    ]


def test_unimplemented_fields_are_warnings() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    tunnel:
      targetHost: proxy.example.com
      targetPort: 8080
    proxyProtocol:
      version: V2
"""
    )
    assert errors(text) == []
    assert warnings(text) == ["spec.trafficPolicy.tunnel", "spec.trafficPolicy.proxyProtocol"]


def test_maglev_table_size_must_be_prime() -> None:
    text = (
        HEAD
        + """\
  trafficPolicy:
    loadBalancer:
      consistentHash:
        useSourceIp: true
        maglev:
          tableSize: 65536
"""
    )
    assert errors(text) == [
        ("mesh.yaml:12", "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize")
    ]
    assert errors(text.replace("65536", "65537")) == []


def test_deprecated_consecutive_errors_counts_gateway_errors() -> None:
    text = HEAD + "  trafficPolicy:\n    outlierDetection:\n      consecutiveErrors: 4\n"
    assert errors(text) == []
    assert warnings(text) == ["spec.trafficPolicy.outlierDetection.consecutiveErrors"]
    policy = _convert(text).traffic_policy
    od = policy.outlier_detection if policy else None
    assert od is not None
    assert (od.consecutive_gateway_errors, od.consecutive_5xx_errors) == (4, 0)


def test_unsupported_api_version_of_a_known_kind_is_an_error() -> None:
    text = HEAD.replace("networking.istio.io/v1alpha3", "networking.istio.io/v2")
    found = diagnostics(text)
    assert [(d.severity, d.location, d.field) for d in found] == [
        ("error", "mesh.yaml:1", "apiVersion")
    ]


def test_unknown_top_level_and_metadata_fields_are_errors() -> None:
    text = HEAD.replace("metadata:\n", "extra: 1\nmetadata:\n  colour: red\n")
    assert errors(text) == [("mesh.yaml:3", "extra"), ("mesh.yaml:5", "metadata.colour")]
