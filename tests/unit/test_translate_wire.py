"""Serialized-by-hand clusters and load assignments equal protobuf's own serialization."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.model import Endpoint, Resolution, Service, ServicePort
from meshagent.xds.translate.clusters import ClusterInputs, ClusterTemplates, build_cluster
from meshagent.xds.translate.endpoint_wire import EndpointEncoder
from meshagent.xds.translate.endpoints import build_load_assignment
from meshagent.xds.translate.policy import ClusterPlan, plan_clusters
from meshagent.xds.wire import varint
from tests.unit.translate_inputs import load_case

TESTDATA = Path(__file__).parent / "testdata" / "translate"
CASES = sorted(TESTDATA.glob("*.input.yaml"))


def _plans_and_endpoints(path: Path) -> list[tuple[ClusterPlan, tuple[Endpoint, ...]]]:
    snapshot, _proxy = load_case(path)
    out = []
    for host, service in snapshot.services.items():
        endpoints = snapshot.endpoints.get(host, ())
        for plan in plan_clusters(service, snapshot.destination_rule_for(host)):
            out.append((plan, endpoints))
    return out


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_wire_encodings_match_protobuf(path: Path) -> None:
    templates, encoder = ClusterTemplates(), EndpointEncoder()
    for plan, endpoints in _plans_and_endpoints(path):
        inputs = ClusterInputs(endpoints=endpoints)
        expected = build_cluster(plan, inputs).SerializeToString(deterministic=True)
        assert templates.serialize(plan, inputs) == expected
        assert templates.serialize(plan, inputs) == expected
        reference = build_load_assignment(plan, endpoints)
        encoded = encoder.load_assignment(plan, endpoints)
        assert encoded == reference.SerializeToString(deterministic=True)


def test_endpoint_encoding_covers_localities_ports_health_and_long_names() -> None:
    service = Service(
        host="svc.ns.svc.cluster.local",
        namespace="ns",
        ports=(ServicePort(80, "http", "HTTP", target_port=8080),),
        resolution=Resolution.STATIC,
    )
    endpoints = (
        Endpoint("10.0.0.2", locality="eu/a/1", weight=300, labels=(("v", "1"), ("z", "2"))),
        Endpoint("x" * 200 + ".example.com", ports=(("http", 9090),), healthy=False),
        Endpoint("10.0.0.1", locality="eu/b"),
        Endpoint("10.0.0.3"),
    )
    (plan,) = plan_clusters(service, None)
    reference = build_load_assignment(plan, endpoints)
    encoded = EndpointEncoder().load_assignment(plan, endpoints)
    assert encoded == reference.SerializeToString(deterministic=True)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32 - 1])
def test_varint(value: int) -> None:
    from google.protobuf import wrappers_pb2

    encoded = wrappers_pb2.UInt64Value(value=value).SerializeToString()
    assert (b"\x08" + varint(value) if value else b"") == encoded
