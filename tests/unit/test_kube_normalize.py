"""Kubernetes Services and EndpointSlices to the mesh model; precedence between sources."""

from __future__ import annotations

from typing import Any

import pytest

from meshagent.adapters.kubernetes import to_raw
from meshagent.model.source import SourceEvent
from meshagent.normalize.kubernetes import KubeMapping
from meshagent.normalize.kubernetes.services import port_protocol
from meshagent.normalize.normalizer import Normalizer
from tests.unit.normalize_helpers import raw as yaml_raw

HOST = "web.shop.svc.cluster.local"


def service(ports: list[dict[str, Any]] | None = None, rv: str = "1") -> dict[str, Any]:
    ports = ports or [{"name": "http-web", "port": 80, "targetPort": 8080}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": rv},
        "spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ports": ports},
    }


def ep(ip: str, *, ready: Any = True, serving: Any = None, terminating: Any = None,
       zone: str = "") -> dict[str, Any]:  # fmt: skip
    conditions = {"ready": ready, "serving": serving, "terminating": terminating}
    item: dict[str, Any] = {
        "addresses": [ip],
        "conditions": {k: v for k, v in conditions.items() if v is not None},
    }
    if zone:
        item["zone"] = zone
    return item


def slice_(
    name: str, *endpoints: dict[str, Any], port: int = 8080, rv: str = "2"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http-web", "port": port}],
        "endpoints": list(endpoints),
    }  # fmt: skip


def apply(normalizer: Normalizer, *objs: dict[str, Any], deletes: tuple[Any, ...] = ()) -> Any:
    event = SourceEvent("kubernetes", upserts=tuple(to_raw(o) for o in objs), deletes=deletes)
    return normalizer.apply([event])


def test_service_and_slices_join_into_one_host() -> None:
    normalizer = Normalizer(kubernetes=KubeMapping(region="eu"))
    snap, diags = apply(normalizer, slice_("web-1", ep("10.0.0.1", zone="a")), service())
    assert diags == []
    svc = snap.services[HOST]
    assert svc.addresses == ("10.96.0.7",) and svc.ports[0].protocol == "HTTP"
    assert svc.ports[0].number == 80 and svc.ports[0].target_port == 8080
    (endpoint,) = snap.endpoints[HOST]
    assert endpoint.address == "10.0.0.1" and endpoint.ports == (("http-web", 8080),)
    assert endpoint.locality == "eu/a"
    assert ("topology.kubernetes.io/zone", "a") in endpoint.labels
    snap, _ = apply(normalizer, slice_("web-2", ep("10.0.0.2")))
    assert [e.address for e in snap.endpoints[HOST]] == ["10.0.0.1", "10.0.0.2"]
    snap, _ = apply(normalizer, deletes=(("kubernetes", "EndpointSlice", "shop", "web-1"),))
    assert [e.address for e in snap.endpoints[HOST]] == ["10.0.0.2"]
    snap, _ = apply(normalizer, deletes=(("kubernetes", "Service", "shop", "web"),))
    assert HOST not in snap.services and HOST not in snap.endpoints


def test_readiness_and_the_terminating_fallback() -> None:
    normalizer = Normalizer()
    both = slice_(
        "web-1",
        ep("10.0.0.1"),
        ep("10.0.0.2", ready=False),
        ep("10.0.0.3", ready=False, serving=True, terminating=True),
        ep("10.0.0.4", ready=False, serving=False, terminating=True),
    )
    snap, _ = apply(normalizer, service(), both)
    assert [e.address for e in snap.endpoints[HOST]] == ["10.0.0.1"]
    only_terminating = slice_("web-1", *both["endpoints"][1:], rv="3")
    snap, _ = apply(normalizer, only_terminating)
    assert [e.address for e in snap.endpoints[HOST]] == ["10.0.0.3"]


def test_a_new_resource_version_alone_changes_nothing() -> None:
    normalizer = Normalizer()
    snap, _ = apply(normalizer, service(), slice_("web-1", ep("10.0.0.1")))
    version = snap.version
    snap, _ = apply(normalizer, service(rv="9"), slice_("web-1", ep("10.0.0.1"), rv="10"))
    assert snap.version == version


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        ({"name": "http", "port": 1}, "HTTP"),
        ({"name": "grpc-api", "port": 1}, "GRPC"),
        ({"name": "tcp-db", "port": 1}, "TCP"),
        ({"name": "web", "port": 1}, "TCP"),
        ({"name": "x", "appProtocol": "http2", "port": 1}, "HTTP2"),
        ({"name": "http", "appProtocol": "kubernetes.io/h2c", "port": 1}, "HTTP2"),
        ({"port": 1}, "TCP"),
    ],
)
def test_port_protocol_detection(port: dict[str, Any], protocol: str) -> None:
    assert port_protocol(port) == protocol


def test_unnamed_port_udp_and_external_name() -> None:
    normalizer = Normalizer()
    ports: list[dict[str, Any]] = [{"port": 53, "protocol": "UDP"}, {"port": 9000}]
    unnamed = slice_("web-1", ep("10.0.0.1"))
    unnamed["ports"] = [{"port": 9001}]
    snap, diags = apply(normalizer, service(ports), unnamed)
    assert [d.field for d in diags] == ["spec.ports[0].protocol"]
    assert diags[0].severity == "warning" and diags[0].location == "resourceVersion 1"
    (endpoint,) = snap.endpoints[HOST]
    assert endpoint.port_for(snap.services[HOST].ports[0]) == 9001
    external = service()
    external["spec"] = {"type": "ExternalName", "externalName": "db.example.com"}
    snap, _ = apply(normalizer, external)
    assert snap.services[HOST].resolution.value == "DNS"
    assert [e.address for e in snap.endpoints[HOST]] == ["db.example.com"]


SE = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http-web, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 192.0.2.1}}]
"""


@pytest.mark.parametrize(
    ("precedence", "winner"), [("kubernetes", "10.0.0.1"), ("files", "192.0.2.1")]
)
def test_precedence_against_files_and_the_conflict_names_both(precedence: str, winner: str) -> None:
    normalizer = Normalizer(kubernetes=KubeMapping(precedence=precedence))
    normalizer.apply([SourceEvent("files", upserts=(yaml_raw(SE),))])
    snap, diags = apply(normalizer, service(), slice_("web-1", ep("10.0.0.1")))
    assert [e.address for e in snap.endpoints[HOST]] == [winner]
    (warning,) = [d for d in diags if d.severity == "warning"]
    loser, owner = (
        ("files", "kubernetes") if precedence == "kubernetes" else ("kubernetes", "files")
    )
    assert warning.source == loser and f"already defined by {owner}" in warning.reason
    assert f"precedence over {loser}" in warning.reason


def test_kubernetes_ranks_before_consul() -> None:
    from meshagent.normalize.consul import ConsulMapping
    from tests.unit.test_consul_normalize import instance
    from tests.unit.test_consul_normalize import service as consul_service

    mapping = ConsulMapping(host_pattern="{name}.shop.svc.cluster.local", precedence="consul")
    normalizer = Normalizer(consul=mapping)
    consul_event = SourceEvent(
        "consul", upserts=(consul_service("web", [instance("a", "10.9.9.9")]),)
    )
    normalizer.apply([consul_event])
    snap, diags = apply(normalizer, service(), slice_("web-1", ep("10.0.0.1")))
    assert [e.address for e in snap.endpoints[HOST]] == ["10.0.0.1"]
    assert any(d.source == "consul" and "kubernetes" in d.reason for d in diags)
