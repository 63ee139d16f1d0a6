"""Gateways on a router proxy: names, host matching, server merging, TLS, missing credentials."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from meshagent.adapters.yamldocs import load_file
from meshagent.model import Credential, Identity, MeshSnapshot, ProxySpec, WorkloadCertificate
from meshagent.model.proxy import ROUTER, SIDECAR
from meshagent.model.source import Provenance, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds import names, typeurls
from meshagent.xds.attribution import describe
from meshagent.xds.consistency import ConsistencyChecker
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.gateway import gateway_problems
from meshagent.xds.translate.gateway_routes import host_subset, intersect_hosts
from tests.unit.normalize_helpers import upsert

LABELS = (("istio", "ingressgateway"),)
ROUTER_PROXY = ProxySpec(node_id="gw-1", namespace="edge", proxy_type=ROUTER, labels=LABELS)

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/shop.example.com", "./status.example.com"]
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: ["shop.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLSV1_2}
  - port: {number: 8443, name: https-admin, protocol: HTTPS}
    hosts: ["admin.example.com"]
    tls: {mode: MUTUAL, credentialName: admin-cert, subjectAltNames: [ops.example.com]}
"""

SHOP = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [edge/web]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api.shop.svc.cluster.local, port: {number: 80}}}]
  - route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 80}}}]
"""

STATUS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: status, namespace: %s}
spec:
  hosts: ["status.example.com"]
  gateways: [%s]
  http:
  - directResponse: {status: 200, body: {string: ok}}
"""


def _snapshot(*documents: str, **credentials: Credential) -> MeshSnapshot:
    snapshot, diagnostics = Normalizer().apply([upsert(*documents)])
    assert [d for d in diagnostics if d.severity == "error"] == []
    keyed = {f"edge/{name.replace('_', '-')}": c for name, c in credentials.items()}
    return replace(snapshot, credentials=MappingProxyType(keyed), changes=None)


def _credential(name: str, ca: str = "") -> Credential:
    return Credential("edge", name, f"CHAIN {name}", f"KEY {name}", ca)


def _unpack(resources: ResourceSet, type_url: str, name: str, message: Any) -> Any:
    out = message()
    resources.of(type_url)[name].body.Unpack(out)
    return out


def _listener(resources: ResourceSet, name: str) -> listener_pb2.Listener:
    return _unpack(resources, typeurls.LISTENER, name, listener_pb2.Listener)


def _routes(resources: ResourceSet, name: str) -> route_pb2.RouteConfiguration:
    return _unpack(resources, typeurls.ROUTE, name, route_pb2.RouteConfiguration)


def _tls(chain: Any) -> tls_pb2.DownstreamTlsContext:
    out = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(out)
    return out


def test_gateway_names_follow_istio() -> None:
    assert names.gateway_listener_name("", 443) == "0.0.0.0_443"
    assert names.gateway_listener_name("10.0.0.1", 443) == "10.0.0.1_443"
    assert names.gateway_http_route_name(80) == "http.80"
    assert names.gateway_http_route_name(80, "10.0.0.1") == "http.80.10.0.0.1"
    assert names.gateway_https_route_name(443, "https", "web", "edge") == "https.443.https.web.edge"
    assert names.credential_secret_name("shop") == "kubernetes://shop"
    assert names.credential_ca_secret_name("shop") == "kubernetes://shop-cacert"


@pytest.mark.parametrize(
    ("narrow", "wide", "expected"),
    [
        ("shop.example.com", "shop.example.com", True),
        ("shop.example.com", "*.example.com", True),
        ("shop.example.com", "*", True),
        ("*.shop.example.com", "*.example.com", True),
        ("*.example.com", "shop.example.com", False),
        ("*", "*.example.com", False),
        ("example.com", "*.example.com", False),
        ("shop.example.org", "*.example.com", False),
    ],
)
def test_host_subset_as_istio(narrow: str, wide: str, expected: bool) -> None:
    assert host_subset(narrow, wide) is expected


def test_host_intersection_keeps_the_more_specific_name() -> None:
    assert intersect_hosts(["*.example.com"], ["a.example.com", "b.example.org"]) == [
        "a.example.com"
    ]
    assert intersect_hosts(["a.example.com", "b.example.com"], ["*"]) == [
        "a.example.com",
        "b.example.com",
    ]
    assert intersect_hosts(["*"], ["*.example.com"]) == ["*.example.com"]


def test_a_router_serves_its_gateway_ports_and_no_sidecar_listeners() -> None:
    snapshot = _snapshot(
        GATEWAY,
        SHOP,
        shop_cert=_credential("shop-cert"),
        admin_cert=_credential("admin-cert", "CA"),
    )
    resources = generate(snapshot, ROUTER_PROXY)

    assert list(resources.of(typeurls.LISTENER)) == ["0.0.0.0_8080", "0.0.0.0_8443"]
    assert list(resources.of(typeurls.ROUTE)) == [
        "http.8080",
        "https.8443.https.web.edge",
        "https.8443.https-admin.web.edge",
    ]
    assert list(resources.of(typeurls.SECRET)) == [
        "kubernetes://admin-cert",
        "kubernetes://admin-cert-cacert",
        "kubernetes://shop-cert",
    ]
    assert ConsistencyChecker().check(resources) == []
    assert gateway_problems(snapshot, ROUTER_PROXY) == []
    # The same snapshot for a sidecar: its own listeners, none of the gateway's.
    sidecar = generate(snapshot, replace(ROUTER_PROXY, proxy_type=SIDECAR))
    assert not any(n.startswith("0.0.0.0_") for n in sidecar.of(typeurls.LISTENER))
    assert not any(n.startswith(("http.", "https.")) for n in sidecar.of(typeurls.ROUTE))


def test_https_servers_on_one_port_are_filter_chains_told_apart_by_sni() -> None:
    snapshot = _snapshot(
        GATEWAY,
        SHOP,
        shop_cert=_credential("shop-cert"),
        admin_cert=_credential("admin-cert", "CA"),
    )
    listener = _listener(generate(snapshot, ROUTER_PROXY), "0.0.0.0_8443")

    shop, admin = listener.filter_chains
    assert list(shop.filter_chain_match.server_names) == ["shop.example.com"]
    assert list(admin.filter_chain_match.server_names) == ["admin.example.com"]
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    simple, mutual = _tls(shop), _tls(admin)
    assert not simple.require_client_certificate.value
    assert [s.name for s in simple.common_tls_context.tls_certificate_sds_secret_configs] == [
        "kubernetes://shop-cert"
    ]
    assert simple.common_tls_context.tls_params.tls_minimum_protocol_version == 3  # TLSv1_2
    assert list(simple.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    assert mutual.require_client_certificate.value
    combined = mutual.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://admin-cert-cacert"
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.exact == "ops.example.com"


def test_virtual_hosts_of_bound_virtual_services_only() -> None:
    snapshot = _snapshot(
        GATEWAY,
        SHOP,
        STATUS % ("edge", "web"),
        STATUS % ("other", "web"),  # other/web: not this gateway
        STATUS % ("shop", "edge/web"),  # the server takes status.example.com from edge only
        shop_cert=_credential("shop-cert"),
        admin_cert=_credential("admin-cert", "CA"),
    )
    resources = generate(snapshot, ROUTER_PROXY)

    plain = _routes(resources, "http.8080")
    assert [v.name for v in plain.virtual_hosts] == [
        "shop.example.com:8080",
        "status.example.com:8080",
    ]
    shop, status = plain.virtual_hosts
    assert list(shop.domains) == ["shop.example.com"] and plain.ignore_port_in_host_matching
    assert [r.match.prefix for r in shop.routes] == ["/api", "/"]
    assert shop.routes[0].route.cluster == "outbound|80||api.shop.svc.cluster.local"
    # ./status.example.com: only VirtualServices of the gateway's namespace bind it.
    assert [r.direct_response.status for r in status.routes] == [200]
    https = _routes(resources, "https.8443.https.web.edge")
    assert [v.name for v in https.virtual_hosts] == ["shop.example.com:8443"]
    # Nothing bound to the admin server: Istio's 404 virtual host.
    (blackhole,) = _routes(resources, "https.8443.https-admin.web.edge").virtual_hosts
    assert (blackhole.name, list(blackhole.domains), len(blackhole.routes)) == (
        "blackhole:8443",
        ["*"],
        0,
    )


def test_https_redirect_requires_tls_on_every_host_of_the_server() -> None:
    redirect = GATEWAY.replace(
        '"./status.example.com"]', '"./status.example.com"]\n    tls: {httpsRedirect: true}'
    )
    snapshot = _snapshot(redirect, SHOP, shop_cert=_credential("shop-cert"))
    plain = _routes(generate(snapshot, ROUTER_PROXY), "http.8080")

    assert [(v.name, v.require_tls) for v in plain.virtual_hosts] == [
        ("shop.example.com:8080", 2),  # ALL
        ("status.example.com:8080", 2),
    ]


def test_a_missing_credential_leaves_only_its_server_out_with_a_located_warning() -> None:
    snapshot = _snapshot(GATEWAY, SHOP, shop_cert=_credential("shop-cert"))
    resources = generate(snapshot, ROUTER_PROXY)

    (chain,) = _listener(resources, "0.0.0.0_8443").filter_chains
    assert list(chain.filter_chain_match.server_names) == ["shop.example.com"]
    assert "https.8443.https-admin.web.edge" not in resources.of(typeurls.ROUTE)
    assert ConsistencyChecker().check(resources) == []
    (problem,) = gateway_problems(snapshot, ROUTER_PROXY)
    assert (problem.location, problem.kind, problem.name, problem.field) == (
        "mesh.yaml:1",
        "Gateway",
        "edge/web",
        "spec.servers[2]",
    )
    assert "credential 'edge/admin-cert'" in problem.reason and "not found" in problem.reason
    assert problem.severity == "warning"


def test_mutual_without_a_ca_is_left_out_and_a_separate_cacert_credential_counts() -> None:
    without = _snapshot(
        GATEWAY, shop_cert=_credential("shop-cert"), admin_cert=_credential("admin-cert")
    )
    (problem,) = gateway_problems(without, ROUTER_PROXY)
    assert "needs a CA bundle" in problem.reason
    separate = Credential("edge", "admin-cert-cacert", ca_cert_pem="CA PEM")
    snapshot = _snapshot(
        GATEWAY,
        shop_cert=_credential("shop-cert"),
        admin_cert=_credential("admin-cert"),
        admin_cert_cacert=separate,
    )
    resources = generate(snapshot, ROUTER_PROXY)
    ca = _unpack(resources, typeurls.SECRET, "kubernetes://admin-cert-cacert", secret_pb2.Secret)
    assert ca.validation_context.trusted_ca.inline_string == "CA PEM"
    cert = _unpack(resources, typeurls.SECRET, "kubernetes://admin-cert", secret_pb2.Secret)
    assert cert.tls_certificate.certificate_chain.inline_string == "CHAIN admin-cert"


def test_a_separate_cacert_credential_wins_over_the_credentials_own_ca() -> None:
    # Istio's GetCaCert reads `<name>-cacert` first and the credential's own CA only when
    # there is no such Secret.
    snapshot = _snapshot(
        GATEWAY,
        shop_cert=_credential("shop-cert"),
        admin_cert=_credential("admin-cert", "OWN CA"),
        admin_cert_cacert=Credential("edge", "admin-cert-cacert", ca_cert_pem="SEPARATE CA"),
    )
    resources = generate(snapshot, ROUTER_PROXY)
    ca = _unpack(resources, typeurls.SECRET, "kubernetes://admin-cert-cacert", secret_pb2.Secret)
    assert ca.validation_context.trusted_ca.inline_string == "SEPARATE CA"
    own = _snapshot(
        GATEWAY, shop_cert=_credential("shop-cert"), admin_cert=_credential("admin-cert", "OWN CA")
    )
    resources = generate(own, ROUTER_PROXY)
    ca = _unpack(resources, typeurls.SECRET, "kubernetes://admin-cert-cacert", secret_pb2.Secret)
    assert ca.validation_context.trusted_ca.inline_string == "OWN CA"


def test_istio_mutual_uses_the_workload_certificate() -> None:
    gateway = GATEWAY.replace("mode: SIMPLE, credentialName: shop-cert", "mode: ISTIO_MUTUAL")
    snapshot = _snapshot(gateway, admin_cert=_credential("admin-cert", "CA"))
    (problem,) = gateway_problems(snapshot, ROUTER_PROXY)
    assert "ISTIO_MUTUAL needs workload certificates" in problem.reason
    certificate = WorkloadCertificate(
        Identity("cluster.local", "edge", "gw"), "CHAIN", "KEY", "ROOTS", 2e9
    )
    proxy = replace(ROUTER_PROXY, certificates=(certificate,))
    resources = generate(snapshot, proxy)
    context = _tls(_listener(resources, "0.0.0.0_8443").filter_chains[0])
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    assert {"default", "ROOTCA"} <= set(resources.of(typeurls.SECRET))


def test_merging_conflicts_are_reported_per_server() -> None:
    conflicts = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: more, namespace: edge}
spec:
  servers:
  - port: {number: 8080, name: mongo, protocol: MONGO}
    hosts: ["*"]
  - port: {number: 8081, name: http-b, protocol: HTTP}
    hosts: ["b.example.com"]
  - port: {number: 8443, name: https-dup, protocol: HTTPS}
    hosts: ["edge/shop.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert}
"""
    snapshot = _snapshot(
        GATEWAY, conflicts, shop_cert=_credential("shop-cert"), admin_cert=_credential("a", "CA")
    )
    found = {(d.name, d.field): d.reason for d in gateway_problems(snapshot, ROUTER_PROXY)}

    # An empty selector selects every router; edge/more sorts before edge/web.
    assert found[("edge/web", "spec.servers[1]")].endswith(
        "duplicate host names on port 8443: shop.example.com"
    )
    # A TCP server (MONGO) is served; with no `tcp:` route bound to it, it has no chain and
    # its listener is not sent (Envoy refuses a listener without chains).
    assert ("edge/more", "spec.servers[0]") not in found
    resources = generate(snapshot, ROUTER_PROXY)
    assert "0.0.0.0_8081" in resources.of(typeurls.LISTENER)
    assert "0.0.0.0_8080" not in resources.of(typeurls.LISTENER)
    assert ConsistencyChecker().check(resources) == []


def test_gateway_resources_are_attributed_to_their_gateway_and_virtual_services() -> None:
    where = Provenance("files", "creds/shop-cert/", "Secret", "edge", "shop-cert")
    shop_cert = Credential("edge", "shop-cert", "C", "K", provenance=where)
    snapshot = _snapshot(GATEWAY, SHOP, shop_cert=shop_cert)
    listener = describe(snapshot, ROUTER_PROXY, [(typeurls.LISTENER, "0.0.0.0_8443")])
    assert listener == ["Gateway/edge/web (mesh.yaml:1)"]
    routes = describe(snapshot, ROUTER_PROXY, [(typeurls.ROUTE, "http.8080")])
    assert routes == ["Gateway/edge/web (mesh.yaml:1)", "VirtualService/shop/shop (mesh.yaml:1)"]
    secret = describe(snapshot, ROUTER_PROXY, [(typeurls.SECRET, "kubernetes://shop-cert")])
    assert secret == ["Secret/edge/shop-cert (creds/shop-cert/)"]


def test_credential_names_present_every_certificate() -> None:
    gateway = GATEWAY.replace("credentialName: shop-cert,", "credentialNames: [shop-rsa, shop-ec],")
    snapshot = _snapshot(
        gateway,
        shop_rsa=_credential("shop-rsa"),
        shop_ec=_credential("shop-ec"),
        admin_cert=_credential("admin-cert", "CA"),
    )
    resources = generate(snapshot, ROUTER_PROXY)
    common = _tls(_listener(resources, "0.0.0.0_8443").filter_chains[0]).common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == [
        "kubernetes://shop-rsa",
        "kubernetes://shop-ec",
    ]
    assert {"kubernetes://shop-rsa", "kubernetes://shop-ec"} <= set(resources.of(typeurls.SECRET))


def test_selector_and_proxy_type_choose_the_gateways() -> None:
    snapshot = _snapshot(GATEWAY, shop_cert=_credential("shop-cert"))
    other = replace(ROUTER_PROXY, labels=(("istio", "egressgateway"),))
    assert list(generate(snapshot, other).of(typeurls.LISTENER)) == []
    assert gateway_problems(snapshot, replace(ROUTER_PROXY, proxy_type=SIDECAR)) == []


def test_a_credential_change_replaces_only_secrets() -> None:
    translator = Translator()
    snapshot = _snapshot(GATEWAY, SHOP, shop_cert=_credential("shop-cert"))
    first = translator.generate(snapshot, ROUTER_PROXY)
    rotated = replace(
        snapshot,
        version=snapshot.version + 1,
        credentials=MappingProxyType(
            {"edge/shop-cert": Credential("edge", "shop-cert", "NEW CHAIN", "NEW KEY")}
        ),
    )
    second = translator.generate(rotated, ROUTER_PROXY)
    for type_url in (typeurls.LISTENER, typeurls.ROUTE, typeurls.CLUSTER):
        assert dict(second.of(type_url)) == dict(first.of(type_url))
    assert second.of(typeurls.SECRET) != first.of(typeurls.SECRET)


CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"


def test_istio_gateway_documents_of_the_corpus_translate() -> None:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus not found")
    files = [
        p for d in ("bookinfo", "config", "dataset") for p in sorted((CORPUS / d).glob("*.yaml"))
    ]
    upserts = tuple(r for p in files for r in load_file(p)[0])
    snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=upserts)])
    assert [str(d) for d in diagnostics if d.severity == "error"] == []
    assert len(snapshot.gateways) >= 5
    certificate = WorkloadCertificate(
        Identity("cluster.local", "istio-system", "gw"), "CHAIN", "KEY", "ROOTS", 2e9
    )
    for gateway in snapshot.gateways.values():
        proxy = ProxySpec(
            node_id="gw",
            namespace=gateway.namespace,
            proxy_type=ROUTER,
            labels=gateway.selector,
            certificates=(certificate,),
        )
        credentials = {
            f"{gateway.namespace}/{name}": Credential(gateway.namespace, name, "C", "K", "CA")
            for server in gateway.servers
            if server.tls is not None
            for name in server.tls.credentials
        }
        with_credentials = replace(snapshot, credentials=MappingProxyType(credentials))
        resources = generate(with_credentials, proxy)
        assert ConsistencyChecker().check(resources) == [], gateway.key
        for problem in gateway_problems(with_credentials, proxy):
            # Several corpus Gateways select one router: Istio rejects their clashes too.
            expected = ("not translated yet", "duplicate", "conflicts", "already")
            assert any(e in problem.reason for e in expected), problem


BOTH = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: shop}
spec:
  hosts: [shop.example.com, web.shop.svc.cluster.local]
  gateways: [mesh, edge/web]
  http:
  - match: [{uri: {prefix: /edge}, gateways: [edge/web]}]
    route: [{destination: {host: api.shop.svc.cluster.local, port: {number: 80}}}]
  - match: [{uri: {prefix: /inside}, gateways: [mesh]}]
    route: [{destination: {host: api.shop.svc.cluster.local, port: {number: 80}}}]
  - route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 80}}}]
"""

WEB_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
"""


def test_match_gateways_choose_between_the_gateway_and_sidecars() -> None:
    snapshot = _snapshot(GATEWAY, BOTH, WEB_SERVICE, shop_cert=_credential("shop-cert"))
    (edge,) = _routes(generate(snapshot, ROUTER_PROXY), "http.8080").virtual_hosts
    assert [r.match.prefix for r in edge.routes] == ["/edge", "/"]
    sidecar = generate(snapshot, replace(ROUTER_PROXY, proxy_type=SIDECAR))
    vhosts = {v.name: v for v in _routes(sidecar, "80").virtual_hosts}
    inside = vhosts["web.shop.svc.cluster.local:80"]
    assert [r.match.prefix for r in inside.routes] == ["/inside", "/"]
