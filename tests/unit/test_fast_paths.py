"""The performance shortcuts give exactly what the plain code gives.

Schema predicates: a document checks with the very same issues whether Obj.check may skip
clean subtrees or not, over the corpus and over deterministic mutations of it. is_ip's
regex agrees with ipaddress. Hand-assembled endpoint and route bytes equal protobuf's own
serialization, at the one-byte-length boundaries too.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.route.v3 import route_pb2

from meshagent.model import Endpoint, Resolution, Service, ServicePort
from meshagent.normalize.schema import SPECS
from meshagent.normalize.schema.common import is_ip
from meshagent.normalize.schema.core import Issues, Obj, predicate
from meshagent.normalize.schema.serviceentry import Address
from meshagent.normalize.schema.workloadentry import WORKLOAD_ENTRY
from meshagent.xds.translate.context import MeshIndex, changes_between
from meshagent.xds.translate.endpoint_wire import EndpointEncoder
from meshagent.xds.translate.endpoints import build_load_assignment
from meshagent.xds.translate.policy import plan_clusters
from meshagent.xds.translate.route_action import RouteScope
from meshagent.xds.translate.route_wire import route_configuration_bytes, wire_virtual_host
from meshagent.xds.translate.routes import (
    build_route_configuration,
    build_virtual_host,
    domains_for,
)
from tests.unit.translate_inputs import load_case

TESTDATA = Path(__file__).parent / "testdata" / "translate"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "istio"


def _specs() -> Iterator[tuple[str, Any]]:
    """(kind, spec) of every corpus document of a kind with a schema."""
    for path in sorted(CORPUS.rglob("*.yaml")) if CORPUS.is_dir() else []:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") in SPECS and "spec" in doc:
                yield doc["kind"], doc["spec"]


def _mutations(spec: Any, rng: random.Random, count: int) -> Iterator[Any]:
    """Copies of spec with one value replaced by a wrong or odd one, or one key dropped."""
    odd: list[Any] = [None, 7, -1, "", "x y", True, [], {}, {"bogus": 1}, ["a"], 1.5, "1.2.3.4"]
    for _ in range(count):
        doc = copy.deepcopy(spec)
        parent, key = _random_slot(doc, rng)
        if parent is None:
            yield rng.choice(odd)
        elif isinstance(parent, dict) and rng.random() < 0.2:
            parent.pop(key, None)
            yield doc
        else:
            parent[key] = rng.choice(odd)
            yield doc


def _random_slot(doc: Any, rng: random.Random) -> tuple[Any, Any]:
    slots: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:  # bounded by the document's size
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(pairs):
            slots.append((node, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return rng.choice(slots) if slots else (None, None)


def _slow_check(schema: Obj, value: Any) -> Issues:
    """The full walk with every shortcut off."""
    original = Obj.is_clean
    Obj.is_clean = lambda self, value: False  # type: ignore[method-assign]
    try:
        issues = Issues()
        schema.check(value, "", issues)
        return issues
    finally:
        Obj.is_clean = original  # type: ignore[method-assign]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus absent")
def test_predicates_never_hide_an_issue() -> None:
    rng = random.Random(20261125)
    checked = 0
    for kind, spec in _specs():
        schema = SPECS[kind]
        for doc in [spec, *_mutations(spec, rng, 12)]:
            slow = _slow_check(schema, doc)
            fast = Issues()
            schema.check(doc, "", fast)
            assert fast == slow, (kind, doc)
            if predicate(schema)(doc):
                assert not slow, (kind, doc)
            checked += 1
    assert checked > 100


def test_a_type_overriding_check_gets_an_exact_predicate() -> None:
    # Address extends Str and overrides check only: Str's predicate would accept any string.
    ok = predicate(Address())
    assert ok("10.0.0.0/8")
    assert not ok("not-an-address")
    assert not ok(7)


def test_rule_conditions_only_skip_clean_values() -> None:
    ok = predicate(WORKLOAD_ENTRY)
    assert ok({"address": "10.1.2.3"})
    assert ok({"address": "host.example"})  # not a dotted quad: the rule itself runs
    assert not ok({"address": "bad host!"})
    assert not ok({})  # address is required unless network is set


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3.4/8",
        "\u0661.\u0662.\u0663.\u0664",
        "::1",
        "fe80::1%eth0",
        "::ffff:1.2.3.4",
        "2001:db8::",
        "host.example",
        "",
        "1..2.3",
        "999.1.1.1",
        "100.200.250.255",
    ],
)
def test_is_ip_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.ip_address(text)
        expected = True
    except ValueError:
        expected = False
    assert is_ip(text) is expected


@pytest.mark.parametrize("address_length", [1, 40, 80, 100, 110, 112, 113, 114, 115, 120, 130])
@pytest.mark.parametrize("port", [80, 20000])
def test_endpoint_bytes_at_length_boundaries(address_length: int, port: int) -> None:
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
    reference = build_load_assignment(plan, endpoints)
    encoded = EndpointEncoder().load_assignment(plan, endpoints)
    assert encoded == reference.SerializeToString(deterministic=True)


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.input.yaml")), ids=lambda p: p.name)
def test_route_bytes_match_protobuf(path: Path) -> None:
    snapshot, proxy = load_case(path)
    index = MeshIndex.update(None, snapshot, changes_between(None, snapshot, True))
    for port in index.http_ports:
        scope = RouteScope(port, snapshot.services, index.rules)
        hosts = [(s.host, s.namespace) for s in index.routing.http_ports.get(port, ())]
        hosts += [(h, vs.namespace) for h, vs in index.routing.extra_hosts.get(port, ())]
        listed = [
            (h, domains_for(h, port, namespace=ns, proxy_namespace=proxy.namespace))
            for h, ns in hosts
        ]
        # A repeated host (all its domains taken: dropped) and one partly taken (kept, trimmed).
        listed += [(listed[0][0], listed[0][1]), (listed[0][0], [listed[0][1][0], "only.here"])]
        # Domains whose fields need more than one length byte, or are not ASCII.
        listed += [(listed[0][0], ["d" * 130 + ".example"]), (listed[0][0], ["bücher.example"])]
        # Domains taken already in another case (Envoy compares them ignoring case).
        listed += [(listed[0][0], [listed[0][1][0].upper(), "BÜCHER.example", "New.Example"])]
        messages, wires = [], []
        for host, domains in listed:
            vs = index.routing.vs_for(host)
            messages.append(build_virtual_host(host, domains, vs, scope))
            wires.append(wire_virtual_host(host, domains, vs, scope))
        expected = build_route_configuration(port, messages).SerializeToString(deterministic=True)
        assert route_configuration_bytes(port, wires) == expected


def test_domains_differing_in_case_only_are_claimed_once() -> None:
    # Envoy rejects a route configuration listing one domain twice in different case ("Only
    # unique values for domains are permitted"): every HTTP route of the port stopped updating
    # over one ServiceEntry written in upper case
    path = sorted(TESTDATA.glob("*.input.yaml"))[0]
    snapshot, _ = load_case(path)
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
