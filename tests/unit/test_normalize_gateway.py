"""Gateway, Sidecar and WorkloadGroup: located validation, accepted but not translated yet."""

from __future__ import annotations

from meshagent.normalize.normalizer import Normalizer
from tests.unit.normalize_helpers import diagnostics, errors, upsert

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
"""

BAD_GATEWAY = """\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPX}
    hosts: []
    tls: {mode: SIMPLE, bogus: 1}
"""

SIDECAR = """\
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata: {name: sc, namespace: ns}
spec:
  egress:
  - hosts: ["./*", "istio-system/*.example.com", "bad"]
  outboundTrafficPolicy: {mode: NOPE}
"""

WORKLOAD_GROUP = """\
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: wg, namespace: ns}
spec:
  metadata: {labels: {app: vm}}
  template: {serviceAccount: sa, network: n1, ports: {http: 8080}}
  probe: {periodSeconds: 5, httpGet: {port: 8080, path: /ready}%s}
"""


def test_valid_kinds_warn_that_they_are_not_translated() -> None:
    for text in (GATEWAY, WORKLOAD_GROUP % ""):
        (warning,) = diagnostics(text)
        assert warning.severity == "warning" and warning.field == "kind"
    snap, diags = Normalizer().apply([upsert(GATEWAY)])
    assert "not translated yet" in diags[0].reason and snap.version == 0


def test_errors_are_located_to_the_line() -> None:
    assert errors(BAD_GATEWAY) == [
        ("mesh.yaml:6", "spec.servers[0].port.protocol"),
        ("mesh.yaml:7", "spec.servers[0].hosts"),
        ("mesh.yaml:8", "spec.servers[0].tls.bogus"),
    ]
    assert errors(SIDECAR) == [
        ("mesh.yaml:6", "spec.egress[0].hosts[2]"),
        ("mesh.yaml:7", "spec.outboundTrafficPolicy.mode"),
    ]
    assert errors(WORKLOAD_GROUP % ", tcpSocket: {port: 1}") == [
        ("mesh.yaml:7", "spec.probe.tcpSocket")
    ]
