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


# -- Istio's validateTLSOptions, ValidateGateway and ValidateSidecar ----------------------

_TLS_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: %s, namespace: ns}
spec:
  servers:
  - port: {number: 443, name: https, protocol: %s%s}
    hosts: ["*"]
    tls: {%s}
"""


def _found(text: str) -> list[tuple[str, str, str]]:
    return [(d.severity, d.field, d.reason) for d in diagnostics(text)]


def _tls(tls: str, protocol: str = "HTTPS", name: str = "gw", port: str = "") -> str:
    return _TLS_GATEWAY % (name, protocol, port, tls)


def test_server_tls_follows_istios_validate_tls_options() -> None:
    where = "spec.servers[0].tls"
    cases = {
        "mode: ISTIO_MUTUAL, credentialName: c": [
            (
                "error",
                f"{where}.credentialName",
                "ISTIO_MUTUAL TLS cannot have associated credentialName",
            )
        ],
        "mode: PASSTHROUGH, credentialName: c": [
            ("warning", where, "PASSTHROUGH mode does not use certificates, they will be ignored")
        ],
        "mode: SIMPLE, credentialName: c, serverCertificate: /a, privateKey: /b": [
            (
                "error",
                where,
                "only one of credential_name, credential_names, server_certificate/private_key, "
                "tls_certificates should be specified",
            )
        ],
        "mode: MUTUAL, serverCertificate: /a, privateKey: /b": [
            ("error", f"{where}.caCertificates", "MUTUAL TLS requires a client CA bundle")
        ],
        "mode: SIMPLE, serverCertificate: /a": [
            ("error", f"{where}.privateKey", "SIMPLE TLS requires a private key")
        ],
        "mode: SIMPLE, serverCertificate: /a, privateKey: /b, caCrl: /c": [
            ("error", f"{where}.caCrl", "CRL is not supported with SIMPLE TLS")
        ],
        "mode: SIMPLE, credentialName: c, cipherSuites: [NOPE, ECDHE-RSA-AES128-SHA, -X]": [
            ("warning", f"{where}.cipherSuites", "ignoring invalid cipher suites: ['NOPE']")
        ],
        # A credential supplies the CA: MUTUAL with credentialName needs no caCertificates.
        "mode: MUTUAL, credentialName: c": [],
    }
    for tls, expected in cases.items():
        assert _found(_tls(tls)) == expected, tls


def test_tls_certificates_is_an_istio_field_and_each_needs_a_key() -> None:
    two = (
        "mode: SIMPLE, tlsCertificates: [{serverCertificate: /r, privateKey: /rk},"
        " {serverCertificate: /e, privateKey: /ek}]"
    )
    assert _found(_tls(two)) == []
    missing = "mode: SIMPLE, tlsCertificates: [{serverCertificate: /r}]"
    assert _found(_tls(missing)) == [
        (
            "error",
            "spec.servers[0].tls.tlsCertificates[0].privateKey",
            "SIMPLE TLS requires a private key",
        )
    ]
    snapshot, _ = Normalizer().apply([upsert(_tls(two))])
    (server,) = snapshot.gateways["ns/gw"].servers
    assert server.tls is not None
    assert server.tls.certificate_files == (("/r", "/rk"), ("/e", "/ek"))


def test_gateway_target_port_name_and_redirect_as_istio_validates_them() -> None:
    credential = "mode: SIMPLE, credentialName: c"
    assert _found(_tls(credential, port=", targetPort: 8443")) == [
        ("error", "spec.servers[0].port.targetPort", "targetPort has no impact on Gateways")
    ]
    assert _found(_tls(credential, name="gw.v2")) == [
        ("error", "metadata.name", "invalid gateway name: 'gw.v2'")
    ]
    assert _found(_tls(f"{credential}, httpsRedirect: true")) == [
        (
            "warning",
            "spec.servers[0].tls.httpsRedirect",
            "tls.httpsRedirect should only be used with http servers",
        )
    ]


_SIDECAR = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sc, namespace: ns}
spec:
%s"""


def test_sidecar_rules_istio_has_and_meshagent_lacked() -> None:
    port = "{number: 8080, name: http, protocol: HTTP, targetPort: 9080}"
    assert _found(_SIDECAR % f"  ingress: [{{port: {port}}}]\n") == [
        ("error", "spec.ingress[0].port.targetPort", "targetPort has no impact on Sidecars")
    ]
    assert _found(_SIDECAR % f"  egress: [{{port: {port}, hosts: ['./*']}}]\n") == [
        ("error", "spec.egress[0].port.targetPort", "targetPort has no impact on Sidecars")
    ]
    tls = "{mode: SIMPLE, serverCertificate: /a, privateKey: /b}"
    http = "{number: 8080, name: http, protocol: HTTP}"
    assert _found(_SIDECAR % f"  ingress: [{{port: {http}, tls: {tls}}}]\n") == [
        ("error", "spec.ingress[0].tls", "server cannot have TLS settings for non HTTPS/TLS ports")
    ]
    hosts = "  egress: [{hosts: ['*/*', 'ns2/a.example.com', 'ns2/a.example.com']}]\n"
    assert _found(_SIDECAR % hosts) == [
        ("warning", "spec.egress[0].hosts[2]", "duplicated egress host: ns2/a.example.com"),
        (
            "warning",
            "spec.egress[0].hosts",
            "`*/*` host select all resources, no other hosts can be added",
        ),
    ]


def test_server_hosts_are_validated_as_istio_validates_gateway_hosts() -> None:
    """Istio's ValidateNamespaceSlashWildcardHostname for gateways."""
    template = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-1, namespace: ns}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [%s]
"""
    valid = [
        "'*'",
        "'*/*'",
        "'./*.example.com'",
        "'shop.example.com'",
        "'ns/10.0.0.1'",
        "'*foo.com'",
    ]
    for host in valid:
        assert _found(template % host) == [], host
    invalid = {
        "'~/shop.example.com'": "invalid namespace value '~' in gateway",
        "'ns/shop'": "short names (non FQDN) are not allowed",
        "'ns/'": "config namespace and dnsName in host entry cannot be empty",
        "'ns/foo_bar.example.com'": "'foo_bar.example.com' is not a valid host name",
    }
    for host, reason in invalid.items():
        assert _found(template % host) == [("error", "spec.servers[0].hosts[0]", reason)], host


def test_server_bind_and_protocol_as_istio_validates_them() -> None:
    credential = "mode: SIMPLE, credentialName: c"
    bound = _tls(credential).replace('    hosts: ["*"]', '    bind: not-an-ip\n    hosts: ["*"]')
    assert _found(bound) == [
        ("error", "spec.servers[0].bind", "'not-an-ip' is not a valid IP address")
    ]
    assert _found(bound.replace("not-an-ip", "10.0.0.1")) == []
    (found,) = _found(_tls(credential, protocol="HTTPX"))
    assert found[:2] == ("error", "spec.servers[0].port.protocol")
    assert found[2].startswith("invalid protocol 'HTTPX', supported protocols are HTTP, HTTP2")
