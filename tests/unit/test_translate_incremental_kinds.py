"""Incremental translation equals a fresh one over random changes of every kind that shapes
a cluster or a listener without touching endpoints (DestinationRule traffic policies and
workload selectors, Sidecar scopes, PeerAuthentication, AuthorizationPolicy, EnvoyFilter
patches, WorkloadEntries selected by ServiceEntries), for a proxy with local workloads and
mesh certificates, and the change hint, when there is one, names exactly what differs (the
snapshot cache decides from it whether anything is published)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshagent.model import Identity, Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.model.proxy import InboundPort, LocalWorkload, WorkloadCertificate
from meshagent.normalize import Normalizer
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.assemble import changed_names

NAMESPACES = ("ns", "other")
NETWORKING, SECURITY = "networking.istio.io/v1", "security.istio.io/v1"
WORKLOAD = LocalWorkload(
    "me", "ns", "sa", labels=(("app", "me"),), ports=(InboundPort(8080, 18080),)
)
KEY = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"
CERTIFICATE = WorkloadCertificate(Identity("cluster.local", "ns", "sa"), "CHAIN", KEY, "ROOTS", 0.0)
PROXIES = {
    "workload": ProxySpec(node_id="vm-1", namespace="ns", workloads=(WORKLOAD,)),
    "mtls": ProxySpec(
        node_id="vm-1", namespace="ns", workloads=(WORKLOAD,), certificates=(CERTIFICATE,)
    ),
}


def _raw(kind: str, ns: str, name: str, spec: dict[str, Any], api: str = NETWORKING) -> RawResource:
    body = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}}
    body["spec"] = spec
    prov = Provenance("test", f"test:{ns}/{name}", kind, ns, name)
    return RawResource("test", kind, api, ns, name, body, prov)


def _host(rng: random.Random) -> str:
    return f"svc{rng.randrange(6)}.{rng.choice(NAMESPACES)}.svc.cluster.local"


def _service_entry(rng: random.Random, ns: str, i: int) -> RawResource:
    ports = [{"number": 8080 + i % 2, "name": "http", "protocol": "HTTP"}]
    if rng.random() < 0.3:
        ports.append({"number": 9000, "name": "tcp", "protocol": "TCP"})
    dns = rng.random() < 0.25
    spec: dict[str, Any] = {
        "hosts": [f"svc{i}.{ns}.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "DNS" if dns else "STATIC",
        "ports": ports,
    }
    if dns or rng.random() < 0.6:
        spec["endpoints"] = [
            {
                "address": f"h{rng.randint(1, 3)}.example.com" if dns else f"10.{i}.0.{k}",
                "labels": {"version": rng.choice("ab")},
            }
            for k in range(rng.randint(1, 3))
        ]
    else:
        spec["workloadSelector"] = {"labels": {"app": f"a{i % 3}"}}
    return _raw("ServiceEntry", ns, f"svc{i}", spec)


def _workload_entry(rng: random.Random, ns: str, i: int) -> RawResource:
    labels = {"app": f"a{rng.randrange(3)}", "version": rng.choice("ab")}
    return _raw("WorkloadEntry", ns, f"we{i}", {"address": f"10.9.{i}.1", "labels": labels})


def _destination_rule(rng: random.Random, ns: str, i: int) -> RawResource:
    policy: dict[str, Any] = {}
    if rng.random() < 0.5:
        policy["tls"] = {"mode": rng.choice(["DISABLE", "ISTIO_MUTUAL", "SIMPLE"])}
    if rng.random() < 0.4:
        policy["connectionPool"] = {"tcp": {"maxConnections": rng.randint(1, 100)}}
    if rng.random() < 0.3:
        policy["outlierDetection"] = {"consecutive5xxErrors": rng.randint(1, 9)}
    subsets = [{"name": v, "labels": {"version": v}} for v in "ab" if rng.random() < 0.5]
    spec: dict[str, Any] = {"host": _host(rng), "subsets": subsets}
    if policy:
        spec["trafficPolicy"] = policy
    if rng.random() < 0.25:
        spec["workloadSelector"] = {"matchLabels": {"app": rng.choice(["me", "other"])}}
    return _raw("DestinationRule", ns, f"dr{i}", spec)


def _virtual_service(rng: random.Random, ns: str, i: int) -> RawResource:
    route: dict[str, Any] = {"destination": {"host": _host(rng)}}
    spec = {"hosts": [f"svc{i}.{ns}.svc.cluster.local"], "http": [{"route": [route]}]}
    return _raw("VirtualService", ns, f"vs{i}", spec)


def _sidecar(rng: random.Random, ns: str, i: int) -> RawResource:
    hosts = rng.choice([["./*"], ["*/*"], [f"{rng.choice(NAMESPACES)}/{_host(rng)}"]])
    spec: dict[str, Any] = {"egress": [{"hosts": hosts}]}
    if rng.random() < 0.5:
        spec["workloadSelector"] = {"labels": {"app": rng.choice(["me", "other"])}}
    return _raw("Sidecar", ns, f"sc{i}", spec)


def _peer_authentication(rng: random.Random, ns: str, i: int) -> RawResource:
    spec: dict[str, Any] = {"mtls": {"mode": rng.choice(["STRICT", "PERMISSIVE", "DISABLE"])}}
    if rng.random() < 0.4:
        spec["selector"] = {"matchLabels": {"app": rng.choice(["me", "other"])}}
    ns = rng.choice((*NAMESPACES, "istio-system"))
    return _raw("PeerAuthentication", ns, f"pa{i}", spec, SECURITY)


def _authorization_policy(rng: random.Random, ns: str, i: int) -> RawResource:
    source = {"principals": [f"cluster.local/ns/{rng.choice(NAMESPACES)}/sa/x"]}
    spec = {"action": rng.choice(["ALLOW", "DENY"]), "rules": [{"from": [{"source": source}]}]}
    return _raw("AuthorizationPolicy", ns, f"az{i}", spec, SECURITY)


def _envoy_filter(rng: random.Random, ns: str, i: int) -> RawResource:
    patches: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 2)):
        roll = rng.random()
        cluster = {"context": "SIDECAR_OUTBOUND", "cluster": {"service": _host(rng)}}
        if roll < 0.4:
            timeout = {"connect_timeout": f"{rng.randint(1, 9)}s"}
            patches.append(
                {
                    "applyTo": "CLUSTER",
                    "match": cluster,
                    "patch": {"operation": "MERGE", "value": timeout},
                }
            )
        elif roll < 0.6:
            patches.append(
                {"applyTo": "CLUSTER", "match": cluster, "patch": {"operation": "REMOVE"}}
            )
        else:
            limit = {"per_connection_buffer_limit_bytes": rng.randint(1, 99999)}
            match = {"context": rng.choice(["SIDECAR_INBOUND", "SIDECAR_OUTBOUND"])}
            patches.append(
                {
                    "applyTo": "LISTENER",
                    "match": match,
                    "patch": {"operation": "MERGE", "value": limit},
                }
            )
    ns = rng.choice((*NAMESPACES, "istio-system"))
    return _raw(
        "EnvoyFilter", ns, f"ef{i % 3}", {"configPatches": patches}, "networking.istio.io/v1alpha3"
    )


MAKERS = [
    _service_entry, _service_entry, _workload_entry, _destination_rule, _destination_rule,
    _virtual_service, _sidecar, _peer_authentication, _authorization_policy, _envoy_filter,
]  # fmt: skip


def _event(rng: random.Random) -> SourceEvent:
    raw = rng.choice(MAKERS)(rng, rng.choice(NAMESPACES), rng.randrange(6))
    if rng.random() < 0.2:
        return SourceEvent("test", deletes=(raw.key,))
    return SourceEvent("test", upserts=(raw,))


def _flat(resources: ResourceSet) -> dict[str, dict[str, tuple[str, bytes]]]:
    return {
        t: {n: (r.version, r.body.SerializeToString(deterministic=True)) for n, r in m.items()}
        for t, m in resources.by_type.items()
        if m
    }


@pytest.mark.parametrize("proxy", sorted(PROXIES))
@pytest.mark.parametrize("seed", range(4))
def test_incremental_translation_of_every_kind_equals_a_fresh_one(seed: int, proxy: str) -> None:
    rng = random.Random(seed)
    spec = PROXIES[proxy]
    normalizer, translator = Normalizer(), Translator()
    first = [_service_entry(rng, ns, i) for ns in NAMESPACES for i in range(6)]
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=tuple(first))])
    before = translator.generate(snapshot, spec)
    for step in range(40):
        snapshot, _ = normalizer.apply([_event(rng) for _ in range(rng.randint(1, 2))])
        after = translator.generate(snapshot, spec)
        assert _flat(after) == _flat(generate(snapshot, spec)), (seed, step)
        hint = after.changed_since(before)
        if hint is None:  # unknown (an EnvoyFilter came or went): consumers compare
            before = after
            continue
        for type_url in {*before.by_type, *after.by_type}:
            expected = changed_names(before.of(type_url), after.of(type_url))
            assert hint.get(type_url, frozenset()) == expected, (seed, step, type_url)
        before = after
