"""One WorkloadEntry change, from the normalizer to what each stream kind sends Envoy: one EDS
response carrying the changed service's ClusterLoadAssignments and nothing else (no CDS, LDS,
RDS; not every cluster's endpoints), as Istio's incremental EDS push."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds.delta import DeltaStream
from meshagent.xds.resources import ResourceSet
from meshagent.xds.sotw import SotwStream
from meshagent.xds.translate import Translator
from meshagent.xds.typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE

PROXY = ProxySpec(node_id="vm-1", namespace="bench")
SERVICES = 6
PORTS = [
    {"number": 80, "name": "http", "protocol": "HTTP"},
    {"number": 9090, "name": "grpc", "protocol": "GRPC"},
    {"number": 3306, "name": "tcp", "protocol": "TCP"},
]
Response = DeltaDiscoveryResponse | DiscoveryResponse


def _raw(kind: str, name: str, spec: dict[str, Any]) -> RawResource:
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "bench"},
        "spec": spec,
    }
    prov = Provenance("files", f"mesh.yaml:{name}", kind, "bench", name)
    return RawResource("files", kind, "networking.istio.io/v1", "bench", name, body, prov)


def service_entry(i: int) -> RawResource:
    spec = {
        "hosts": [f"svc-{i}.bench.example"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": PORTS,
        "workloadSelector": {"labels": {"app": f"svc-{i}"}},
    }
    return _raw("ServiceEntry", f"svc-{i}", spec)


def workload_entry(i: int, address: str) -> RawResource:
    spec = {"address": address, "labels": {"app": f"svc-{i}"}}
    return _raw("WorkloadEntry", f"svc-{i}", spec)


def mesh() -> tuple[Normalizer, Translator, ResourceSet]:
    normalizer, translator = Normalizer(), Translator()
    upserts = [service_entry(i) for i in range(SERVICES)]
    upserts += [workload_entry(i, "127.0.0.1") for i in range(SERVICES)]
    snapshot, _ = normalizer.apply([SourceEvent("files", upserts=tuple(upserts))])
    return normalizer, translator, translator.generate(snapshot, PROXY)


def moved(normalizer: Normalizer, translator: Translator, i: int) -> ResourceSet:
    event = SourceEvent("files", upserts=(workload_entry(i, "127.0.0.2"),))
    snapshot, _ = normalizer.apply([event])
    return translator.generate(snapshot, PROXY)


def delta_connected(first: ResourceSet) -> DeltaStream:
    """Envoy's delta subscriptions (CDS, LDS wildcard; EDS, RDS by name), every push ACKed."""
    stream = DeltaStream(node_id="vm-1")
    stream.on_snapshot(1, first)
    requests = [
        DeltaDiscoveryRequest(type_url=CLUSTER),
        DeltaDiscoveryRequest(type_url=LISTENER),
        DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=list(first.of(ENDPOINT))),
        DeltaDiscoveryRequest(type_url=ROUTE, resource_names_subscribe=list(first.of(ROUTE))),
    ]
    for request in requests:
        for response in stream.on_request(request):
            ack = DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
            assert stream.on_request(ack) == []
    return stream


def sotw_connected(first: ResourceSet) -> SotwStream:
    """The same over state of the world."""
    stream = SotwStream(node_id="vm-1")
    stream.on_snapshot(1, first)
    subscriptions = {
        CLUSTER: [],
        LISTENER: [],
        ENDPOINT: sorted(first.of(ENDPOINT)),
        ROUTE: sorted(first.of(ROUTE)),
    }
    for type_url, names in subscriptions.items():
        subscribe = DiscoveryRequest(type_url=type_url, resource_names=names)
        for response in stream.on_request(subscribe):
            ack = DiscoveryRequest(
                type_url=type_url,
                resource_names=names,
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
            assert stream.on_request(ack) == []
    return stream


def cla_names(response: Response) -> list[str]:
    out = []
    for entry in response.resources:
        packed = entry.resource if isinstance(response, DeltaDiscoveryResponse) else entry
        assignment = endpoint_pb2.ClusterLoadAssignment()
        packed.Unpack(assignment)
        out.append(assignment.cluster_name)
    return sorted(out)


@pytest.mark.parametrize("kind", ["delta", "sotw"])
def test_a_workload_entry_move_sends_only_its_services_endpoints(kind: str) -> None:
    # given Envoy holding every resource of a mesh of ServiceEntries selecting WorkloadEntries
    normalizer, translator, first = mesh()
    assert len(first.of(ENDPOINT)) == SERVICES * len(PORTS)
    stream = delta_connected(first) if kind == "delta" else sotw_connected(first)
    # when one WorkloadEntry moves
    after = moved(normalizer, translator, 4)
    responses: list[Response] = list(stream.on_snapshot(2, after))
    # then one EDS response carries that service's clusters' endpoints, and nothing else goes
    [eds] = responses
    assert eds.type_url == ENDPOINT
    expected = sorted(n for n in after.of(ENDPOINT) if n.endswith("|svc-4.bench.example"))
    assert len(expected) == len(PORTS)
    assert cla_names(eds) == expected
    assert not getattr(eds, "removed_resources", [])
