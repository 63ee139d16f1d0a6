"""The consistency check before publishing (xds/consistency.py) and its attribution to files."""

from __future__ import annotations

from types import MappingProxyType

import pytest

import meshagent.xds.consistency as consistency
from meshagent.agent.publishing import inconsistency_diagnostics
from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.consistency import ConsistencyChecker, Inconsistency
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.translate import Translator
from tests.unit.normalize_helpers import upsert
from tests.xds_builders import cla, eds_cluster, http_listener, resource_set, route_config


def service_entry(name: str, port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.1}}]
"""


def mesh(*ports: int) -> MeshSnapshot:
    normalizer = Normalizer()
    texts = [service_entry(f"svc{p}", p) for p in ports]
    snapshot, problems = normalizer.apply([upsert(*texts, path="mesh/services.yaml")])
    assert [d for d in problems if d.severity == "error"] == []
    return snapshot


def reasons(found: list[Inconsistency]) -> list[str]:
    return [p.reason for p in found]


def test_two_http_ports_on_one_local_port_are_reported_not_lost() -> None:
    # Given services on ports 80 and 1080, with port 80 mapped to 2080 and an offset of 1000
    snapshot = mesh(80, 1080)
    proxy = ProxySpec(node_id="vm-1", port_offset=1000, port_overrides=((80, 2080),))
    resources = Translator().generate(snapshot, proxy)
    # (the mapping can hold only one listener of that name: the other is silently gone)
    assert list(resources.of(typeurls.LISTENER)) == ["127.0.0.1_2080"]

    found = ConsistencyChecker().check(resources)

    assert len(found) == 1
    assert "2 listeners are named 127.0.0.1_2080 and bind 127.0.0.1:2080" in found[0].reason
    assert "service ports 80, 1080" in found[0].reason
    # and the error names the files the two services came from, and the agent config
    [diagnostic] = inconsistency_diagnostics(found, snapshot, proxy)
    assert diagnostic.severity == "error"
    assert diagnostic.location.startswith("mesh/services.yaml:")
    assert "ServiceEntry/default/svc80" in diagnostic.reason
    assert "ServiceEntry/default/svc1080" in diagnostic.reason
    assert "outbound.port_offset" in diagnostic.reason


def test_listener_ports_outside_the_port_range_are_reported() -> None:
    snapshot = mesh(80, 8080)
    for offset, shown in ((-100, "127.0.0.1_-20 has no valid port"), (60000, "port 68080")):
        proxy = ProxySpec(node_id="vm-1", port_offset=offset)
        found = ConsistencyChecker().check(Translator().generate(snapshot, proxy))
        assert len(found) == 1, reasons(found)
        assert shown in found[0].reason
        assert "outbound.port_offset" in found[0].reason


def test_a_consistent_translation_passes() -> None:
    snapshot = mesh(80, 8080, 9090)
    resources = Translator().generate(snapshot, ProxySpec(node_id="vm-1", port_offset=15000))
    assert ConsistencyChecker().check(resources) == []


def test_missing_load_assignment_and_route_configuration_are_named() -> None:
    resources = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b", service_name="b-eds")],
        endpoints=[cla("a", 80)],
        listeners=[http_listener("l1", 8080, "r1"), http_listener("l2", 8081, "r2")],
        routes=[route_config("r1")],
    )

    found = ConsistencyChecker().check(resources)

    assert reasons(found) == [
        "cluster b (EDS) needs ClusterLoadAssignment b-eds, which is not generated",
        "listener l2 uses route configuration 'r2', which is not generated",
    ]
    assert found[0].resources == ((typeurls.CLUSTER, "b"), (typeurls.ENDPOINT, "b-eds"))


def test_two_listeners_on_one_address_and_port_are_reported() -> None:
    resources = resource_set(
        listeners=[http_listener("x", 8080, "r"), http_listener("y", 8080, "r")],
        routes=[route_config("r")],
    )
    found = ConsistencyChecker().check(resources)
    assert reasons(found) == ["listeners x, y all bind 127.0.0.1:8080"]


def test_duplicate_names_of_any_type_are_reported() -> None:
    twins = [eds_cluster("a"), eds_cluster("a", timeout_ms=5)]
    resources = ResourceSet.build({typeurls.CLUSTER: twins, typeurls.ENDPOINT: [cla("a", 80)]})
    found = ConsistencyChecker().check(resources)
    assert reasons(found) == ["2 cds resources are named a; only one would be served"]


def derived(base: ResourceSet, type_url: str, put: list[Resource], drop: list[str]) -> ResourceSet:
    mapping = dict(base.of(type_url))
    for name in drop:
        del mapping[name]
    mapping.update({r.name: r for r in put})
    by_type = {**base.by_type, type_url: MappingProxyType(mapping)}
    names = frozenset(drop) | {r.name for r in put}
    return ResourceSet.derive(base, by_type, {type_url: names})


def test_incremental_checks_agree_with_full_checks() -> None:
    # Given a checker that follows a chain of derived sets (the change hint path)
    first = resource_set(
        clusters=[eds_cluster("a"), eds_cluster("b")],
        endpoints=[cla("a", 80), cla("b", 81)],
        listeners=[http_listener("l1", 8080, "r1")],
        routes=[route_config("r1")],
    )
    steps = [
        (typeurls.ENDPOINT, [], ["b"]),  # b's CLA disappears: inconsistent
        (typeurls.ENDPOINT, [cla("b", 82)], []),  # and comes back
        (typeurls.CLUSTER, [], ["b"]),  # b goes; its CLA alone is harmless
        (typeurls.LISTENER, [http_listener("l2", 8080, "r2")], []),  # same port, no RDS
        (typeurls.ROUTE, [route_config("r2")], []),
        (typeurls.LISTENER, [], ["l2"]),
        (typeurls.CLUSTER, [eds_cluster("c")], []),
    ]
    incremental = ConsistencyChecker()
    current = first
    seen = [incremental.check(current)]
    for type_url, put, drop in steps:
        current = derived(current, type_url, put, drop)
        assert current.changed_since(current.base or first) is not None
        seen.append(incremental.check(current))
        assert seen[-1] == ConsistencyChecker().check(current)
    assert [len(s) for s in seen] == [0, 1, 0, 0, 2, 1, 0, 1]


def test_a_one_endpoint_change_decodes_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a checked translation of 50 services
    normalizer, translator, checker = Normalizer(), Translator(), ConsistencyChecker()
    proxy = ProxySpec(node_id="vm-1")
    texts = [service_entry(f"svc{p}", p) for p in range(8000, 8050)]
    snapshot, _ = normalizer.apply([upsert(*texts, path="mesh/services.yaml")])
    assert checker.check(translator.generate(snapshot, proxy)) == []
    decoded: list[str] = []
    original = consistency.eds_name
    monkeypatch.setattr(consistency, "eds_name", lambda r: decoded.append(r.name) or original(r))
    # When one endpoint moves
    moved = service_entry("svc8000", 8000).replace("10.0.0.1", "10.0.0.2")
    changed, _ = normalizer.apply([upsert(moved, path="mesh/services.yaml")])
    assert changed.changes is not None and changed.changes.endpoints == {"svc8000.example.com"}
    # Then the check passes without decoding a single cluster
    assert checker.check(translator.generate(changed, proxy)) == []
    assert decoded == []


def test_an_authorization_regex_envoy_would_reject_is_kept_back_and_traced() -> None:
    from meshagent.model import InboundPort, LocalWorkload

    # Given an AuthorizationPolicy whose principal suffix becomes a regex too large for Envoy
    policy = f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: huge, namespace: shop}}
spec:
  rules:
  - from:
    - source:
        principals: ["*{"/ns/shop/sa/x" * 3000}"]
"""
    snapshot, problems = Normalizer().apply([upsert(policy, path="mesh/authz.yaml")])
    assert [d for d in problems if d.severity == "error"] == []
    cart = LocalWorkload("cart", "shop", "cart", ports=(InboundPort(9080, 8080),))
    proxy = ProxySpec(node_id="vm", workloads=(cart,), inbound_address="127.0.0.1")

    found = ConsistencyChecker().check(Translator().generate(snapshot, proxy))

    assert len(found) == 1
    assert found[0].reason.startswith("listener inbound_127.0.0.1_9080: regex 'spiffe")
    assert "regex is too complex" in found[0].reason
    [diagnostic] = inconsistency_diagnostics(found, snapshot, proxy)
    assert "AuthorizationPolicy/shop/huge (mesh/authz.yaml:2)" in diagnostic.reason
