"""Incremental translation driven by the normalizer's SnapshotChanges equals a fresh one,
byte for byte and in the same order, and the ResourceSet's change hint names exactly what
differs from the previous set."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshagent.model import MeshSnapshot, Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.assemble import changed_names

PROXY = ProxySpec(node_id="vm-1", namespace="ns")


def _raw(kind: str, name: str, spec: dict[str, Any]) -> RawResource:
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }
    prov = Provenance("test", f"test:{name}", kind, "ns", name)
    return RawResource("test", kind, "networking.istio.io/v1", "ns", name, body, prov)


def _service_entry(rng: random.Random, i: int) -> RawResource:
    ports = [{"number": 8080 + i % 3, "name": "http", "protocol": "HTTP"}]
    if rng.random() < 0.3:
        ports.append({"number": 9000, "name": "tcp", "protocol": "TCP"})
    endpoints = [
        {"address": f"10.0.{i}.{rng.randint(1, 9)}", "labels": {"version": rng.choice("ab")}}
        for _ in range(rng.randint(0, 3))
    ]
    spec = {
        "hosts": [f"svc{i}.ns.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": ports,
        "endpoints": endpoints,
    }
    return _raw("ServiceEntry", f"svc{i}", spec)


def _rule(rng: random.Random, i: int) -> RawResource:
    subsets = [{"name": v, "labels": {"version": v}} for v in "ab" if rng.random() < 0.6]
    spec = {"host": f"svc{i}.ns.svc.cluster.local", "subsets": subsets}
    return _raw("DestinationRule", f"dr{i}", spec)


def _route(rng: random.Random, i: int) -> RawResource:
    host = f"svc{i}.ns.svc.cluster.local"
    other = f"svc{rng.randrange(8)}.ns.svc.cluster.local"
    spec = {
        "hosts": [host],
        "http": [{"route": [{"destination": {"host": other}, "weight": 100}]}],
    }
    return _raw("VirtualService", f"vs{i}", spec)


MAKERS = [_service_entry, _service_entry, _service_entry, _rule, _route]


def _event(rng: random.Random) -> SourceEvent:
    make = rng.choice(MAKERS)
    raw = make(rng, rng.randrange(8))
    if rng.random() < 0.15:
        return SourceEvent("test", deletes=(raw.key,))
    return SourceEvent("test", upserts=(raw,))


def _flat(resources: ResourceSet) -> list[tuple[str, list[tuple[str, str, bytes]]]]:
    return [
        (t, [(n, r.version, r.body.SerializeToString(deterministic=True)) for n, r in m.items()])
        for t, m in resources.by_type.items()
    ]


def _check_hint(before: ResourceSet, after: ResourceSet) -> None:
    hint = after.changed_since(before)
    assert hint is not None
    for type_url in {*before.by_type, *after.by_type}:
        expected = changed_names(before.of(type_url), after.of(type_url))
        assert hint.get(type_url, frozenset()) == expected, type_url
        if not expected:
            assert after.of(type_url) is before.of(type_url) or not after.of(type_url)


@pytest.mark.parametrize("seed", range(8))
def test_incremental_translation_equals_a_fresh_one(seed: int) -> None:
    # given a mesh built by the normalizer and a translator that has seen it
    rng = random.Random(seed)
    normalizer, translator = Normalizer(), Translator()
    snapshot, _ = normalizer.apply(
        [SourceEvent("test", upserts=tuple(_service_entry(rng, i) for i in range(8)))]
    )
    before = translator.generate(snapshot, PROXY)
    for _ in range(40):
        # when random changes arrive one batch at a time
        snapshot, _ = normalizer.apply([_event(rng) for _ in range(rng.randint(1, 2))])
        after = translator.generate(snapshot, PROXY)
        # then each result equals a fresh translation, and the hint names what changed
        assert _flat(after) == _flat(generate(snapshot, PROXY))
        _check_hint(before, after)
        before = after


def test_snapshot_changes_name_the_changed_keys() -> None:
    rng = random.Random(1)
    normalizer = Normalizer()
    first, _ = normalizer.apply([SourceEvent("test", upserts=(_service_entry(rng, 1),))])
    second, _ = normalizer.apply([SourceEvent("test", upserts=(_rule(rng, 1),))])
    assert second.changes is not None
    assert second.changes.applies(first, second)
    assert second.changes.destination_rules == {"svc1.ns.svc.cluster.local"}
    assert not second.changes.services and not second.changes.endpoints


def test_changes_of_another_base_are_ignored() -> None:
    # given a snapshot whose changes lead from a version the translator has not seen
    rng = random.Random(2)
    normalizer, translator = Normalizer(), Translator()
    normalizer.apply([SourceEvent("test", upserts=(_service_entry(rng, 1),))])
    translator.generate(MeshSnapshot(version=1), PROXY)
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=(_service_entry(rng, 2),))])
    # then the translator compares the maps itself and still gets everything right
    assert _flat(translator.generate(snapshot, PROXY)) == _flat(generate(snapshot, PROXY))


def test_hint_is_unknown_for_an_unrelated_set() -> None:
    rng = random.Random(3)
    normalizer = Normalizer()
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=(_service_entry(rng, 1),))])
    one, other = generate(snapshot, PROXY), generate(snapshot, PROXY)
    assert one.changed_since(other) is None
    assert one.changed_since(one) == {}


@pytest.mark.parametrize("capture", [False, True])
def test_an_endpoint_change_leaves_the_other_types_untouched(
    capture: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Consumers (the assembler, the streams) compare by identity: a generator with nothing new
    # must hand back the very same list, or a one-endpoint change compares every type's
    # resources by name (O(mesh)) to find that nothing changed.
    from meshagent.xds.translate import assemble

    rng = random.Random(3)
    proxy = ProxySpec(node_id="vm-1", namespace="ns", capture=capture)
    normalizer, translator = Normalizer(), Translator()
    entries = [_service_entry(rng, i) for i in range(8)]
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=tuple(entries))])
    before = translator.generate(snapshot, proxy)
    compared: list[int] = []
    original = assemble.changed_names
    monkeypatch.setattr(
        assemble, "changed_names", lambda old, new: compared.append(len(new)) or original(old, new)
    )
    spec = {**entries[2].body["spec"], "endpoints": [{"address": "10.9.9.9"}]}
    moved = _raw("ServiceEntry", "svc2", spec)
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=(moved,))])
    after = translator.generate(snapshot, proxy)
    assert compared == []
    for type_url, mapping in before.by_type.items():
        if type_url != typeurls.ENDPOINT:
            assert after.of(type_url) is mapping, type_url
