"""Small behaviours of translator parts that the golden files do not isolate."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from meshagent.model import (
    DestinationRule,
    Endpoint,
    HttpRoute,
    LoadBalancer,
    MeshSnapshot,
    ProxySpec,
    Resolution,
    Service,
    ServicePort,
    TrafficPolicy,
    VirtualService,
    frozen_map,
)
from meshagent.xds import names, typeurls
from meshagent.xds.translate import generate
from meshagent.xds.translate.routes import domains_for

PROXY = ProxySpec(node_id="vm-1", namespace="shop")


def _http(host: str, namespace: str = "shop", port: int = 80, **kw: object) -> Service:
    return Service(
        host=host,
        namespace=namespace,
        ports=(ServicePort(port, "http", "HTTP"),),
        resolution=kw.pop("resolution", Resolution.STATIC),  # type: ignore[arg-type]
    )


def _unpack(resource_body: object, message_type: type) -> object:
    out = message_type()
    resource_body.Unpack(out)  # type: ignore[attr-defined]
    return out


def test_names_follow_istio() -> None:
    assert names.cluster_name(80, "a.b.svc.cluster.local") == "outbound|80||a.b.svc.cluster.local"
    assert names.cluster_name(80, "a.example", "v1") == "outbound|80|v1|a.example"
    assert names.route_name(8080) == "8080"
    assert names.listener_name("127.0.0.1", 15080) == "127.0.0.1_15080"
    assert names.virtual_host_name("a.example", 80) == "a.example:80"


def test_short_names_only_in_the_proxys_namespace() -> None:
    same = domains_for("cart.shop.svc.cluster.local", 80, namespace="shop", proxy_namespace="shop")
    other = domains_for("cart.shop.svc.cluster.local", 80, namespace="shop", proxy_namespace="x")
    assert "cart" in same and "cart:80" in same
    assert "cart" not in other and "cart.shop" in other and "cart.shop.svc:80" in other
    assert domains_for("api.example.com", 443, namespace="shop", proxy_namespace="shop") == [
        "api.example.com",
        "api.example.com:443",
    ]


def test_a_domain_is_listed_once_per_route_configuration() -> None:
    # two hosts whose short forms collide: the first (by host) keeps them
    first = _http("cart.shop.svc.cluster.local")
    second = _http("cart.shop.svc.other.local")
    snapshot = MeshSnapshot(services=frozen_map({s.host: s for s in (first, second)}))
    config = _unpack(
        generate(snapshot, PROXY).of(typeurls.ROUTE)["80"].body, route_pb2.RouteConfiguration
    )
    domains = [d for vhost in config.virtual_hosts for d in vhost.domains]  # type: ignore[attr-defined]
    assert len(domains) == len(set(domains))
    assert [len(v.domains) for v in config.virtual_hosts] == [8, 2]  # type: ignore[attr-defined]


def test_wildcard_destination_rule_applies_to_matching_hosts() -> None:
    service = _http("api.payments.example")
    rule = DestinationRule(
        "r", "shop", "*.example", traffic_policy=TrafficPolicy(load_balancer=LoadBalancer("RANDOM"))
    )
    snapshot = MeshSnapshot(
        services=frozen_map({service.host: service}),
        destination_rules=frozen_map({rule.host: rule}),
    )
    body = generate(snapshot, PROXY).of(typeurls.CLUSTER)["outbound|80||api.payments.example"].body
    assert _unpack(body, cluster_pb2.Cluster).lb_policy == cluster_pb2.Cluster.RANDOM  # type: ignore[attr-defined]


def test_logical_dns_gets_exactly_one_host() -> None:
    service = _http("cdn.example", resolution=Resolution.DNS_ROUND_ROBIN)
    snapshot = MeshSnapshot(
        services=frozen_map({service.host: service}),
        endpoints=frozen_map(
            {service.host: (Endpoint("a.cdn.example"), Endpoint("b.cdn.example"))}
        ),
    )
    body = generate(snapshot, PROXY).of(typeurls.CLUSTER)["outbound|80||cdn.example"].body
    cluster = _unpack(body, cluster_pb2.Cluster)
    hosts = [e for g in cluster.load_assignment.endpoints for e in g.lb_endpoints]  # type: ignore[attr-defined]
    assert len(hosts) == 1


def test_gateway_only_virtual_service_does_not_bind_sidecars() -> None:
    service = _http("cart.shop.svc.cluster.local")
    vs = VirtualService(
        "gw", "shop", (service.host,), gateways=("shop/ingress",), http=(HttpRoute(),)
    )
    snapshot = MeshSnapshot(
        services=frozen_map({service.host: service}),
        virtual_services=frozen_map({"shop/gw": vs}),
    )
    config = _unpack(
        generate(snapshot, PROXY).of(typeurls.ROUTE)["80"].body, route_pb2.RouteConfiguration
    )
    assert [r.name for r in config.virtual_hosts[0].routes] == ["default"]  # type: ignore[attr-defined]


def test_endpoints_and_routes_have_no_initial_fetch_timeout_secrets_keep_it() -> None:
    """As Istio: EDS and RDS wait for their resources however long Envoy takes to ask (at 40k
    clusters Envoy alone needs more than the default 15 s), secrets keep the default so that
    a missing credential does not hold a listener back for good."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm,
    )

    from meshagent.xds.translate.secrets import sds_config

    snapshot = MeshSnapshot(services=frozen_map({"a.example": _http("a.example")}))
    out = generate(snapshot, PROXY)
    cluster = _unpack(out.of(typeurls.CLUSTER)["outbound|80||a.example"].body, cluster_pb2.Cluster)
    eds = cluster.eds_cluster_config.eds_config  # type: ignore[attr-defined]
    assert eds.HasField("initial_fetch_timeout") and eds.initial_fetch_timeout.ToNanoseconds() == 0
    managers = []
    for resource in out.of(typeurls.LISTENER).values():
        listener = _unpack(resource.body, listener_pb2.Listener)
        for chain in listener.filter_chains:  # type: ignore[attr-defined]
            for f in chain.filters:
                if f.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                    managers.append(_unpack(f.typed_config, hcm.HttpConnectionManager))
    rds = [m.rds.config_source for m in managers if m.HasField("rds")]  # type: ignore[attr-defined]
    assert rds and all(s.HasField("initial_fetch_timeout") for s in rds)
    assert not sds_config("default").sds_config.HasField("initial_fetch_timeout")


def test_endpoint_labels_are_not_sent_to_envoy() -> None:
    """Istio sends none, nothing in Envoy reads them, and Envoy keeps a copy per host (3% of
    its memory at 4,000 single-endpoint clusters)."""
    from envoy.config.endpoint.v3 import endpoint_pb2

    snapshot = MeshSnapshot(
        services=frozen_map({"a.example": _http("a.example")}),
        endpoints=frozen_map(
            {"a.example": (Endpoint("10.0.0.1", labels=(("app", "a"), ("v", "1"))),)}
        ),
    )
    body = generate(snapshot, PROXY).of(typeurls.ENDPOINT)["outbound|80||a.example"].body
    assignment = _unpack(body, endpoint_pb2.ClusterLoadAssignment)
    [endpoint] = assignment.endpoints[0].lb_endpoints  # type: ignore[attr-defined]
    assert endpoint.endpoint.address.socket_address.address == "10.0.0.1"
    assert not endpoint.HasField("metadata")
