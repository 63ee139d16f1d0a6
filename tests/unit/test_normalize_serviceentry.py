"""ServiceEntry and WorkloadEntry validation and conversion."""

from __future__ import annotations

from meshagent.model.services import Resolution, Workload
from meshagent.normalize.convert import ConvertedServiceEntry, convert
from tests.unit.normalize_helpers import diagnostics, errors, raw, warnings

HEAD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
  namespace: data
spec:
"""

GOOD = (
    HEAD
    + """\
  hosts:
  - db.example.com
  - db
  addresses: [10.1.0.0/16]
  ports:
  - number: 5432
    name: tls-pg
    protocol: tls
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 10.1.0.5
    ports:
      http: 9090
    labels:
      version: v1
    weight: 3
    locality: us-west/zone1
  - address: 10.1.0.6
"""
)


def _se(text: str) -> ConvertedServiceEntry:
    converted, problems = convert(
        raw(text), domain_suffix="example.local", default_namespace="default"
    )
    assert not problems and isinstance(converted, ConvertedServiceEntry)
    return converted


def test_valid_service_entry_converts_one_service_per_host() -> None:
    assert diagnostics(GOOD) == []
    se = _se(GOOD)
    assert [s.host for s in se.services] == ["db.example.com", "db.data.svc.example.local"]
    service = se.services[0]
    assert service.resolution is Resolution.STATIC and service.mesh_external is False
    assert [(p.number, p.name, p.protocol, p.target_port) for p in service.ports] == [
        (5432, "tls-pg", "TLS", None),
        (80, "http", "HTTP", 8080),
    ]
    assert service.addresses == ("10.1.0.0/16",)
    first, second = se.endpoints
    assert (first.address, first.ports, first.weight, first.locality) == (
        "10.1.0.5",
        (("http", 9090),),
        3,
        "us-west/zone1",
    )
    assert first.labels == (("version", "v1"),)
    assert second.weight == 1  # the default
    assert se.selector is None


def test_defaults_are_mesh_external_and_resolution_none() -> None:
    text = HEAD + "  hosts: [api.example.com]\n  ports:\n  - {number: 443, name: https}\n"
    assert errors(text) == []
    service = _se(text).services[0]
    assert service.mesh_external is True and service.resolution is Resolution.NONE


def test_hosts_are_required_and_ports_are_not() -> None:
    # Istio's ValidateServiceEntry requires hosts, not ports.
    assert errors(HEAD + "  resolution: NONE\n") == [("mesh.yaml:6", "spec.hosts")]
    assert errors(HEAD + "  hosts: [a.example.com]\n") == []


def test_port_names_and_numbers_must_be_unique() -> None:
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports:
  - {number: 80, name: http}
  - {number: 80, name: http}
"""
    )
    assert errors(text) == [
        ("mesh.yaml:10", "spec.ports[1].name"),
        ("mesh.yaml:10", "spec.ports[1].number"),
    ]


def test_static_endpoints_must_be_ips_or_unix_sockets() -> None:
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - address: 10.0.0.1
  - address: unix:///var/run/a.sock
  - address: a.example.com
"""
    )
    assert errors(text) == [("mesh.yaml:13", "spec.endpoints[2].address")]
    # a unix socket endpoint serves exactly one port
    two_ports = text.replace(
        "[{number: 80, name: http}]", "[{number: 80, name: http}, {number: 81, name: b}]"
    )
    assert ("mesh.yaml:8", "spec.ports") in errors(two_ports)


def test_dns_resolution_with_wildcard_host_needs_endpoints() -> None:
    text = (
        HEAD
        + """\
  hosts: ["*.example.com"]
  ports: [{number: 80, name: http}]
  resolution: DNS
"""
    )
    assert errors(text) == [("mesh.yaml:7", "spec.hosts[0]")]


def test_workload_selector_and_endpoints_are_mutually_exclusive() -> None:
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector:
    labels: {app: a}
  endpoints:
  - address: 10.0.0.1
"""
    )
    assert errors(text) == [("mesh.yaml:10", "spec.workloadSelector")]


def test_bad_enum_port_range_and_unknown_endpoint_port() -> None:
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports: [{number: 0, name: http}]
  resolution: MAGIC
"""
    )
    assert errors(text) == [
        ("mesh.yaml:8", "spec.ports[0].number"),
        ("mesh.yaml:9", "spec.resolution"),
    ]
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - address: 10.0.0.1
    ports: {grpc: 9000}
"""
    )
    assert errors(text) == [("mesh.yaml:12", "spec.endpoints[0].ports.grpc")]


def test_subject_alt_names_is_a_warning() -> None:
    text = (
        HEAD
        + """\
  hosts: [a.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  subjectAltNames: [spiffe://a]
"""
    )
    assert errors(text) == [] and warnings(text) == ["spec.subjectAltNames"]


WE = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vm-1
  namespace: data
spec:
"""


def test_workload_entry_converts() -> None:
    text = (
        WE
        + """\
  address: 10.2.0.7
  ports: {http: 8080}
  labels: {app: db}
  serviceAccount: db-sa
  network: vpc1
"""
    )
    assert diagnostics(text) == []
    workload, _ = convert(raw(text), domain_suffix="cluster.local", default_namespace="x")
    assert workload == Workload(
        name="vm-1",
        namespace="data",
        address="10.2.0.7",
        ports=(("http", 8080),),
        labels=(("app", "db"),),
        weight=1,
        network="vpc1",
        service_account="db-sa",
        provenance=workload.provenance if isinstance(workload, Workload) else None,
    )


def test_workload_entry_address_is_required_unless_network_is_set() -> None:
    assert errors(WE + "  labels: {app: db}\n") == [("mesh.yaml:6", "spec.address")]
    assert errors(WE + "  network: vpc2\n") == []


def test_workload_entry_wrong_types() -> None:
    text = WE + "  address: 10.0.0.1\n  ports: {http: '80'}\n  weight: -1\n"
    assert errors(text) == [("mesh.yaml:8", "spec.ports.http"), ("mesh.yaml:9", "spec.weight")]


def test_port_without_protocol_is_tcp_with_a_warning() -> None:
    text = HEAD + "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: web}\n"
    assert errors(text) == []
    assert warnings(text) == ["spec.ports[0].protocol"]
    assert _se(text).services[0].ports[0].protocol == "TCP"


def test_unknown_protocol_is_an_error() -> None:
    text = HEAD + "  hosts: [a.example.com]\n  ports:\n  - {number: 80, name: a, protocol: SMTP}\n"
    assert errors(text) == [("mesh.yaml:9", "spec.ports[0].protocol")]
