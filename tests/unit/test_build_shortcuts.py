"""The 10k-build shortcuts (issue #2) give exactly what the plain code gives.

The ServiceEntry spec's shortcut predicate never says yes where the full walk finds an issue,
over the usual shape and deterministic mutations of it; the fast Endpoint constructor equals
the dataclass's own; the one-regex host check agrees with the per-label loop; the two-byte
length path of bytes_field equals the varint encoding.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from meshagent.model import Endpoint, Provenance
from meshagent.normalize.convert.context import Context
from meshagent.normalize.convert.services import convert_service_entry
from meshagent.normalize.schema.common import DNS_LABEL, domain_problem
from meshagent.normalize.schema.core import Issues, predicate
from meshagent.normalize.schema.serviceentry import SPEC
from meshagent.xds.wire import bytes_field, varint
from tests.unit.test_fast_paths import _slow_check


def _usual_spec(endpoints: int = 4) -> dict[str, Any]:
    return {
        "hosts": ["svc-1.bench.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
        "endpoints": [
            {"address": f"10.0.1.{e + 1}", "labels": {"version": f"v{e % 2}"}}
            for e in range(endpoints)
        ],
    }


def _full_walk(value: Any) -> Issues:
    return _slow_check(SPEC, value)


ODD: list[Any] = [
    None,
    7,
    -1,
    0,
    "",
    "*",
    "x y",
    True,
    [],
    {},
    {"bogus": 1},
    ["a"],
    1.5,
    "1.2.3.4",
    "::1",
    "unix:///sock",
    "DNS",
    "NONE",
    "DNS_ROUND_ROBIN",
    "STATIC",
    "bad_label!",
    "a" * 70,
    {"version": "v1"},
    {"a/b/c": "x"},
    {"version": ["x"]},
    [{"address": "10.0.0.1"}],
    {"number": 8080, "name": "http"},
    "http",
    "udp",
]


ADDED_KEYS = (
    "workloadSelector",
    "exportTo",
    "addresses",
    "weight",
    "ports",
    "network",
    "subjectAltNames",
    "labels",
    "locality",
)


def _mutations(rng: random.Random, count: int) -> Iterator[Any]:
    """Copies of the usual spec with one value replaced, one key dropped or one key added."""
    for _ in range(count):
        doc = _usual_spec(rng.randint(0, 3))
        slots: list[tuple[Any, Any]] = []
        stack: list[Any] = [doc]
        while stack:  # bounded by the document's size
            node = stack.pop()
            pairs = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in list(pairs):
                slots.append((node, k))
                if isinstance(v, dict | list):
                    stack.append(v)
        parent, key = rng.choice(slots)
        roll = rng.random()
        if isinstance(parent, dict) and roll < 0.2:
            parent.pop(key)
        elif isinstance(parent, dict) and roll < 0.35:
            parent[rng.choice(ADDED_KEYS)] = rng.choice(ODD)
        else:
            parent[key] = copy.deepcopy(rng.choice(ODD))
        yield doc


def test_the_usual_shape_is_clean() -> None:
    assert predicate(SPEC)(_usual_spec())
    assert not _full_walk(_usual_spec())


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.1\n10.0.0.2"],  # one address with a newline: the joined check must see it
        ["10.0.0.1", "10.0.0.256"],
        ["10.0.0.1", ""],
        ["10.0.0.1\n", "10.0.0.2"],
    ],
)
def test_addresses_checked_together_are_each_checked(addresses: list[str]) -> None:
    doc = _usual_spec()
    doc["endpoints"] = [{"address": a} for a in addresses]
    assert _full_walk(doc)  # each is wrong somewhere, as the generic walk says
    assert not predicate(SPEC)(doc)


def test_the_shortcut_never_hides_an_issue() -> None:
    rng = random.Random(2026)
    ok = predicate(SPEC)
    seen_bad = 0
    for doc in _mutations(rng, 3000):
        slow = _full_walk(doc)
        fast = Issues()
        SPEC.check(doc, "", fast)
        assert fast == slow, doc
        if ok(doc):
            assert not slow, doc
        seen_bad += bool(slow)
    assert seen_bad > 500  # the mutations do reach the error paths


def test_usual_endpoints_equal_the_dataclass() -> None:
    provenance = Provenance("files", "a.yaml:1", "ServiceEntry", "ns", "name")
    ctx = Context(namespace="ns", domain_suffix="cluster.local", provenance=provenance)
    specs: list[Any] = [
        {"address": "10.0.0.1", "labels": {"version": "v1", "app": "a"}},
        {"address": "10.0.0.2"},
        {"address": "10.0.0.3", "labels": {}},
        {"address": "10.0.0.4", "weight": 3, "ports": {"http": 9090}},
    ]
    spec = {"hosts": ["a.example.com"], "resolution": "STATIC", "endpoints": specs}
    got = convert_service_entry("a", spec, ctx).endpoints
    labels = (("app", "a"), ("version", "v1"))
    assert got[0] == Endpoint(address="10.0.0.1", labels=labels, provenance=provenance)
    assert [e.address for e in got] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert got[1] == Endpoint(address="10.0.0.2", provenance=provenance)
    assert got[2] == Endpoint(address="10.0.0.3", provenance=provenance)
    assert got[3].weight == 3 and got[3].ports == (("http", 9090),)


def _domain_problem_by_labels(host: str, wildcard: bool) -> bool:
    """Whether the per-label loop alone finds host valid (the reference for the regex)."""
    label = re.compile(DNS_LABEL)
    name = host
    if wildcard and host == "*":
        return True
    if wildcard and host.startswith("*."):
        name = host[2:]
    elif wildcard and host.startswith("*"):
        name = host[1:]
    return all(len(part) <= 63 and label.fullmatch(part) for part in name.split("."))


def test_whole_name_regex_agrees_with_the_label_loop() -> None:
    rng = random.Random(7)
    alphabet = "ab9Z-._*\n "
    hosts = ["a" * 63 + ".b", "a" * 64 + ".b", "x.y-z.example", "-a.b", "a-.b", "a..b", "a."]
    hosts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) for _ in range(5000)]
    for host in hosts:
        for wildcard in (True, False):
            assert (domain_problem(host, wildcard=wildcard) == "") == _domain_problem_by_labels(
                host, wildcard
            ), (host, wildcard)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 300, 16383, 16384, 20000])
def test_bytes_field_lengths(size: int) -> None:
    data = b"x" * size
    for number in (1, 2, 15, 16, 300):
        tag = number << 3 | 2
        assert bytes_field(number, data) == varint(tag) + varint(size) + data
