"""Incremental translation under a Sidecar: the scoped view follows the normalizer's changes
(services, endpoints, VirtualServices, the Sidecar itself) and every result equals a fresh
translation; a change outside the scope costs nothing downstream."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.assemble import changed_names

PROXY = ProxySpec(node_id="vm-1", namespace="ns")
NAMESPACES = ("ns", "other")


def _raw(kind: str, ns: str, name: str, spec: dict[str, Any]) -> RawResource:
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    prov = Provenance("test", f"test:{ns}/{name}", kind, ns, name)
    return RawResource("test", kind, "networking.istio.io/v1", ns, name, body, prov)


def _host(ns: str, i: int) -> str:
    return f"svc{i}.{ns}.svc.cluster.local"


def _service_entry(rng: random.Random, ns: str, i: int) -> RawResource:
    ports = [{"number": 8080 + i % 2, "name": "http", "protocol": "HTTP"}]
    if rng.random() < 0.3:
        ports.append({"number": 9000, "name": "tcp", "protocol": "TCP"})
    endpoints = [{"address": f"10.{i}.0.{rng.randint(1, 9)}"} for _ in range(rng.randint(0, 3))]
    spec = {
        "hosts": [_host(ns, i)],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": ports,
        "endpoints": endpoints,
    }
    return _raw("ServiceEntry", ns, f"svc{i}", spec)


def _route(rng: random.Random, ns: str, i: int) -> RawResource:
    target = _host(rng.choice(NAMESPACES), rng.randrange(6))
    spec = {"hosts": [_host(ns, i)], "http": [{"route": [{"destination": {"host": target}}]}]}
    return _raw("VirtualService", ns, f"vs{i}", spec)


def _sidecar(rng: random.Random, ns: str, i: int) -> RawResource:
    hosts = rng.choice(
        [
            ["./*"],
            ["./*", f"other/{_host('other', 1)}"],
            ["*/svc2.*"],
            ["other/*"],
            ["~/*"],
            ["*/*"],
        ]
    )
    egress: list[dict[str, Any]] = [{"hosts": hosts}]
    if rng.random() < 0.3:
        egress.insert(0, {"port": {"number": 8081, "protocol": "HTTP"}, "hosts": ["*/*"]})
    return _raw("Sidecar", "ns", "default", {"egress": egress})


def _event(rng: random.Random) -> SourceEvent:
    make = rng.choice([_service_entry, _service_entry, _service_entry, _route, _sidecar])
    raw = make(rng, rng.choice(NAMESPACES), rng.randrange(6))
    if rng.random() < 0.15:
        return SourceEvent("test", deletes=(raw.key,))
    return SourceEvent("test", upserts=(raw,))


def _flat(resources: ResourceSet) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(t, [(n, r.version) for n, r in m.items()]) for t, m in resources.by_type.items()]


@pytest.mark.parametrize("seed", range(10))
def test_scoped_incremental_translation_equals_a_fresh_one(seed: int) -> None:
    rng = random.Random(seed)
    normalizer, translator = Normalizer(), Translator()
    first = [_service_entry(rng, ns, i) for ns in NAMESPACES for i in range(6)]
    first.append(_sidecar(rng, "ns", 0))
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=tuple(first))])
    before = translator.generate(snapshot, PROXY)
    assert _flat(before) == _flat(generate(snapshot, PROXY))
    for _ in range(50):
        snapshot, _ = normalizer.apply([_event(rng) for _ in range(rng.randint(1, 2))])
        after = translator.generate(snapshot, PROXY)
        assert _flat(after) == _flat(generate(snapshot, PROXY))
        hint = after.changed_since(before)
        assert hint is not None
        for type_url in {*before.by_type, *after.by_type}:
            expected = changed_names(before.of(type_url), after.of(type_url))
            assert hint.get(type_url, frozenset()) == expected, type_url
        before = after


def test_a_change_outside_the_scope_changes_nothing() -> None:
    rng = random.Random(4)
    normalizer, translator = Normalizer(), Translator()
    entries = [_service_entry(rng, ns, i) for ns in NAMESPACES for i in range(6)]
    scoped = _raw("Sidecar", "ns", "default", {"egress": [{"hosts": ["./*"]}]})
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=(*entries, scoped))])
    before = translator.generate(snapshot, PROXY)
    clusters = [n for n in before.of(typeurls.CLUSTER) if n.startswith("outbound|")]
    assert clusters and all(n.endswith(".ns.svc.cluster.local") for n in clusters)
    # when an endpoint of a service outside the scope moves
    spec = {**entries[8].body["spec"], "endpoints": [{"address": "10.9.9.9"}]}
    snapshot, _ = normalizer.apply(
        [SourceEvent("test", upserts=(_raw("ServiceEntry", "other", "svc2", spec),))]
    )
    after = translator.generate(snapshot, PROXY)
    # then every type is the very same mapping: nothing was rebuilt or compared
    for type_url, mapping in before.by_type.items():
        assert after.of(type_url) is mapping, type_url
    # and an endpoint change inside the scope changes exactly its assignment
    spec = {**entries[2].body["spec"], "endpoints": [{"address": "10.9.9.8"}]}
    snapshot, _ = normalizer.apply(
        [SourceEvent("test", upserts=(_raw("ServiceEntry", "ns", "svc2", spec),))]
    )
    final = translator.generate(snapshot, PROXY)
    hint = final.changed_since(after)
    assert hint is not None and set(hint) == {typeurls.ENDPOINT}
    assert all(n.endswith("||svc2.ns.svc.cluster.local") for n in hint[typeurls.ENDPOINT])
