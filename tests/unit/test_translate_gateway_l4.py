"""Gateway servers that route streams (TCP, TLS, PASSTHROUGH, AUTO_PASSTHROUGH), `gateways:`
of route matches, and the egress gateway pattern's names (as Istio names them)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshagent.model import Credential, Identity, MeshSnapshot, ProxySpec, WorkloadCertificate
from meshagent.model.proxy import ROUTER, TcpBinding
from meshagent.xds import typeurls
from meshagent.xds.consistency import ConsistencyChecker
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.gateway import gateway_problems
from tests.unit.test_translate_gateway import _credential, _listener, _unpack
from tests.unit.test_translate_gateway import _snapshot as _documents_snapshot

CERT = WorkloadCertificate(Identity("cluster.local", "edge", "gw"), "CHAIN", "KEY", "ROOTS", 2e9)
ROUTER_PROXY = ProxySpec(
    node_id="gw-1",
    namespace="edge",
    proxy_type=ROUTER,
    labels=(("istio", "ingressgateway"),),
    certificates=(CERT,),
)
EAST_WEST = ProxySpec(
    node_id="ew-1",
    namespace="istio-system",
    proxy_type=ROUTER,
    labels=(("istio", "eastwestgateway"),),
    certificates=(CERT,),
)

SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 5432, name: db, protocol: TCP}]
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.2, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: outside, namespace: shop}
spec:
  hosts: [outside.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: NONE
  ports: [{number: 9000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.shop.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
"""

L4_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: l4, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-pass, protocol: TLS}
    hosts: ["*.shop.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9443, name: tls-db, protocol: TLS}
    hosts: ["db.example.com"]
    tls: {mode: SIMPLE, credentialName: db-cert}
"""

L4_ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: ["*.shop.example.com", db.example.com]
  gateways: [edge/l4]
  tls:
  - match: [{sniHosts: [a.shop.example.com, b.shop.example.com], port: 443}]
    route: [{destination: {host: secure.shop.svc.cluster.local, port: {number: 443}}}]
  - match: [{sniHosts: [c.shop.example.com], gateways: [edge/other]}]
    route: [{destination: {host: secure.shop.svc.cluster.local, port: {number: 443}}}]
  tcp:
  - match: [{port: 5432}]
    route: [{destination: {host: secure.shop.svc.cluster.local, port: {number: 5432}}}]
  - match: [{port: 9443}]
    route: [{destination: {host: secure.shop.svc.cluster.local, port: {number: 5432}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shadow, namespace: shop}
spec:
  hosts: ["*.shop.example.com"]
  gateways: [edge/l4]
  tls:
  - match: [{sniHosts: [a.shop.example.com, b.shop.example.com]}]
    route: [{destination: {host: api.shop.svc.cluster.local, port: {number: 8080}}}]
"""

EAST_WEST_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.svc.cluster.local"]
    tls: {mode: AUTO_PASSTHROUGH}
"""


def _snapshot(*texts: str, **credentials: Credential) -> MeshSnapshot:
    documents = [d for text in texts for d in text.split("---\n")]
    return _documents_snapshot(*documents, **credentials)


def _tcp_cluster(chain: Any) -> str:
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    return str(proxy.cluster)


def _chains(resources: ResourceSet, name: str) -> list[tuple[list[str], str]]:
    listener = _listener(resources, name)
    return [
        (list(c.filter_chain_match.server_names), _tcp_cluster(c)) for c in listener.filter_chains
    ]


def test_passthrough_routes_tls_by_sni_without_terminating_it() -> None:
    snapshot = _snapshot(SERVICES, L4_GATEWAY, L4_ROUTES, db_cert=_credential("db-cert"))
    resources = generate(snapshot, ROUTER_PROXY)
    # One chain per match: the later VirtualService (by namespace/name) claiming the same
    # names is skipped, the match naming another gateway does not hold here.
    assert _chains(resources, "0.0.0.0_443") == [
        (
            ["a.shop.example.com", "b.shop.example.com"],
            "outbound|443||secure.shop.svc.cluster.local",
        )
    ]
    listener = _listener(resources, "0.0.0.0_443")
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert not listener.filter_chains[0].HasField("transport_socket")
    assert gateway_problems(snapshot, ROUTER_PROXY) == []
    assert ConsistencyChecker().check(resources) == []


def test_tcp_and_terminated_tls_servers_proxy_to_their_tcp_route() -> None:
    snapshot = _snapshot(SERVICES, L4_GATEWAY, L4_ROUTES, db_cert=_credential("db-cert"))
    resources = generate(snapshot, ROUTER_PROXY)
    db = "outbound|5432||secure.shop.svc.cluster.local"
    assert _chains(resources, "0.0.0.0_5432") == [([], db)]
    assert _chains(resources, "0.0.0.0_9443") == [(["db.example.com"], db)]
    chain = _listener(resources, "0.0.0.0_9443").filter_chains[0]
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    secrets = [s.name for s in context.common_tls_context.tls_certificate_sds_secret_configs]
    assert secrets == ["kubernetes://db-cert"]
    assert list(context.common_tls_context.alpn_protocols) == []


def test_a_tcp_server_nothing_routes_sends_no_listener() -> None:
    snapshot = _snapshot(SERVICES, L4_GATEWAY, db_cert=_credential("db-cert"))
    listeners = generate(snapshot, ROUTER_PROXY).of(typeurls.LISTENER)
    assert set(listeners) == set()


def test_auto_passthrough_matches_istio_sni_names_and_sends_sni_dnat_clusters() -> None:
    snapshot = _snapshot(SERVICES, EAST_WEST_GATEWAY)
    resources = generate(snapshot, EAST_WEST)
    api, secure = "api.shop.svc.cluster.local", "secure.shop.svc.cluster.local"
    expected = [
        f"outbound_.8080_._.{api}",
        f"outbound_.8080_.v1_.{api}",
        f"outbound_.443_._.{secure}",
        f"outbound_.5432_._.{secure}",
    ]
    # Every port and subset of each covered mesh-internal service; MESH_EXTERNAL is not,
    # nor resolution NONE (its original destination would be the gateway itself).
    assert _chains(resources, "0.0.0.0_15443") == [([n], n) for n in expected]
    chain = _listener(resources, "0.0.0.0_15443").filter_chains[0]
    assert list(chain.filter_chain_match.application_protocols) == [
        "istio",
        "istio-peer-exchange",
        "istio-http/1.0",
        "istio-http/1.1",
        "istio-h2",
    ]
    clusters = resources.of(typeurls.CLUSTER)
    for name in expected:
        cluster = _unpack(resources, typeurls.CLUSTER, name, cluster_pb2.Cluster)
        assert not cluster.HasField("transport_socket")  # the client's mTLS passes through
        ordinary = name.replace("outbound_.", "outbound|").replace("_.", "|")
        assert cluster.eds_cluster_config.service_name == ordinary
        assert ordinary in clusters
    assert ConsistencyChecker().check(resources) == []


def test_auto_passthrough_covers_only_the_server_hosts() -> None:
    narrow = EAST_WEST_GATEWAY.replace("*.svc.cluster.local", "api.shop.svc.cluster.local")
    resources = generate(_snapshot(SERVICES, narrow), EAST_WEST)
    names = [c[0][0] for c in _chains(resources, "0.0.0.0_15443")]
    assert names == [
        "outbound_.8080_._.api.shop.svc.cluster.local",
        "outbound_.8080_.v1_.api.shop.svc.cluster.local",
    ]


# -- the egress gateway pattern (Istio's egress-gateway-tls-origination task) ---------------

EGRESS = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cnn, namespace: default}
spec:
  hosts: [edition.cnn.com]
  ports:
  - {number: 80, name: http-port, protocol: HTTP}
  - {number: 443, name: https-port-for-tls-origination, protocol: HTTPS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: egressgateway, namespace: istio-system}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.9, serviceAccount: egress, labels: {istio: egressgateway}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: https-port-for-tls-origination, protocol: HTTPS}
    hosts: [edition.cnn.com]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-for-cnn, namespace: default}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
    trafficPolicy:
      portLevelSettings:
      - port: {number: 80}
        tls: {mode: ISTIO_MUTUAL, sni: edition.cnn.com}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct-cnn-through-egress-gateway, namespace: default}
spec:
  hosts: [edition.cnn.com]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port: {number: 80}
  - match: [{gateways: [istio-egressgateway], port: 80}]
    route:
    - destination: {host: edition.cnn.com, port: {number: 443}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-tls-for-edition-cnn-com, namespace: default}
spec:
  host: edition.cnn.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls:
        mode: SIMPLE
        sni: edition.cnn.com
        caCertificates: /etc/ssl/cnn-ca.pem
        subjectAltNames: [edition.cnn.com]
"""
SIDECAR_PROXY = ProxySpec(node_id="app-1", namespace="default", certificates=(CERT,))
EGRESS_PROXY = ProxySpec(
    node_id="egress-1",
    namespace="default",
    proxy_type=ROUTER,
    labels=(("istio", "egressgateway"),),
    certificates=(CERT,),
)
GW_CLUSTER = "outbound|80|cnn|istio-egressgateway.istio-system.svc.cluster.local"
CNN_CLUSTER = "outbound|443||edition.cnn.com"


def _route_clusters(config: route_pb2.RouteConfiguration, domain: str) -> list[str]:
    (vhost,) = [v for v in config.virtual_hosts if domain in v.domains]
    return [r.route.cluster for r in vhost.routes]


def _upstream(resources: ResourceSet, name: str) -> tls_pb2.UpstreamTlsContext:
    cluster = _unpack(resources, typeurls.CLUSTER, name, cluster_pb2.Cluster)
    context = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return context


def test_the_sidecar_half_goes_to_the_egress_gateway_over_istio_mutual_with_the_rules_sni() -> None:
    resources = generate(_snapshot(EGRESS), SIDECAR_PROXY)
    config = _unpack(resources, typeurls.ROUTE, "80", route_pb2.RouteConfiguration)
    # match.gateways [mesh] holds on sidecars, [istio-egressgateway] does not.
    assert _route_clusters(config, "edition.cnn.com") == [GW_CLUSTER]
    context = _upstream(resources, GW_CLUSTER)
    assert context.sni == "edition.cnn.com"  # the DestinationRule's sni, not outbound_...
    validation = context.common_tls_context.combined_validation_context.default_validation_context
    sans = [m.matcher.exact for m in validation.match_typed_subject_alt_names]
    assert sans == ["spiffe://cluster.local/ns/istio-system/sa/egress"]


def test_the_gateway_half_terminates_istio_mutual_and_originates_tls_to_the_external_host() -> None:
    snapshot = _snapshot(EGRESS)
    resources = generate(snapshot, EGRESS_PROXY)
    assert gateway_problems(snapshot, EGRESS_PROXY) == []
    chain = _listener(resources, "0.0.0.0_80").filter_chains[0]
    assert list(chain.filter_chain_match.server_names) == ["edition.cnn.com"]
    route = "https.80.https-port-for-tls-origination.istio-egressgateway.default"
    config = _unpack(resources, typeurls.ROUTE, route, route_pb2.RouteConfiguration)
    assert _route_clusters(config, "edition.cnn.com") == [CNN_CLUSTER]
    context = _upstream(resources, CNN_CLUSTER)
    assert context.sni == "edition.cnn.com"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/ssl/cnn-ca.pem"
    assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == [
        "edition.cnn.com"
    ]
    assert ConsistencyChecker().check(resources) == []


# -- TLS origination without caCertificates (Istio's VERIFY_CERTIFICATE_AT_CLIENT) -----------

NO_CA = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.partner.com]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.partner.com
  trafficPolicy:
    tls: {mode: SIMPLE, subjectAltNames: [api.partner.com]}
"""


def test_simple_without_ca_certificates_verifies_against_the_system_roots() -> None:
    resources = generate(_snapshot(NO_CA), ProxySpec(node_id="app-1"))
    context = _upstream(resources, "outbound|443||api.partner.com")
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/ssl/certs/ca-certificates.crt"
    assert [m.matcher.exact for m in validation.match_typed_subject_alt_names] == [
        "api.partner.com"
    ]
    assert context.sni == "api.partner.com"
    skip = NO_CA.replace("subjectAltNames: [api.partner.com]", "insecureSkipVerify: true")
    context = _upstream(
        generate(_snapshot(skip), ProxySpec(node_id="app-1")), "outbound|443||api.partner.com"
    )
    assert not context.common_tls_context.HasField("validation_context")


def test_an_endpoint_change_keeps_the_eds_sni_dnat_clusters() -> None:
    snapshot = _snapshot(SERVICES, EAST_WEST_GATEWAY)
    translator = Translator()
    first = translator.generate(snapshot, EAST_WEST).of(typeurls.CLUSTER)
    endpoints = dict(snapshot.endpoints)
    host = "api.shop.svc.cluster.local"
    endpoints[host] = (*endpoints[host], replace(endpoints[host][0], address="10.0.0.3"))
    moved = replace(
        snapshot, version=snapshot.version + 1, endpoints=MappingProxyType(endpoints), changes=None
    )
    second = translator.generate(moved, EAST_WEST).of(typeurls.CLUSTER)
    name = f"outbound_.8080_._.{host}"
    assert second[name] is first[name]


SPLIT_TCP = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [secure.shop.svc.cluster.local]
  gateways: [edge/l4, mesh]
  tcp:
  - match: [{port: 5432, gateways: [edge/l4]}]
    route: [{destination: {host: api.shop.svc.cluster.local, port: {number: 8080}}}]
  - route: [{destination: {host: secure.shop.svc.cluster.local, port: {number: 5432}}}]
"""


def test_tcp_route_matches_hold_only_on_the_gateways_they_name() -> None:
    binding = TcpBinding("secure.shop.svc.cluster.local", 5432, "127.0.0.1", 15432)
    sidecar = ProxySpec(node_id="app-1", namespace="shop", tcp_bindings=(binding,))
    snapshot = _snapshot(SERVICES, L4_GATEWAY, SPLIT_TCP, db_cert=_credential("db-cert"))
    assert _chains(generate(snapshot, sidecar), "127.0.0.1_15432") == [
        ([], "outbound|5432||secure.shop.svc.cluster.local")
    ]
    assert _chains(generate(snapshot, ROUTER_PROXY), "0.0.0.0_5432") == [
        ([], "outbound|8080||api.shop.svc.cluster.local")
    ]
