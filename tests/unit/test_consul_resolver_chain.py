"""Consul service-resolver Redirect and Failover: conversion, the normalizer's virtual upstream,
and the translation to prioritized ClusterLoadAssignments (incremental and fresh alike)."""

from __future__ import annotations

from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2

from meshagent.adapters.consul import remote_targets
from meshagent.model import ProxySpec, ResolverTarget, SourceEvent
from meshagent.normalize.consul import ConsulMapping, convert_consul
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from tests.unit.test_consul_normalize import entry, instance, service

PROXY = ProxySpec(node_id="vm-1", namespace="default")


def resolver(**fields: Any) -> dict[str, Any]:
    return {"Kind": "service-resolver", "Name": "web", **fields}


def issues_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    _, issues = convert_consul(entry(body), ConsulMapping())
    return [(i.severity, i.path) for i in issues]


def test_failover_targets_per_subset_and_wildcard() -> None:
    rule, issues = convert_consul(
        entry(
            resolver(
                Subsets={"v1": {"Filter": "Service.Meta.version == v1"}},
                Failover={
                    "v1": {"Service": "web-dr", "ServiceSubset": "blue"},
                    "*": {"Targets": [{"Service": "web-b"}, {"Namespace": "ops"}]},
                },
            )
        ),
        ConsulMapping(host_pattern="{name}.{namespace}.consul"),
    )
    assert not list(issues)
    assert rule.failover_for("v1").targets == (ResolverTarget("web-dr.default.consul", "blue"),)
    assert rule.failover_for("").targets == (
        ResolverTarget("web-b.default.consul"),
        ResolverTarget("web.ops.consul"),
    )
    assert rule.failover_for("v2") is rule.failover_for("")


def test_redirect_to_a_service_subset() -> None:
    rule, issues = convert_consul(
        entry(resolver(Name="web-alias", Redirect={"Service": "web", "ServiceSubset": "v2"})),
        ConsulMapping(),
    )
    assert not list(issues)
    assert rule.host == "web-alias.service.consul"
    assert rule.redirect == ResolverTarget("web.service.consul", "v2")


def test_invalid_resolver_chains_are_located_errors() -> None:
    assert ("error", "Redirect") in issues_of(
        resolver(Redirect={"Service": "a"}, Failover={"*": {"Service": "b"}})
    )
    assert ("error", "Failover.*") in issues_of(
        resolver(Failover={"*": {"Service": "b", "Targets": [{"Service": "c"}]}})
    )
    assert ("error", "Failover.*") in issues_of(resolver(Failover={"*": {}}))
    assert ("error", "Failover.*.ServiceSubset") in issues_of(
        resolver(Failover={"*": {"ServiceSubset": "nope"}})
    )
    assert ("error", "Redirect.Service") in issues_of(resolver(Redirect={"ServiceSubset": "x"}))
    # Failing over to itself, unnarrowed, would be a loop.
    assert ("error", "Failover.*.Targets[0]") in issues_of(
        resolver(Failover={"*": {"Targets": [{"Service": "web"}]}})
    )


def test_other_datacenters_are_hosts_of_their_own_and_peers_are_skipped() -> None:
    rule, issues = convert_consul(
        entry(
            resolver(
                Failover={
                    "*": {"Targets": [{"Peer": "p1"}, {"Datacenter": "dc9", "Service": "w2"}]},
                    "v1": {"Datacenters": ["dc1", "dc3"]},
                },
                Subsets={"v1": {"Filter": "Service.Meta.version == v1"}},
            )
        ),
        ConsulMapping(datacenter="dc1"),
    )
    assert [(i.severity, i.path) for i in issues] == [("warning", "Failover.*.Targets[0].Peer")]
    assert rule.failover_for("").targets == (ResolverTarget("w2.service.dc9.consul"),)
    # The watched datacenter in Datacenters is the service itself: skipped.
    assert rule.failover_for("v1").targets == (ResolverTarget("web.service.dc3.consul"),)


def test_adapter_watches_the_remote_targets_resolvers_name() -> None:
    body = resolver(
        Redirect={"Service": "x", "Datacenter": "dc2"},
        Failover={
            "*": {"Datacenters": ["dc1", "dc3"], "Service": "y"},
            "v1": {"Targets": [{"Datacenter": "dc4"}, {"Peer": "p", "Datacenter": "dc5"}]},
            "bad": "not an object",
        },
    )
    assert remote_targets(body, "dc1") == {("x", "dc2"), ("y", "dc3"), ("web", "dc4")}
    assert remote_targets({"Failover": {"*": {"Datacenters": "dc2"}}}, None) == set()
    assert remote_targets("garbage", None) == set()


# -- translation ----------------------------------------------------------------------------


def assignment(resources: ResourceSet, name: str) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment()
    value = resources.of(typeurls.ENDPOINT)[name].body.value
    cla.ParseFromString(value)
    assert cla.SerializeToString(deterministic=True) == value  # the wire encoder is canonical
    return cla


def priorities(cla: endpoint_pb2.ClusterLoadAssignment) -> list[tuple[int, list[str]]]:
    return [
        (
            group.priority,
            [
                f"{e.endpoint.address.socket_address.address}:"
                f"{e.endpoint.address.socket_address.port_value}"
                for e in group.lb_endpoints
            ],
        )
        for group in cla.endpoints
    ]


def consul_service(name: str, *addresses: str, port: int = 8080, status: str = "passing") -> Any:
    return service(
        name, [instance(f"{name}-{a}", a, port, status, Service=name) for a in addresses]
    )


class Mesh:
    """A normalizer and an incremental translator fed Consul resources; each step is checked
    against a fresh translation, byte for byte."""

    def __init__(self) -> None:
        self.normalizer = Normalizer()
        self.translator = Translator()

    def apply(self, *upserts: Any, deletes: tuple[Any, ...] = ()) -> ResourceSet:
        snapshot, diagnostics = self.normalizer.apply(
            [SourceEvent("consul", upserts=tuple(upserts), deletes=deletes)]
        )
        assert not [d for d in diagnostics if d.severity == "error"], diagnostics
        out = self.translator.generate(snapshot, PROXY)
        fresh = generate(snapshot, PROXY)
        for type_url in typeurls.PUSH_ORDER:
            assert {n: r.version for n, r in out.of(type_url).items()} == {
                n: r.version for n, r in fresh.of(type_url).items()
            }, type_url
        return out


WEB = "outbound|8080||web.service.consul"


def test_failover_targets_are_lower_priorities_and_follow_their_endpoints() -> None:
    mesh = Mesh()
    mesh.apply(
        consul_service("web", "10.0.0.1", "10.0.0.2"),
        consul_service("web-b", "10.0.1.1", port=9090),
        entry(resolver(Failover={"*": {"Service": "web-b"}})),
    )
    out = mesh.apply(consul_service("web-b", "10.0.1.1", "10.0.1.2", port=9090))
    # A change to the target alone re-resolves web's cluster; the target keeps its own port.
    assert priorities(assignment(out, WEB)) == [
        (0, ["10.0.0.1:8080", "10.0.0.2:8080"]),
        (1, ["10.0.1.1:9090", "10.0.1.2:9090"]),
    ]
    # web's instances all failing: the failover target is the only (so highest) priority.
    out = mesh.apply(consul_service("web", "10.0.0.1", "10.0.0.2", status="critical"))
    assert priorities(assignment(out, WEB)) == [(0, ["10.0.1.1:9090", "10.0.1.2:9090"])]
    out = mesh.apply(consul_service("web", "10.0.0.3"))
    assert priorities(assignment(out, WEB))[0] == (0, ["10.0.0.3:8080"])


def test_failover_to_a_subset_of_the_target() -> None:
    mesh = Mesh()
    blue = instance("b1", "10.0.2.1", 8080, Service="web-b", Meta={"color": "blue"})
    green = instance("g1", "10.0.2.2", 8080, Service="web-b", Meta={"color": "green"})
    out = mesh.apply(
        consul_service("web", "10.0.0.1"),
        service("web-b", [blue, green]),
        entry(
            {
                "Kind": "service-resolver",
                "Name": "web-b",
                "Subsets": {"blue": {"Filter": "Service.Meta.color == blue"}},
            }
        ),
        entry(resolver(Failover={"*": {"Service": "web-b", "ServiceSubset": "blue"}})),
    )
    assert priorities(assignment(out, WEB)) == [(0, ["10.0.0.1:8080"]), (1, ["10.0.2.1:8080"])]


def test_redirect_makes_a_virtual_upstream_with_the_targets_endpoints() -> None:
    mesh = Mesh()
    out = mesh.apply(
        consul_service("web", "10.0.0.1"),
        entry(resolver(Name="web-alias", Redirect={"Service": "web"})),
    )
    alias = "outbound|8080||web-alias.service.consul"
    assert priorities(assignment(out, alias)) == [(0, ["10.0.0.1:8080"])]
    assert alias in out.of(typeurls.CLUSTER)
    routes = out.of(typeurls.ROUTE)["8080"].body.value
    assert b"web-alias.service.consul" in routes
    out = mesh.apply(consul_service("web", "10.0.0.1", "10.0.0.9"))
    assert priorities(assignment(out, alias)) == [(0, ["10.0.0.1:8080", "10.0.0.9:8080"])]
    # The rule removed: the virtual upstream goes with it.
    out = mesh.apply(deletes=(entry(resolver(Name="web-alias")).key,))
    assert alias not in out.of(typeurls.CLUSTER)


# -- router -> splitter chain ------------------------------------------------------------------


def routes_of(normalizer: Normalizer, name: str) -> list[list[tuple[str, str, int]]]:
    vs = normalizer.snapshot.virtual_services[f"default/{name}"]
    return [
        [(w.destination.host, w.destination.subset, w.weight) for w in r.route] for r in vs.http
    ]


def splitter(name: str, *splits: dict[str, Any]) -> Any:
    return entry({"Kind": "service-splitter", "Name": name, "Splits": list(splits)})


def test_router_routes_go_through_the_splitters_they_name() -> None:
    normalizer = Normalizer()
    router = entry(
        {
            "Kind": "service-router",
            "Name": "web",
            "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"ServiceSubset": "v2"}},
                {"Match": {"HTTP": {"PathPrefix": "/api"}}, "Destination": {"Service": "api"}},
            ],
        }
    )
    web_split = splitter(
        "web",
        {"Weight": 50, "ServiceSubset": "v1"},
        {"Weight": 50, "Service": "canary"},
    )
    canary_split = splitter(
        "canary", {"Weight": 90, "ServiceSubset": "a"}, {"Weight": 10, "ServiceSubset": "b"}
    )
    normalizer.apply([SourceEvent("consul", upserts=(router, web_split, canary_split))])
    web, canary = "web.service.consul", "canary.service.consul"
    assert routes_of(normalizer, "consul-router-web") == [
        [(web, "v2", 100)],  # a subset: straight to the resolver
        [("api.service.consul", "", 100)],  # no splitter for api
        # the catch-all goes through web's splitter, and its canary split through canary's
        [(web, "v1", 5000), (canary, "a", 4500), (canary, "b", 500)],
    ]
    # The splitter's own VirtualService chains too (its split to itself would be final).
    assert routes_of(normalizer, "consul-splitter-web") == [
        [(web, "v1", 5000), (canary, "a", 4500), (canary, "b", 500)]
    ]
    normalizer.apply([SourceEvent("consul", deletes=(web_split.key,))])
    assert routes_of(normalizer, "consul-router-web")[2] == [(web, "", 100)]


def test_a_chain_with_a_cycle_ends() -> None:
    normalizer = Normalizer()
    a = splitter("a", {"Weight": 100, "Service": "b"})
    b = splitter("b", {"Weight": 50, "Service": "a"}, {"Weight": 50, "ServiceSubset": "x"})
    normalizer.apply([SourceEvent("consul", upserts=(a, b))])
    assert routes_of(normalizer, "consul-splitter-a") == [
        [("a.service.consul", "", 5000), ("b.service.consul", "x", 5000)]
    ]
