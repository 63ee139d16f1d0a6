"""The Translator's caches: unchanged model objects yield the very same Resource objects,
and incremental results always equal a fresh translation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshagent.errors import ConfigError
from meshagent.model import (
    Destination,
    DestinationRule,
    Endpoint,
    HttpRoute,
    LoadBalancer,
    MeshSnapshot,
    ProxySpec,
    Resolution,
    Service,
    ServicePort,
    TcpBinding,
    TrafficPolicy,
    VirtualService,
    WeightedDestination,
    frozen_map,
)
from meshagent.xds import typeurls
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.translate import TranslationError, Translator, generate
from meshagent.xds.translate.context import Context
from tests.unit.translate_inputs import load_case, resources_as_dict

TESTDATA = Path(__file__).parent / "testdata" / "translate"
PROXY = ProxySpec(node_id="vm-1")


def _service(i: int) -> Service:
    return Service(
        host=f"svc{i}.ns.svc.cluster.local",
        namespace="ns",
        ports=(ServicePort(80, "http", "HTTP"), ServicePort(9000, "tcp", "TCP")),
        resolution=Resolution.STATIC,
    )


def _mesh(count: int = 5) -> MeshSnapshot:
    services = [_service(i) for i in range(count)]
    return MeshSnapshot(
        services=frozen_map({s.host: s for s in services}),
        endpoints=frozen_map(
            {
                s.host: (Endpoint(f"10.0.{i}.1"), Endpoint(f"10.0.{i}.2"))
                for i, s in enumerate(services)
            }
        ),
    )


def _replace(snapshot: MeshSnapshot, **changes: object) -> MeshSnapshot:
    return dataclasses.replace(snapshot, version=snapshot.version + 1, **changes)  # type: ignore[arg-type]


def _identical_except(
    before: ResourceSet, after: ResourceSet, changed: set[tuple[str, str]]
) -> None:
    for type_url in typeurls.PUSH_ORDER:
        for name, resource in after.of(type_url).items():
            if (type_url, name) in changed:
                assert resource.version != before.of(type_url)[name].version, name
            else:
                assert resource is before.of(type_url)[name], (type_url, name)


def _same_as_fresh(result: ResourceSet, snapshot: MeshSnapshot, proxy: ProxySpec = PROXY) -> None:
    assert resources_as_dict(result) == resources_as_dict(generate(snapshot, proxy))


def test_one_endpoint_change_rebuilds_only_its_load_assignment() -> None:
    # given a translated mesh
    translator = Translator()
    snapshot = _mesh()
    before = translator.generate(snapshot, PROXY)
    # when one endpoint of one service changes (everything else the very same objects)
    host = "svc2.ns.svc.cluster.local"
    endpoints = dict(snapshot.endpoints)
    endpoints[host] = (Endpoint("10.0.2.1"), Endpoint("10.0.2.99"))
    changed = _replace(snapshot, endpoints=frozen_map(endpoints))
    after = translator.generate(changed, PROXY)
    # then only that service's assignments changed; every other resource is the same object
    _identical_except(
        before,
        after,
        {(typeurls.ENDPOINT, f"outbound|{p}||{host}") for p in (80, 9000)},
    )
    _same_as_fresh(after, changed)


def test_unchanged_snapshot_returns_the_same_resources() -> None:
    translator = Translator()
    snapshot = _mesh()
    before = translator.generate(snapshot, PROXY)
    after = translator.generate(_replace(snapshot), PROXY)
    _identical_except(before, after, set())


def test_destination_rule_change_rebuilds_only_that_hosts_clusters() -> None:
    translator = Translator()
    snapshot = _mesh()
    before = translator.generate(snapshot, PROXY)
    host = "svc1.ns.svc.cluster.local"
    rule = DestinationRule(
        "r", "ns", host, traffic_policy=TrafficPolicy(load_balancer=LoadBalancer(simple="RANDOM"))
    )
    changed = _replace(snapshot, destination_rules=frozen_map({host: rule}))
    after = translator.generate(changed, PROXY)
    _identical_except(
        before,
        after,
        {(typeurls.CLUSTER, f"outbound|{p}||{host}") for p in (80, 9000)},
    )
    _same_as_fresh(after, changed)


def test_virtual_service_change_rebuilds_routes_only() -> None:
    translator = Translator()
    snapshot = _mesh()
    before = translator.generate(snapshot, PROXY)
    host = "svc3.ns.svc.cluster.local"
    vs = VirtualService(
        "vs",
        "ns",
        (host,),
        http=(
            HttpRoute(route=(WeightedDestination(Destination(host), weight=100),), timeout_ms=5),
        ),
    )
    changed = _replace(snapshot, virtual_services=frozen_map({"ns/vs": vs}))
    after = translator.generate(changed, PROXY)
    _identical_except(before, after, {(typeurls.ROUTE, "80")})
    _same_as_fresh(after, changed)


def test_removed_service_disappears_and_added_one_appears() -> None:
    translator = Translator()
    snapshot = _mesh(3)
    translator.generate(snapshot, PROXY)
    services = dict(snapshot.services)
    del services["svc0.ns.svc.cluster.local"]
    services["new.ns.svc.cluster.local"] = dataclasses.replace(
        _service(0), host="new.ns.svc.cluster.local"
    )
    changed = _replace(snapshot, services=frozen_map(services))
    after = translator.generate(changed, PROXY)
    assert "outbound|80||svc0.ns.svc.cluster.local" not in after.of(typeurls.CLUSTER)
    assert "outbound|80||new.ns.svc.cluster.local" in after.of(typeurls.CLUSTER)
    _same_as_fresh(after, changed)


@pytest.mark.parametrize("case", sorted(TESTDATA.glob("*.input.yaml")), ids=lambda p: p.name[:2])
def test_proxy_change_gives_a_fresh_result(case: Path) -> None:
    snapshot, proxy = load_case(case)
    translator = Translator()
    translator.generate(snapshot, proxy)
    other = dataclasses.replace(proxy, port_offset=15000, namespace="elsewhere")
    _same_as_fresh(translator.generate(snapshot, other), snapshot, other)


def test_tcp_binding_on_an_http_listener_address_is_a_config_error_naming_the_generator() -> None:
    snapshot = _mesh(1)
    proxy = ProxySpec(
        node_id="vm-1",
        tcp_bindings=(TcpBinding("svc0.ns.svc.cluster.local", 9000, "127.0.0.1", 80),),
    )
    with pytest.raises(ConfigError, match="tcp-listeners"):
        generate(snapshot, proxy)


class _Broken:
    name = "broken"
    type_url = typeurls.CLUSTER

    def generate(self, ctx: Context) -> list[Resource]:
        raise KeyError("boom")


def test_a_failing_generator_is_named() -> None:
    with pytest.raises(TranslationError, match="broken"):
        Translator(make_generators=lambda: [_Broken()]).generate(_mesh(1), PROXY)


def test_rebuilt_but_equal_service_changes_nothing_but_its_endpoints() -> None:
    # given a translated mesh, when the normalizer rebuilds one Service with equal contents
    # (as it does when a ServiceEntry's endpoints change) and changes one endpoint
    translator = Translator()
    snapshot = _mesh()
    before = translator.generate(snapshot, PROXY)
    host = "svc4.ns.svc.cluster.local"
    services = dict(snapshot.services)
    services[host] = dataclasses.replace(services[host])
    endpoints = dict(snapshot.endpoints)
    endpoints[host] = (Endpoint("10.0.4.1"), Endpoint("10.0.4.77"))
    changed = _replace(snapshot, services=frozen_map(services), endpoints=frozen_map(endpoints))
    after = translator.generate(changed, PROXY)
    # then only its load assignments are new
    _identical_except(
        before, after, {(typeurls.ENDPOINT, f"outbound|{p}||{host}") for p in (80, 9000)}
    )
    _same_as_fresh(after, changed)


def test_changed_service_port_is_picked_up_incrementally() -> None:
    translator = Translator()
    snapshot = _mesh()
    translator.generate(snapshot, PROXY)
    host = "svc0.ns.svc.cluster.local"
    services = dict(snapshot.services)
    services[host] = dataclasses.replace(
        services[host], ports=(ServicePort(8080, "http", "HTTP2"),)
    )
    changed = _replace(snapshot, services=frozen_map(services))
    after = translator.generate(changed, PROXY)
    assert f"outbound|8080||{host}" in after.of(typeurls.CLUSTER)
    assert f"outbound|80||{host}" not in after.of(typeurls.CLUSTER)
    assert "8080" in after.of(typeurls.ROUTE)
    _same_as_fresh(after, changed)
