"""Issue 13 items 10 and 11 end to end: VirtualService delegation merged as Istio's
mergeVirtualServicesIfNeeded does, and DestinationRules with a workloadSelector applied only
to the proxies of the workloads they select."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec
from meshagent.model.routing import MatchKind, StringMatch
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.translate import generate
from tests.unit.normalize_helpers import delete, upsert

SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com, reviews.example.com, ratings.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.10}]
"""

ROOT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root, namespace: shop}
spec:
  hosts: [shop.example.com]
  http:
  - name: reviews
    match: [{uri: {prefix: /reviews}}]
    timeout: 3s
    delegate: {name: reviews, namespace: team}
  - name: rest
    route: [{destination: {host: shop.example.com}}]
"""

DELEGATE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: team}
spec:
  exportTo: [shop]
  http:
  - name: v2
    match: [{uri: {prefix: /reviews/v2}, headers: {x-user: {exact: jason}}}]
    route: [{destination: {host: reviews.example.com}}]
  - name: outside
    match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings.example.com}}]
  - name: all
    route: [{destination: {host: ratings.example.com}}]
"""


def _root(snapshot: MeshSnapshot) -> list[str]:
    return [route.name for route in snapshot.virtual_services["shop/root"].http]


def test_a_root_route_is_replaced_by_its_delegates_routes_merged() -> None:
    n = Normalizer()
    snapshot, diags = n.apply([upsert(SERVICES, ROOT, DELEGATE)])
    assert [d for d in diags if d.severity == "error"] == []
    assert "team/reviews" not in snapshot.virtual_services  # a delegate is never published
    # "outside" matches /ratings, not a subset of the root's /reviews: dropped, as Istio does
    assert _root(snapshot) == ["reviews-v2", "reviews-all", "rest"]
    v2, everything = snapshot.virtual_services["shop/root"].http[:2]
    assert v2.matches[0].uri == StringMatch(MatchKind.PREFIX, "/reviews/v2")
    assert [h.name for h in v2.matches[0].headers] == ["x-user"]
    # a delegate route without a match takes the root's; the root's timeout fills in
    assert everything.matches[0].uri == StringMatch(MatchKind.PREFIX, "/reviews")
    assert v2.timeout_ms == everything.timeout_ms == 3000
    assert v2.delegate is None and v2.route[0].destination.host == "reviews.example.com"


def test_a_missing_or_hidden_delegate_drops_only_its_route_until_it_appears() -> None:
    n = Normalizer()
    snapshot, diags = n.apply([upsert(SERVICES, ROOT)])
    assert _root(snapshot) == ["rest"]
    assert [(d.severity, d.location, d.field, d.reason) for d in diags] == [
        (
            "warning",
            "mesh.yaml:10",
            "spec.http[0].delegate",
            "delegate VirtualService team/reviews not found: this route is ignored",
        )
    ]
    snapshot, _ = n.apply([upsert(DELEGATE)])
    assert _root(snapshot) == ["reviews-v2", "reviews-all", "rest"]
    hidden = DELEGATE.replace("exportTo: [shop]", "exportTo: ['.']")
    snapshot, _ = n.apply([upsert(hidden)])
    assert _root(snapshot) == ["rest"]
    snapshot, _ = n.apply([upsert(DELEGATE)])
    snapshot, _ = n.apply([delete(DELEGATE)])
    assert _root(snapshot) == ["rest"]


def test_the_delegate_namespace_defaults_to_the_roots() -> None:
    local = DELEGATE.replace("namespace: team", "namespace: shop").replace("[shop]", "['.']")
    root = ROOT.replace("{name: reviews, namespace: team}", "{name: reviews}")
    snapshot, _ = Normalizer().apply([upsert(SERVICES, root, local)])
    assert _root(snapshot) == ["reviews-v2", "reviews-all", "rest"]


def test_delegated_routes_reach_envoy_in_order() -> None:
    snapshot, _ = Normalizer().apply([upsert(SERVICES, ROOT, DELEGATE)])
    proxy = ProxySpec(node_id="vm-1", namespace="shop")
    body = generate(snapshot, proxy).of(typeurls.ROUTE)["80"].body
    config = route_pb2.RouteConfiguration()
    body.Unpack(config)
    vhost = next(v for v in config.virtual_hosts if "shop.example.com" in v.domains)
    routes = [(r.match.prefix, r.route.cluster) for r in vhost.routes]
    assert routes == [
        ("/reviews/v2", "outbound|80||reviews.example.com"),
        ("/reviews", "outbound|80||ratings.example.com"),
        ("/", "outbound|80||shop.example.com"),
    ]


RULE = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: reviews.example.com
  {selector}
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
"""


def _lb(snapshot: MeshSnapshot, labels: tuple[tuple[str, str], ...]) -> int:
    workload = LocalWorkload("web", "shop", "web", labels=labels)
    proxy = ProxySpec(node_id="vm-1", namespace="shop", workloads=(workload,))
    body = generate(snapshot, proxy).of(typeurls.CLUSTER)["outbound|80||reviews.example.com"].body
    cluster = cluster_pb2.Cluster()
    body.Unpack(cluster)
    return int(cluster.lb_policy)


def test_a_selector_rule_applies_only_to_the_workloads_it_selects() -> None:
    wide = RULE.format(name="wide", selector="", lb="RANDOM")
    scoped = RULE.format(
        name="scoped", selector="workloadSelector: {matchLabels: {app: web}}", lb="LEAST_REQUEST"
    )
    n = Normalizer()
    snapshot, diags = n.apply([upsert(SERVICES, wide, scoped)])
    assert [d for d in diags if d.severity == "error"] == []
    # the scoped rule does not take the host from the namespace-wide one...
    assert snapshot.destination_rules["reviews.example.com"].name == "wide"
    assert _lb(snapshot, (("app", "db"),)) == cluster_pb2.Cluster.RANDOM
    # ...but wins for a proxy whose local workload it selects
    assert _lb(snapshot, (("app", "web"), ("v", "1"))) == cluster_pb2.Cluster.LEAST_REQUEST
    snapshot, _ = n.apply([delete(scoped)])
    assert _lb(snapshot, (("app", "web"),)) == cluster_pb2.Cluster.RANDOM


def test_a_selector_rule_added_later_reaches_a_running_translator() -> None:
    from meshagent.xds.translate import Translator

    wide = RULE.format(name="wide", selector="", lb="RANDOM")
    scoped = RULE.format(
        name="scoped", selector="workloadSelector: {matchLabels: {app: web}}", lb="LEAST_REQUEST"
    )
    workload = LocalWorkload("web", "shop", "web", labels=(("app", "web"),))
    proxy = ProxySpec(node_id="vm-1", namespace="shop", workloads=(workload,))
    n, translator = Normalizer(), Translator()
    key = "outbound|80||reviews.example.com"
    for batch, want in (
        (wide, cluster_pb2.Cluster.RANDOM),
        (scoped, cluster_pb2.Cluster.LEAST_REQUEST),
    ):
        snapshot, _ = n.apply([upsert(SERVICES, batch)])
        cluster = cluster_pb2.Cluster()
        translator.generate(snapshot, proxy).of(typeurls.CLUSTER)[key].body.Unpack(cluster)
        assert cluster.lb_policy == want


def test_a_root_left_without_routes_leaves_its_hosts_their_default_routes() -> None:
    only = ROOT.split("  - name: rest")[0]
    snapshot, _ = Normalizer().apply([upsert(SERVICES, only)])
    assert "shop/root" not in snapshot.virtual_services  # Istio builds no virtual host for it
    snapshot, _ = Normalizer().apply([upsert(SERVICES, only, DELEGATE)])
    assert _root(snapshot) == ["reviews-v2", "reviews-all"]
