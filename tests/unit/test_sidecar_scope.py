"""Sidecar: which one applies to a proxy, what its egress hosts import, and the translation
from the scoped view (clusters, routes, listeners, catch-alls, ingress listeners)."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec, Service, ServicePort
from meshagent.model.proxy import ROUTER
from meshagent.model.services import Resolution
from meshagent.model.sidecar import EgressHost, EgressListener, Sidecar
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds import names, typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import generate
from meshagent.xds.translate.scope import (
    Imports,
    effective_proxy,
    host_within,
    hosts_overlap,
    select_sidecar,
)
from tests.unit.normalize_helpers import upsert

PROXY = ProxySpec(node_id="vm", namespace="app", labels=(("app", "web"),))


def _sidecar(name: str, ns: str, selector: dict[str, str] | None = None, **kw: Any) -> Sidecar:
    labels = tuple(sorted(selector.items())) if selector is not None else None
    return Sidecar(name=name, namespace=ns, workload_selector=labels, **kw)


def _by_key(*sidecars: Sidecar) -> dict[str, Sidecar]:
    return {s.key: s for s in sidecars}


# -- host matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "within"),
    [
        ("a.x.com", "*", True),
        ("a.x.com", "a.x.com", True),
        ("a.x.com", "b.x.com", False),
        ("a.x.com", "*.x.com", True),
        ("x.com", "*.x.com", False),
        ("*.a.x.com", "*.x.com", True),
        ("*.x.com", "*.a.x.com", False),
        ("*.x.com", "a.x.com", False),
        ("*", "*.x.com", False),
    ],
)
def test_a_host_is_within_a_pattern_as_istio_subset_of(
    host: str, pattern: str, within: bool
) -> None:
    assert host_within(host, pattern) is within


def test_virtual_service_hosts_overlap_either_way() -> None:
    assert hosts_overlap("*.x.com", "a.x.com") and hosts_overlap("a.x.com", "*.x.com")
    assert not hosts_overlap("a.y.com", "*.x.com")


def _svc(host: str, ns: str, *ports: int) -> Service:
    numbered = tuple(ServicePort(p, f"http-{p}", "HTTP") for p in ports or (80,))
    return Service(host, ns, numbered, Resolution.STATIC)


def _imports(*hosts: str, port: int | None = None, ns: str = "app") -> Imports:
    from meshagent.model.sidecar import SidecarPort

    parsed = tuple(EgressHost(*h.split("/", 1)) for h in hosts)
    listener = EgressListener(parsed, SidecarPort(port) if port else None)
    return Imports(_sidecar("s", ns, egress=(listener,)), ns)


def test_egress_hosts_import_by_namespace_then_any_namespace() -> None:
    imports = _imports("./*", "other/b.other.svc.cluster.local", "*/*.example.com")
    assert imports.service_ports(_svc("a.app.svc.cluster.local", "app"))
    assert imports.service_ports(_svc("b.other.svc.cluster.local", "other"))
    assert not imports.service_ports(_svc("c.other.svc.cluster.local", "other"))
    # a namespace-specific list that misses falls back to the */ hosts (current Istio)
    assert imports.service_ports(_svc("api.example.com", "other"))
    assert not imports.service_ports(_svc("api.example.org", "third"))


def test_tilde_imports_nothing_and_star_star_everything() -> None:
    assert not _imports("~/*").service_ports(_svc("a.app.svc.cluster.local", "app"))
    assert _imports("*/*").everything and not _imports("./*").everything


def test_an_egress_port_imports_only_that_port() -> None:
    imports = _imports("*/*", port=8080)
    assert imports.service_ports(_svc("a", "app", 8080, 9090)) == {8080}
    assert not imports.service_ports(_svc("b", "app", 9090))


# -- selection -------------------------------------------------------------------------------


def test_a_workload_selector_beats_the_namespace_default_which_beats_the_root_one() -> None:
    root = _sidecar("default", "istio-system")
    namespace = _sidecar("ns-wide", "app")
    selected = _sidecar("web", "app", {"app": "web"})
    other = _sidecar("db", "app", {"app": "db"})
    assert select_sidecar(_by_key(root, namespace, selected, other), PROXY) is selected
    assert select_sidecar(_by_key(root, namespace, other), PROXY) is namespace
    assert select_sidecar(_by_key(root, other), PROXY) is root
    assert select_sidecar(_by_key(other), PROXY) is None


def test_selection_reads_local_workload_labels_and_ignores_other_namespaces() -> None:
    selected = _sidecar("web", "app", {"tier": "front"})
    elsewhere = _sidecar("x", "other")
    root_selecting = _sidecar("r", "istio-system", {"app": "web"})
    proxy = ProxySpec(
        node_id="vm",
        namespace="app",
        workloads=(LocalWorkload("w", "app", "sa", labels=(("tier", "front"),)),),
    )
    assert select_sidecar(_by_key(selected, elsewhere), proxy) is selected
    # a root-namespace Sidecar with a selector is for root-namespace workloads only
    assert select_sidecar(_by_key(elsewhere, root_selecting), PROXY) is None


def test_the_first_by_name_wins_among_rivals_and_routers_ignore_sidecars() -> None:
    a, b = _sidecar("a", "app"), _sidecar("b", "app")
    assert select_sidecar(_by_key(b, a), PROXY) is a
    router = ProxySpec(node_id="gw", namespace="app", proxy_type=ROUTER)
    assert select_sidecar(_by_key(a), router) is None


def test_outbound_policy_and_egress_proxy_shape_the_proxy() -> None:
    from meshagent.model.sidecar import EgressProxy

    sidecar = _sidecar(
        "s", "app", outbound_traffic_policy="ALLOW_ANY", egress_proxy=EgressProxy("e", 3128)
    )
    shaped = effective_proxy(
        PROXY.__class__(node_id="vm", outbound_traffic_policy="REGISTRY_ONLY"), sidecar
    )
    assert shaped.outbound_traffic_policy == "ALLOW_ANY" and shaped.egress_proxy == EgressProxy(
        "e", 3128
    )
    assert effective_proxy(PROXY, None) is PROXY


# -- the normalizer ---------------------------------------------------------------------------

SIDECAR_A = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: a, namespace: app}
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy: {host: squid.infra.svc.cluster.local, port: {number: 3128}}
"""
SIDECAR_B = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: b, namespace: app}
spec:
  egress:
  - hosts: ["*/*"]
"""


def test_the_normalizer_converts_sidecars_and_reports_rivals() -> None:
    normalizer = Normalizer()
    snapshot, diags = normalizer.apply([upsert(SIDECAR_A)])
    assert diags == []
    sidecar = snapshot.sidecars["app/a"]
    assert sidecar.egress[0].hosts == (EgressHost(".", "*"), EgressHost("istio-system", "*"))
    assert sidecar.egress_proxy is not None and sidecar.egress_proxy.port == 3128
    assert sidecar.outbound_traffic_policy == "ALLOW_ANY"
    snapshot, diags = normalizer.apply([upsert(SIDECAR_B)])
    (warning,) = diags
    assert warning.severity == "warning" and warning.name.endswith("b")
    assert "only a (the first by name) applies" in warning.reason
    assert set(snapshot.sidecars) == {"app/a", "app/b"}


# -- translation from the view -----------------------------------------------------------------


def _mesh(
    *services: Service, sidecars: dict[str, Sidecar] | None = None, **kw: Any
) -> MeshSnapshot:
    from meshagent.model import frozen_map

    return MeshSnapshot(
        version=1,
        services=frozen_map({s.host: s for s in services}),
        sidecars=frozen_map(sidecars or {}),
        **kw,
    )


SERVICES = (
    _svc("a.app.svc.cluster.local", "app", 8080),
    _svc("b.app.svc.cluster.local", "app", 8080, 9090),
    _svc("c.other.svc.cluster.local", "other", 8080),
    _svc("squid.infra.svc.cluster.local", "infra", 3128),
)
SCOPED = _sidecar("default", "app", egress=(EgressListener((EgressHost(".", "*"),)),))


def _clusters(resources: ResourceSet) -> set[str]:
    return {n for n in resources.of(typeurls.CLUSTER) if n.startswith("outbound|")}


def _route(resources: ResourceSet, name: str) -> RouteConfiguration:
    return RouteConfiguration.FromString(resources.of(typeurls.ROUTE)[name].value)


def test_dot_star_keeps_only_the_namespaces_clusters_and_virtual_hosts() -> None:
    full = generate(_mesh(*SERVICES), PROXY)
    scoped = generate(_mesh(*SERVICES, sidecars=_by_key(SCOPED)), PROXY)
    assert len(_clusters(full)) == 5
    assert _clusters(scoped) == {
        "outbound|8080||a.app.svc.cluster.local",
        "outbound|8080||b.app.svc.cluster.local",
        "outbound|9090||b.app.svc.cluster.local",
    }
    vhosts = {v.name for v in _route(scoped, "8080").virtual_hosts}
    assert vhosts == {"a.app.svc.cluster.local:8080", "b.app.svc.cluster.local:8080"}
    assert "3128" not in scoped.of(typeurls.ROUTE)


def test_the_root_default_applies_with_dot_meaning_the_proxys_namespace() -> None:
    root = _sidecar("default", "istio-system", egress=SCOPED.egress)
    scoped = generate(_mesh(*SERVICES, sidecars=_by_key(root)), PROXY)
    assert {n.rsplit("|", 1)[1] for n in _clusters(scoped)} == {
        "a.app.svc.cluster.local",
        "b.app.svc.cluster.local",
    }


def test_an_egress_port_with_bind_gets_its_own_listener_and_only_that_port() -> None:
    from meshagent.model.sidecar import SidecarPort

    listener = EgressListener((EgressHost("*", "*"),), SidecarPort(9090, "HTTP"), bind="127.0.0.9")
    sidecar = _sidecar("s", "app", egress=(listener,))
    out = generate(_mesh(*SERVICES, sidecars=_by_key(sidecar)), PROXY)
    assert _clusters(out) == {"outbound|9090||b.app.svc.cluster.local"}
    assert set(out.of(typeurls.LISTENER)) == {"127.0.0.9_9090"}


def test_a_virtual_service_in_scope_brings_the_services_it_routes_to() -> None:
    from meshagent.model import (
        Destination,
        HttpRoute,
        VirtualService,
        WeightedDestination,
        frozen_map,
    )

    vs = VirtualService(
        "a",
        "app",
        ("a.app.svc.cluster.local",),
        http=(HttpRoute(route=(WeightedDestination(Destination("c.other.svc.cluster.local")),)),),
    )
    snapshot = _mesh(
        *SERVICES, sidecars=_by_key(SCOPED), virtual_services=frozen_map({"app/a": vs})
    )
    assert "outbound|8080||c.other.svc.cluster.local" in _clusters(generate(snapshot, PROXY))


def _egress_sidecar(mode: str = "ALLOW_ANY") -> Sidecar:
    from meshagent.model.sidecar import EgressProxy

    return _sidecar(
        "s",
        "app",
        egress=SCOPED.egress,
        outbound_traffic_policy=mode,
        egress_proxy=EgressProxy("squid.infra.svc.cluster.local", 3128)
        if mode == "ALLOW_ANY"
        else None,
    )


def test_unknown_destinations_go_to_the_egress_proxy_under_capture() -> None:
    proxy = ProxySpec(node_id="vm", namespace="app", capture=True)
    out = generate(_mesh(*SERVICES, sidecars=_by_key(_egress_sidecar())), proxy)
    squid = "outbound|3128||squid.infra.svc.cluster.local"
    assert squid in _clusters(out)  # imported with the egressProxy, though not in ./*
    outbound = Listener.FromString(out.of(typeurls.LISTENER)[names.VIRTUAL_OUTBOUND].value)
    default = TcpProxy()
    outbound.default_filter_chain.filters[0].typed_config.Unpack(default)
    assert default.cluster == squid
    catch_all = _route(out, "8080").virtual_hosts[-1]
    assert catch_all.name == names.ALLOW_ANY_VIRTUAL_HOST
    assert catch_all.routes[0].route.cluster == squid


def test_a_sidecars_registry_only_blocks_unknown_destinations() -> None:
    proxy = ProxySpec(node_id="vm", namespace="app", capture=True)
    out = generate(_mesh(*SERVICES, sidecars=_by_key(_egress_sidecar("REGISTRY_ONLY"))), proxy)
    outbound = Listener.FromString(out.of(typeurls.LISTENER)[names.VIRTUAL_OUTBOUND].value)
    default = TcpProxy()
    outbound.default_filter_chain.filters[0].typed_config.Unpack(default)
    assert default.cluster == names.BLACKHOLE_CLUSTER
    assert _route(out, "8080").virtual_hosts[-1].name == names.BLOCK_ALL_VIRTUAL_HOST


def _ingress_sidecar(endpoint: str, tls: Any = None) -> Sidecar:
    from meshagent.model.sidecar import IngressListener, SidecarPort

    listener = IngressListener(
        SidecarPort(9443, "HTTP", "http"), default_endpoint=endpoint, tls=tls
    )
    return _sidecar("s", "app", ingress=(listener,))


WORKLOAD_PROXY = ProxySpec(
    node_id="vm",
    namespace="app",
    workloads=(LocalWorkload("web", "app", "web", ports=()),),
)


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("127.0.0.1:7070", "127.0.0.1", 7070),
        ("0.0.0.0:7071", "127.0.0.1", 7071),
        ("[::1]:7072", "::1", 7072),
    ],
)
def test_an_ingress_listener_forwards_to_its_default_endpoint(
    endpoint: str, address: str, port: int
) -> None:
    out = generate(_mesh(sidecars=_by_key(_ingress_sidecar(endpoint))), WORKLOAD_PROXY)
    assert "inbound_0.0.0.0_9443" in out.of(typeurls.LISTENER)
    cluster = Cluster.FromString(out.of(typeurls.CLUSTER)["inbound|9443||"].value)
    socket = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (socket.address, socket.port_value) == (address, port)


def test_an_ingress_listener_may_forward_to_a_unix_socket() -> None:
    out = generate(
        _mesh(sidecars=_by_key(_ingress_sidecar("unix:///run/app.sock"))), WORKLOAD_PROXY
    )
    cluster = Cluster.FromString(out.of(typeurls.CLUSTER)["inbound|9443||"].value)
    assert cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path == (
        "/run/app.sock"
    )


def test_ingress_tls_terminates_with_the_files() -> None:
    from meshagent.model.sidecar import IngressTls

    tls = IngressTls(
        "MUTUAL", "/etc/c.pem", "/etc/k.pem", "/etc/ca.pem", min_protocol_version="TLSV1_2"
    )
    out = generate(_mesh(sidecars=_by_key(_ingress_sidecar("127.0.0.1:7070", tls))), WORKLOAD_PROXY)
    listener = Listener.FromString(out.of(typeurls.LISTENER)["inbound_0.0.0.0_9443"].value)
    (chain,) = listener.filter_chains
    context = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert common.tls_certificates[0].certificate_chain.filename == "/etc/c.pem"
    assert common.validation_context.trusted_ca.filename == "/etc/ca.pem"
    assert context.require_client_certificate.value


UNTRANSLATED = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: c, namespace: app}
spec:
  egress:
  - port: {number: 3306, protocol: TCP, name: mysql}
    bind: 127.0.0.5
    captureMode: NONE
    hosts: ["./*"]
  inboundConnectionPool: {tcp: {maxConnections: 5}}
"""


def test_fields_without_effect_are_located_warnings_and_the_rest_applies() -> None:
    snapshot, diags = Normalizer().apply([upsert(UNTRANSLATED)])
    found = {(d.severity, d.field) for d in diags}
    assert found == {
        ("warning", "spec.egress[0].bind"),
        ("warning", "spec.egress[0].captureMode"),
        ("warning", "spec.inboundConnectionPool"),
    }
    assert all(d.location.startswith("mesh.yaml:") for d in diags)
    assert "app/c" in snapshot.sidecars
