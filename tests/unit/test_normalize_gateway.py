"""Gateway, Sidecar and WorkloadGroup: located validation; Gateways become model Gateways."""

from __future__ import annotations

from meshagent.model.gateway import Gateway, GatewayServer, ServerTls
from meshagent.model.labels import labels_of
from meshagent.normalize.normalizer import Normalizer
from tests.unit.normalize_helpers import delete, diagnostics, errors, upsert

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
    (warning,) = diagnostics(WORKLOAD_GROUP % "")
    assert warning.severity == "warning" and warning.field == "kind"
    assert diagnostics(GATEWAY) == []


HTTPS_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: http}
    hosts: ["shop.example.com", "./api.example.com", "apps/*"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*/shop.example.com"]
    tls:
      mode: MUTUAL
      credentialName: shop-cert
      subjectAltNames: [client.example.com]
      minProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-ECDSA-AES128-GCM-SHA256]
"""


def test_a_gateway_is_in_the_snapshot_with_normalized_hosts() -> None:
    normalizer = Normalizer()
    snap, diags = normalizer.apply([upsert(HTTPS_GATEWAY)])
    assert diags == [] and snap.changes is not None
    assert snap.changes.gateways == {"edge/web"}
    gateway = snap.gateways["edge/web"]
    assert isinstance(gateway, Gateway) and gateway.selector == labels_of(
        {"istio": "ingressgateway"}
    )
    http, https = gateway.servers
    assert http == GatewayServer(
        port=80,
        protocol="HTTP",
        hosts=("*/shop.example.com", "edge/api.example.com", "apps/*"),
        port_name="http",
        tls=ServerTls(https_redirect=True),
    )
    assert https.index == 1 and https.terminates_https
    assert https.tls == ServerTls(
        mode="MUTUAL",
        credential_name="shop-cert",
        subject_alt_names=("client.example.com",),
        min_protocol_version="TLSV1_2",
        cipher_suites=("ECDHE-ECDSA-AES128-GCM-SHA256",),
    )
    assert gateway.provenance is not None and gateway.provenance.location == "mesh.yaml:1"
    snap, _ = normalizer.apply([delete(HTTPS_GATEWAY)])
    assert snap.gateways == {} and snap.changes is not None
    assert snap.changes.gateways == {"edge/web"}


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
