"""The fast encoders (meshagent/xds/translate/encode/) give, byte for byte, the deterministic
serialization of the protobuf builders that define each resource's shape.

Three layers of proof, each of which fails when an encoder drifts by one byte:
- the wire primitives against protobuf's own encoding;
- each encoder called directly against its builder, over the golden fixtures and over
  generated inputs (subsets, localities, weights, ports, TLS modes, IPv6, non-ASCII and
  long names, empty lists, large counts, lengths at the varint boundaries);
- whole translations (the golden fixtures and generated meshes) in which every call the
  translator makes to an encoder is checked against the builder with the same arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import wrappers_pb2

from meshagent.model import Endpoint, MeshSnapshot, ProxySpec, Resolution, Service, ServicePort
from meshagent.xds.translate import Translator, encode, outbound_generators
from meshagent.xds.translate.clusters import ClusterInputs, build_cluster
from meshagent.xds.translate.context import MeshIndex, changes_between
from meshagent.xds.translate.encode import (
    ClusterTemplates,
    EndpointEncoder,
    WireVirtualHost,
    route_configuration_bytes,
    wire_virtual_host,
)
from meshagent.xds.translate.encode.wire import bytes_field, split_around, string_field
from meshagent.xds.translate.endpoints import build_load_assignment, build_prioritized_assignment
from meshagent.xds.translate.policy import ClusterPlan, plan_clusters
from meshagent.xds.translate.route_action import RouteScope
from meshagent.xds.translate.routes import (
    build_route_configuration,
    build_virtual_host,
    catch_all_virtual_host,
    domains_for,
)
from meshagent.xds.wire import varint
from tests.unit.translate_inputs import build, load_case, snapshot_from

TESTDATA = Path(__file__).parent / "testdata" / "translate"
CASES = sorted(TESTDATA.glob("*.input.yaml"))
SEEDS = range(12)
PROXIES = [
    None,
    ProxySpec(node_id="a", locality="us-east/zone-a"),
    ProxySpec(node_id="b", locality="eu-west/zone-c/rack-1"),
]


def _serialized(message: Any) -> bytes:
    encoded: bytes = message.SerializeToString(deterministic=True)
    return encoded


# --- wire primitives ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**32 - 1, 2**63])
def test_varint(value: int) -> None:
    encoded = _serialized(wrappers_pb2.UInt64Value(value=value))
    assert (b"\x08" + varint(value) if value else b"") == encoded


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 300, 16383, 16384, 20000])
def test_bytes_field_lengths(size: int) -> None:
    data = b"x" * size
    for number in (1, 2, 15, 16, 300):
        tag = number << 3 | 2
        assert bytes_field(number, data) == varint(tag) + varint(size) + data


@pytest.mark.parametrize("text", ["", "a", "é" * 63, "é" * 64, "x" * 127, "x" * 128, "名前"])
def test_string_field(text: str) -> None:
    # As a repeated field, which protobuf writes even when empty (a singular one it would omit)
    assert string_field(2, text) == _serialized(route_components_pb2.VirtualHost(domains=[text]))


def test_split_around_finds_the_string_and_refuses_the_rest() -> None:
    head, tail = split_around(lambda f: _serialized(wrappers_pb2.StringValue(value=f * 3)), 3)
    assert head + b"abc" + tail == _serialized(wrappers_pb2.StringValue(value="abc"))
    with pytest.raises(ValueError):
        split_around(lambda f: f.encode() * 2, 1)  # the fill shows twice
    with pytest.raises(ValueError):
        split_around(lambda f: b"x", 0)


# --- inputs ------------------------------------------------------------------------------


def _address(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"fd00:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}"
    if kind == 1:  # DNS names across the one- and two-byte length boundaries
        size = rng.choice([1, 60, 100, 110, 112, 113, 114, 115, 120, 126, 127, 128, 200, 253])
        return ("h" * size)[:-1] + "z"
    if kind == 2:
        return f"näme-{rng.randrange(100)}.example"  # never from the normalizer; still exact
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"


LOCALITIES = ["", "", "us-east", "us-east/zone-a", "us-east/zone-b", "eu-west/zone-c/rack-1", "é/ü"]


def _endpoint(rng: random.Random, port_names: Sequence[str]) -> Endpoint:
    ports: tuple[tuple[str, int], ...] = ()
    if rng.random() < 0.3:
        ports = tuple((n, rng.choice([1, 127, 128, 16383, 16384, 65535])) for n in port_names)
    return Endpoint(
        _address(rng),
        ports=ports[: rng.randrange(len(ports) + 1)],
        labels=(("version", rng.choice(["v1", "v2", "v3"])),),
        weight=rng.choice([1, 1, 2, 127, 128, 2**32 - 1]),
        locality=rng.choice(LOCALITIES),
        healthy=rng.random() > 0.2,
    )


def _service(rng: random.Random, index: int) -> Service:
    protocols = ["HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS"]
    count = rng.randint(1, 3)
    ports = tuple(
        ServicePort(
            rng.choice([80, 443, 8080, 9080, 16384]) + i,
            f"p{i}",
            rng.choice(protocols),
            target_port=rng.choice([None, None, 8443, 20000]),
        )
        for i in range(count)
    )
    host = f"svc-{index}.ns-{rng.randrange(3)}.svc.cluster.local"
    if rng.random() < 0.1:
        host = "s" * rng.choice([100, 120, 130]) + f"-{index}.example"
    return Service(host=host, namespace="ns", ports=ports, resolution=Resolution.STATIC)


def _direct_cases(seed: int) -> Iterator[tuple[ClusterPlan, tuple[Endpoint, ...]]]:
    rng = random.Random(seed)
    for index in range(20):
        service = _service(rng, index)
        names = [p.name for p in service.ports]
        count = rng.choice([0, 1, 2, 5, 10, 40, 1000 if index == 0 else 3])
        endpoints = tuple(_endpoint(rng, names) for _ in range(count))
        if count and rng.random() < 0.3:
            # Repeated addresses, one in another port order than the full sort's: the
            # encoder's by-address order must notice and start over
            first = endpoints[0]
            endpoints += (
                first,
                replace(first, ports=((names[0], 9),)),
                replace(first, ports=((names[0], 1),)),
            )
        for plan in plan_clusters(service, None):
            yield plan, endpoints


def _case_plans(path: Path) -> Iterator[tuple[ClusterPlan, tuple[Endpoint, ...]]]:
    snapshot, _proxy = load_case(path)
    for host, service in snapshot.services.items():
        endpoints = snapshot.endpoints.get(host, ())
        for plan in plan_clusters(service, snapshot.destination_rule_for(host)):
            yield plan, endpoints


# --- endpoints ---------------------------------------------------------------------------


def _check_load_assignment(
    encoder: EndpointEncoder, plan: ClusterPlan, endpoints: tuple[Endpoint, ...]
) -> None:
    expected = _serialized(build_load_assignment(plan, endpoints))
    assert encoder.load_assignment(plan, endpoints) == expected, plan.name


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_load_assignments_of_the_golden_cases(path: Path) -> None:
    encoder = EndpointEncoder()
    for plan, endpoints in _case_plans(path):
        _check_load_assignment(encoder, plan, endpoints)


@pytest.mark.parametrize("seed", SEEDS)
def test_load_assignments_of_generated_endpoints(seed: int) -> None:
    encoder = EndpointEncoder()  # shared: its caches must hold across clusters
    for plan, endpoints in _direct_cases(seed):
        _check_load_assignment(encoder, plan, endpoints)
        _check_load_assignment(encoder, plan, endpoints)  # now from the caches


@pytest.mark.parametrize("address_length", [1, 40, 80, 100, 110, 112, 113, 114, 115, 120, 130])
@pytest.mark.parametrize("port", [80, 20000])
def test_load_assignment_at_length_boundaries(address_length: int, port: int) -> None:
    service = Service(
        host="svc.ns.svc.cluster.local",
        namespace="ns",
        ports=(ServicePort(port, "http", "HTTP"),),
        resolution=Resolution.STATIC,
    )
    address = ("a" * address_length)[:-1] + "z"
    endpoints = (
        Endpoint(address, labels=(("version", "v1"),), weight=3),
        Endpoint(address + "b", healthy=False),
        Endpoint("10.0.0.1", ports=(("http", 16384),)),
    )
    (plan,) = plan_clusters(service, None)
    _check_load_assignment(EndpointEncoder(), plan, endpoints)


def _groups(
    rng: random.Random, endpoints: tuple[Endpoint, ...]
) -> list[tuple[Sequence[Endpoint], bool]]:
    pool = list(endpoints)
    rng.shuffle(pool)  # the translator passes groups in its own order: kept as given
    groups: list[tuple[Sequence[Endpoint], bool]] = []
    while pool:
        size = rng.randint(0, len(pool))
        groups.append((pool[:size], rng.random() < 0.5))
        pool = pool[size:]
        if rng.random() < 0.2:
            groups.append(([], True))  # an empty group takes no priority
    return groups


@pytest.mark.parametrize("seed", SEEDS)
def test_prioritized_assignments_of_generated_groups(seed: int) -> None:
    rng = random.Random(seed)
    encoder = EndpointEncoder()
    for plan, endpoints in _direct_cases(seed):
        groups = _groups(rng, endpoints)
        weights = None
        if rng.random() < 0.5:
            present = sorted({e.locality for e in endpoints})
            kept = rng.sample(present, rng.randint(0, len(present)))
            weights = {locality: rng.choice([1, 20, 80, 128, 1000]) for locality in kept}
        expected = _serialized(build_prioritized_assignment(plan, groups, weights))
        assert encoder.prioritized_assignment(plan, groups, weights) == expected, plan.name


# --- clusters ----------------------------------------------------------------------------


def _check_cluster(templates: ClusterTemplates, plan: ClusterPlan, inputs: ClusterInputs) -> None:
    expected = _serialized(build_cluster(plan, inputs))
    assert templates.serialize(plan, inputs) == expected, plan.name
    if inputs.mesh_tls is None:
        shared = templates.shared(plan)
        assert shared is None or shared == expected, plan.name


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_clusters_of_the_golden_cases(path: Path) -> None:
    templates = ClusterTemplates()
    for plan, endpoints in _case_plans(path):
        inputs = ClusterInputs(endpoints=endpoints)
        _check_cluster(templates, plan, inputs)
        _check_cluster(templates, plan, inputs)  # now from the template


@pytest.mark.parametrize("seed", SEEDS)
def test_clusters_of_generated_meshes(seed: int) -> None:
    snapshot, _proxy = _generated_mesh(seed)
    templates = ClusterTemplates()  # one for every proxy: shapes must tell their localities
    for proxy in PROXIES:
        for host, service in snapshot.services.items():
            endpoints = snapshot.endpoints.get(host, ())
            rule = snapshot.destination_rule_for(host)
            for plan in plan_clusters(service, rule, proxy):
                _check_cluster(templates, plan, ClusterInputs(endpoints=endpoints))


# --- routes ------------------------------------------------------------------------------


def _route_listing(
    snapshot: MeshSnapshot, proxy: ProxySpec, index: MeshIndex, port: int
) -> list[tuple[str, list[str]]]:
    hosts = [(s.host, s.namespace) for s in index.routing.http_ports.get(port, ())]
    hosts += [(h, vs.namespace) for h, vs in index.routing.extra_hosts.get(port, ())]
    return [
        (h, domains_for(h, port, namespace=ns, proxy_namespace=proxy.namespace)) for h, ns in hosts
    ]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_route_configurations_of_the_golden_cases(path: Path) -> None:
    snapshot, proxy = load_case(path)
    index = MeshIndex.update(None, snapshot, changes_between(None, snapshot, True))
    for port in index.http_ports:
        scope = RouteScope(port, snapshot.services, index.rules)
        listed = _route_listing(snapshot, proxy, index, port)
        first_host, first_domains = listed[0]
        # A repeated host (all its domains taken: dropped) and one partly taken (trimmed);
        # domains of two-byte lengths or not ASCII; domains taken in another case.
        listed += [
            (first_host, first_domains),
            (first_host, [first_domains[0], "only.here"]),
            (first_host, ["d" * 130 + ".example"]),
            (first_host, ["bücher.example"]),
            (first_host, [first_domains[0].upper(), "BÜCHER.example", "New.Example"]),
            (first_host, []),
        ]
        messages, wires = [], []
        for host, domains in listed:
            vs = index.routing.vs_for(host)
            messages.append(build_virtual_host(host, domains, vs, scope))
            wires.append(wire_virtual_host(host, domains, vs, scope))
        messages.append(catch_all_virtual_host(proxy))
        wires.append(WireVirtualHost.from_message(catch_all_virtual_host(proxy)))
        expected = _serialized(build_route_configuration(port, messages))
        assert route_configuration_bytes(port, wires) == expected


def test_route_configuration_without_virtual_hosts() -> None:
    for port in (1, 80, 16384, 65535):
        expected = _serialized(build_route_configuration(port, ()))
        assert route_configuration_bytes(port, ()) == expected


def test_domains_differing_in_case_only_are_claimed_once() -> None:
    # Envoy rejects a route configuration listing one domain twice in different case ("Only
    # unique values for domains are permitted"): every HTTP route of the port stopped updating
    # over one ServiceEntry written in upper case
    snapshot, _ = load_case(CASES[0])
    index = MeshIndex.update(None, snapshot, changes_between(None, snapshot, True))
    port = next(iter(index.http_ports))
    scope = RouteScope(port, snapshot.services, index.rules)
    listed = [
        ("a.example", ["a.example", "a.example:80"]),
        ("A.example", ["A.Example", "b.example"]),
    ]
    wires = [wire_virtual_host(h, d, None, scope) for h, d in listed]
    config = route_pb2.RouteConfiguration.FromString(route_configuration_bytes(port, wires))
    assert [list(v.domains) for v in config.virtual_hosts] == [
        ["a.example", "a.example:80"],
        ["b.example"],
    ]


# --- whole translations, every encoder call checked ---------------------------------------


class _Checked:
    """Wraps the encoders the translator uses so that each call is checked against the
    builders with the very same arguments; counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, int] = {}
        self._wrap(monkeypatch, EndpointEncoder, "load_assignment", self._load_assignment)
        self._wrap(monkeypatch, EndpointEncoder, "prioritized_assignment", self._prioritized)
        self._wrap(monkeypatch, ClusterTemplates, "serialize", self._serialize)
        self._wrap(monkeypatch, ClusterTemplates, "shared", self._shared)
        self._wrap(monkeypatch, outbound_generators, "wire_virtual_host", self._vhost)
        self._wrap(monkeypatch, outbound_generators, "route_configuration_bytes", self._config)

    def _wrap(
        self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, check: Callable[..., Any]
    ) -> None:
        original = getattr(owner, name)

        def checked(*args: Any) -> Any:
            out = original(*args)
            self.calls[name] = self.calls.get(name, 0) + 1
            check(out, *(args[1:] if isinstance(owner, type) else args))
            return out

        monkeypatch.setattr(owner, name, checked)

    @staticmethod
    def _load_assignment(out: bytes, plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> None:
        assert out == _serialized(build_load_assignment(plan, endpoints)), plan.name

    @staticmethod
    def _prioritized(out: bytes, plan: ClusterPlan, *rest: Any) -> None:
        assert out == _serialized(build_prioritized_assignment(plan, *rest)), plan.name

    @staticmethod
    def _serialize(out: bytes, plan: ClusterPlan, inputs: ClusterInputs) -> None:
        assert out == _serialized(build_cluster(plan, inputs)), plan.name

    @staticmethod
    def _shared(out: bytes | None, plan: ClusterPlan) -> None:
        assert out is None or out == _serialized(build_cluster(plan, ClusterInputs())), plan.name

    @staticmethod
    def _vhost(out: WireVirtualHost, host: str, domains: Any, vs: Any, scope: Any) -> None:
        message = build_virtual_host(host, list(domains), vs, scope)
        expected = _serialized(route_pb2.RouteConfiguration(virtual_hosts=[message]))
        assert out.field == expected, host
        assert out.head + out.field[len(out.field) - len(out.rest) :] != b""

    @staticmethod
    def _config(out: bytes, port: int, vhosts: list[WireVirtualHost]) -> None:
        # Each virtual host's bytes were checked as they were made (the catch-all is
        # protobuf's own): parsed back, they are the builder's messages.
        joined = b"".join(v.field for v in vhosts)
        messages = route_pb2.RouteConfiguration.FromString(joined).virtual_hosts
        assert out == _serialized(build_route_configuration(port, messages))


def _translate_checked(
    monkeypatch: pytest.MonkeyPatch, snapshot: MeshSnapshot, proxy: ProxySpec
) -> dict[str, int]:
    checked = _Checked(monkeypatch)
    translator = Translator()
    translator.generate(snapshot, proxy)
    return checked.calls


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_every_encoder_call_of_the_golden_cases(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot, proxy = load_case(path)
    _translate_checked(monkeypatch, snapshot, proxy)


def test_the_golden_cases_reach_every_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    for path in CASES:
        with monkeypatch.context() as patch:
            for name, count in _translate_checked(patch, *load_case(path)).items():
                calls[name] = calls.get(name, 0) + count
    assert set(calls) == {
        "load_assignment",
        "prioritized_assignment",
        "serialize",
        "shared",
        "wire_virtual_host",
        "route_configuration_bytes",
    }


def _generated_mesh(seed: int) -> tuple[MeshSnapshot, ProxySpec]:
    """A mesh of many shapes: ports and protocols, subsets, TLS modes, load balancers,
    locality failover and distribution, VirtualServices, IPv6 and long addresses."""
    rng = random.Random(seed)
    services: list[dict[str, Any]] = []
    endpoints: dict[str, list[dict[str, Any]]] = {}
    rules: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for index in range(rng.randint(0, 30)):
        service = _service(rng, index)
        host = service.host
        resolution = rng.choice(["STATIC"] * 6 + ["DNS", "DNS_ROUND_ROBIN", "NONE"])
        services.append(
            {
                "host": host,
                "namespace": "ns",
                "resolution": resolution,
                "ports": [
                    {
                        "number": p.number,
                        "name": p.name,
                        "protocol": p.protocol,
                        **({"target_port": p.target_port} if p.target_port else {}),
                    }
                    for p in service.ports
                ],
            }
        )
        names = [p.name for p in service.ports]
        count = rng.choice([0, 1, 3, 10, 50])
        endpoints[host] = [_endpoint_doc(_endpoint(rng, names)) for _ in range(count)]
        if rng.random() < 0.6:
            rules.append(_rule(rng, host, index))
        if rng.random() < 0.2:
            routes.append(_virtual_service(rng, host, index))
    proxy: dict[str, Any] = {"node_id": f"gen-{seed}"}
    if rng.random() < 0.5:
        proxy["locality"] = rng.choice(["us-east/zone-a", "eu-west/zone-c/rack-1"])
    doc = {
        "services": services,
        "endpoints": endpoints,
        "destination_rules": rules,
        "virtual_services": routes,
    }
    return snapshot_from(doc), build(ProxySpec, proxy)


def _endpoint_doc(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "address": endpoint.address,
        "ports": dict(endpoint.ports),
        "labels": dict(endpoint.labels),
        "weight": endpoint.weight,
        "locality": endpoint.locality,
        "healthy": endpoint.healthy,
    }


def _traffic_policy(rng: random.Random) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    shape = rng.randrange(6)
    if shape == 0:
        policy["load_balancer"] = {"simple": rng.choice(["LEAST_CONN", "RANDOM", "ROUND_ROBIN"])}
    elif shape == 1:
        policy["load_balancer"] = {"consistent_hash": {"http_header_name": "x-user"}}
    elif shape == 2:
        policy["outlier_detection"] = {"consecutive_5xx_errors": rng.choice([0, 1, 5])}
        policy["load_balancer"] = {"locality": {"failover": [["us-east", "eu-west"]]}}
    elif shape == 3:
        policy["load_balancer"] = {
            "locality": {
                "distribute": [
                    {"source": "us-east/zone-a/*", "to": [["us-east/zone-a/*", 80], ["é/*", 20]]}
                ]
            }
        }
    elif shape == 4:
        policy["connection_pool"] = {"tcp_max_connections": 7, "max_requests_per_connection": 3}
    mode = rng.choice([None, None, "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"])
    if mode is not None:
        policy["tls"] = {"mode": mode, "sni": "sni.example" if mode == "SIMPLE" else ""}
    return policy


def _rule(rng: random.Random, host: str, index: int) -> dict[str, Any]:
    subsets = [
        {"name": f"v{v}", "labels": {"version": f"v{v}"}}
        | ({"traffic_policy": _traffic_policy(rng)} if rng.random() < 0.3 else {})
        for v in range(1, rng.randint(1, 4))
    ]
    return {
        "name": f"dr-{index}",
        "namespace": "ns",
        "host": host,
        "traffic_policy": _traffic_policy(rng),
        "subsets": subsets,
    }


def _virtual_service(rng: random.Random, host: str, index: int) -> dict[str, Any]:
    weight = rng.randint(1, 99)
    return {
        "name": f"vs-{index}",
        "namespace": "ns",
        "hosts": [host],
        "http": [
            {
                "route": [
                    {"destination": {"host": host}, "weight": weight},
                    {"destination": {"host": host, "subset": "v1"}, "weight": 100 - weight},
                ]
            }
        ],
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_every_encoder_call_of_generated_meshes(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot, proxy = _generated_mesh(seed)
    _translate_checked(monkeypatch, snapshot, proxy)


def test_the_public_api_is_what_the_translator_uses() -> None:
    assert sorted(encode.__all__) == [
        "ClusterTemplates",
        "EndpointEncoder",
        "WireVirtualHost",
        "route_configuration_bytes",
        "wire_virtual_host",
    ]
