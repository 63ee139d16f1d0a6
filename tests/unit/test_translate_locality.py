"""Locality load balancing (DestinationRule localityLbSetting): EDS priorities by closeness to
the proxy's locality (failover), per-locality weights (distribute), and what turns them off."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.config import join_from_dir, parse_config
from meshagent.errors import ConfigError
from meshagent.model import (
    MeshSnapshot,
    ProxySpec,
    RawResource,
    SourceEvent,
    frozen_map,
)
from meshagent.model.proxy import LocalWorkload
from meshagent.normalize import Normalizer
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator, generate
from meshagent.xds.translate.locality import locality_matches
from tests.unit.normalize_helpers import warnings
from tests.unit.test_translate_incremental import _raw
from tests.unit.translate_inputs import resources_as_dict, snapshot_from

HOST = "ratings.prod.svc.cluster.local"
CLUSTER = f"outbound|8080||{HOST}"
OUTLIER = {"consecutive_5xx_errors": 1, "interval_ms": 1000}


def _snapshot(localities: list[str], policy: dict[str, Any] | None, **rule: Any) -> MeshSnapshot:
    """One HTTP service with an endpoint per locality (10.0.0.1, .2, ...), and a
    DestinationRule with traffic_policy policy (none when policy and rule are empty)."""
    endpoints = [
        {"address": f"10.0.0.{i}", "locality": at, "labels": {"version": f"v{i % 2}"}}
        for i, at in enumerate(localities, start=1)
    ]
    doc: dict[str, Any] = {
        "services": [
            {
                "host": HOST,
                "namespace": "prod",
                "resolution": "STATIC",
                "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            }
        ],
        "endpoints": {HOST: endpoints},
    }
    if policy is not None or rule:
        doc["destination_rules"] = [
            {"name": "r", "namespace": "prod", "host": HOST, "traffic_policy": policy, **rule}
        ]
    return snapshot_from(doc)


def _eds(snapshot: MeshSnapshot, locality: str, cluster: str = CLUSTER) -> dict[str, Any]:
    out = resources_as_dict(generate(snapshot, ProxySpec(node_id="vm", locality=locality)))
    found: dict[str, Any] = out["eds"][cluster]
    return found


def _cds(snapshot: MeshSnapshot, locality: str) -> dict[str, Any]:
    out = resources_as_dict(generate(snapshot, ProxySpec(node_id="vm", locality=locality)))
    found: dict[str, Any] = out["cds"][CLUSTER]
    return found


def _priorities(assignment: dict[str, Any]) -> dict[str, int]:
    """Endpoint address -> priority."""
    return {
        lb["endpoint"]["address"]["socketAddress"]["address"]: group.get("priority", 0)
        for group in assignment.get("endpoints", [])
        for lb in group["lbEndpoints"]
    }


def _weights(assignment: dict[str, Any]) -> dict[str, int | None]:
    """Locality "region/zone" -> its load_balancing_weight (None when unset)."""
    out: dict[str, int | None] = {}
    for group in assignment.get("endpoints", []):
        place = group.get("locality", {})
        key = "/".join(p for p in (place.get("region", ""), place.get("zone", "")) if p)
        out[key] = group.get("loadBalancingWeight")
    return out


def _failover_policy(**locality: Any) -> dict[str, Any]:
    lb = {"locality": locality} if locality else None
    return {"outlier_detection": OUTLIER, "load_balancer": lb}


def test_each_match_level_gets_its_own_priority() -> None:
    # given endpoints at every distance from a proxy in us-east/zone-a/rack-1
    places = ["us-east/zone-a/rack-1", "us-east/zone-a/rack-2", "us-east/zone-b", "eu-west/z"]
    snapshot = _snapshot(places, _failover_policy())
    # then closer means a lower priority: subzone 0, zone 1, region 2, elsewhere 3
    assert _priorities(_eds(snapshot, "us-east/zone-a/rack-1")) == {
        "10.0.0.1": 0,
        "10.0.0.2": 1,
        "10.0.0.3": 2,
        "10.0.0.4": 3,
    }


def test_priorities_stay_contiguous_when_levels_are_empty() -> None:
    # given only a same-zone endpoint and one in another region (levels 1 and 2 empty)
    snapshot = _snapshot(["us-east/zone-a", "eu-west/zone-c", "us-east/zone-a"], _failover_policy())
    # then the other region is priority 1, not 3
    assert _priorities(_eds(snapshot, "us-east/zone-a")) == {
        "10.0.0.1": 0,
        "10.0.0.2": 1,
        "10.0.0.3": 0,
    }


def test_failover_rule_orders_other_regions() -> None:
    # given a failover rule from the proxy's region to eu-west (and one from elsewhere)
    places = ["us-east/zone-a", "ap-south/zone-x", "eu-west/zone-c", "us-east/zone-b", ""]
    rules = [("us-west", "ap-south"), ("us-east", "eu-west")]
    snapshot = _snapshot(places, _failover_policy(failover=rules))
    # then eu-west comes right after the region, and every other region (and no locality) last
    assert _priorities(_eds(snapshot, "us-east/zone-a")) == {
        "10.0.0.1": 0,
        "10.0.0.4": 1,
        "10.0.0.3": 2,
        "10.0.0.2": 3,
        "10.0.0.5": 3,
    }


def test_failover_rule_from_another_region_changes_nothing() -> None:
    places = ["us-east/zone-a", "ap-south/zone-x", "eu-west/zone-c"]
    snapshot = _snapshot(places, _failover_policy(failover=[("us-west", "eu-west")]))
    assert _priorities(_eds(snapshot, "us-east/zone-a")) == {
        "10.0.0.1": 0,
        "10.0.0.2": 1,
        "10.0.0.3": 1,
    }


@pytest.mark.parametrize(
    ("policy", "proxy"),
    [
        ({"outlier_detection": None}, "us-east/zone-a"),  # Istio: no failover without it
        (_failover_policy(enabled=False), "us-east/zone-a"),
        (_failover_policy(), ""),  # the proxy does not know where it is
        (None, "us-east/zone-a"),  # no DestinationRule at all
    ],
    ids=["no-outlier-detection", "disabled", "proxy-without-locality", "no-rule"],
)
def test_no_priorities_without_every_condition(policy: dict[str, Any] | None, proxy: str) -> None:
    snapshot = _snapshot(["us-east/zone-a", "eu-west/zone-c"], policy)
    assignment = _eds(snapshot, proxy)
    assert set(_priorities(assignment).values()) == {0}
    assert all("loadBalancingWeight" not in group for group in assignment["endpoints"])
    assert (
        "commonLbConfig" not in _cds(snapshot, proxy)
        or "localityWeightedLbConfig" not in (_cds(snapshot, proxy)["commonLbConfig"])
    )


def test_output_without_locality_lb_is_unchanged_by_the_proxy_locality() -> None:
    # given a rule without outlier detection: the proxy's locality must not matter
    snapshot = _snapshot(
        ["us-east/zone-a", "eu-west/zone-c"], {"connection_pool": None}, subsets=[]
    )
    located = generate(snapshot, ProxySpec(node_id="vm", locality="us-east/zone-a"))
    plain = generate(snapshot, ProxySpec(node_id="vm"))
    assert resources_as_dict(located) == resources_as_dict(plain)


def test_distribute_weights_localities_and_drops_unlisted_ones() -> None:
    # given two endpoints in zone-a, one in zone-b, one in eu-west, and an 80/20 split
    places = ["us-east/zone-a", "us-east/zone-a", "us-east/zone-b", "eu-west/zone-c"]
    to = [("us-east/zone-a/*", 80), ("us-east/zone-b/*", 20)]
    lb = {"locality": {"distribute": [{"source": "us-east/zone-a/*", "to": to}]}}
    snapshot = _snapshot(places, {"load_balancer": lb})
    # then each listed locality carries its weight, eu-west is left out, all at priority 0
    assignment = _eds(snapshot, "us-east/zone-a")
    assert _weights(assignment) == {"us-east/zone-a": 80, "us-east/zone-b": 20}
    assert set(_priorities(assignment).values()) == {0}
    # and the cluster balances by locality weight
    assert _cds(snapshot, "us-east/zone-a")["commonLbConfig"] == {"localityWeightedLbConfig": {}}


def test_distribute_wildcard_splits_its_share_by_endpoint_weight() -> None:
    # given one pattern matching zone-a (two endpoints) and zone-b (one)
    places = ["us-east/zone-a", "us-east/zone-a", "us-east/zone-b"]
    lb = {"locality": {"distribute": [{"source": "*", "to": [("us-east", 100)]}]}}
    snapshot = _snapshot(places, {"load_balancer": lb})
    # then the 100 is split 2:1, rounded up, as Istio does
    assert _weights(_eds(snapshot, "us-east/zone-b")) == {
        "us-east/zone-a": 67,
        "us-east/zone-b": 34,
    }


def test_distribute_first_matching_from_wins_and_no_match_means_no_weights() -> None:
    places = ["us-east/zone-a", "us-east/zone-b"]
    rules = [
        {"source": "eu-west/*", "to": [("us-east/zone-a", 100)]},
        {"source": "us-east/zone-b", "to": [("us-east/zone-a", 10), ("us-east/zone-b", 90)]},
        {"source": "us-east", "to": [("us-east/zone-a", 100)]},
    ]
    snapshot = _snapshot(places, {"load_balancer": {"locality": {"distribute": rules}}})
    assert _weights(_eds(snapshot, "us-east/zone-b/r1")) == {
        "us-east/zone-a": 10,
        "us-east/zone-b": 90,
    }
    assert _weights(_eds(snapshot, "ap-south/zone-x")) == {
        "us-east/zone-a": None,
        "us-east/zone-b": None,
    }


def test_subset_policy_gets_locality_lb_only_where_it_has_outlier_detection() -> None:
    # given outlier detection on subset v1 only
    subsets = [
        {"name": "v1", "labels": {"version": "v1"}, "traffic_policy": _failover_policy()},
        {"name": "v0", "labels": {"version": "v0"}},
    ]
    places = ["us-east/zone-a", "us-east/zone-a", "eu-west/zone-c", "eu-west/zone-c"]
    snapshot = _snapshot(places, None, subsets=subsets)
    v1 = _eds(snapshot, "us-east/zone-a", f"outbound|8080|v1|{HOST}")
    v0 = _eds(snapshot, "us-east/zone-a", f"outbound|8080|v0|{HOST}")
    assert _priorities(v1) == {"10.0.0.1": 0, "10.0.0.3": 1}
    assert set(_priorities(v0).values()) == {0}


# --- failoverPriority ----------------------------------------------------------------


def _labelled(
    items: list[tuple[str, str, dict[str, str]]], setting: dict[str, Any]
) -> MeshSnapshot:
    """Endpoints (locality, network, labels) numbered 10.0.0.1...; outlier detection on."""
    snapshot = _snapshot([at for at, _, _ in items], _failover_policy(**setting))
    endpoints = tuple(
        dataclasses.replace(e, network=network, labels=tuple(sorted(labels.items())))
        for e, (_, network, labels) in zip(snapshot.endpoints[HOST], items, strict=True)
    )
    return dataclasses.replace(snapshot, endpoints=frozen_map({HOST: endpoints}))


def _eds_for(snapshot: MeshSnapshot, proxy: ProxySpec) -> dict[str, Any]:
    found: dict[str, Any] = resources_as_dict(generate(snapshot, proxy))["eds"][CLUSTER]
    return found


def test_failover_priority_orders_by_leading_matching_labels() -> None:
    # given priority by network, then region (topology labels from network and locality)
    items: list[tuple[str, str, dict[str, str]]] = [
        ("eu-west/z", "net-1", {}),  # network only: level 1
        ("us-east/z", "", {}),  # no match from the first label: level 2
        ("us-east/z", "net-1", {}),  # both: level 0
        ("eu-west/z", "", {}),  # level 2
    ]
    labels = ["topology.istio.io/network", "topology.kubernetes.io/region"]
    snapshot = _labelled(items, {"failover_priority": labels})
    proxy = ProxySpec(node_id="vm", locality="us-east/zone-a", network="net-1")
    assert _priorities(_eds_for(snapshot, proxy)) == {
        "10.0.0.1": 1,
        "10.0.0.2": 2,
        "10.0.0.3": 0,
        "10.0.0.4": 2,
    }


def test_failover_priority_uses_workload_labels_and_explicit_values() -> None:
    items = [("", "", {"version": "v1", "tier": "a"}), ("", "", {"version": "v2", "tier": "a"})]
    workload = LocalWorkload("vm", "prod", "sa", labels=(("version", "v1"),))
    proxy = ProxySpec(node_id="vm", workloads=(workload,))  # no locality needed
    by_own = _labelled(items, {"failover_priority": ["version"]})
    assert _priorities(_eds_for(by_own, proxy)) == {"10.0.0.1": 0, "10.0.0.2": 1}
    by_value = _labelled(items, {"failover_priority": ["version=v2"]})
    assert _priorities(_eds_for(by_value, proxy)) == {"10.0.0.1": 1, "10.0.0.2": 0}


def test_failover_priority_with_failover_orders_localities_within_label_levels() -> None:
    items: list[tuple[str, str, dict[str, str]]] = [
        ("us-east/zone-a", "", {}),
        ("eu-west/z", "net-1", {}),
        ("us-east/zone-b", "net-1", {}),
        ("ap-south/z", "net-1", {}),
    ]
    setting = {
        "failover_priority": ["topology.istio.io/network"],
        "failover": [("us-east", "eu-west")],
    }
    proxy = ProxySpec(node_id="vm", locality="us-east/zone-a", network="net-1")
    assert _priorities(_eds_for(_labelled(items, setting), proxy)) == {
        "10.0.0.3": 0,  # same network, same region
        "10.0.0.2": 1,  # same network, failover region
        "10.0.0.4": 2,  # same network, another region
        "10.0.0.1": 3,  # other network
    }


@pytest.mark.parametrize(
    ("locality", "pattern", "matches"),
    [
        ("us-east/zone-a/r1", "us-east/zone-a/r1", True),
        ("us-east/zone-a/r1", "us-east/zone-a/*", True),
        ("us-east/zone-a/r1", "us-east/zone-a", True),
        ("us-east/zone-a/r1", "us-east", True),
        ("us-east/zone-a/r1", "*", True),
        ("us-east/zone-a/r1", "us-east/*/r1", True),
        ("us-east/zone-a/r1", "us-east/zone-b/*", False),
        ("us-east/zone-a/r1", "us-west", False),
        ("", "*", True),
        ("", "us-east", False),
    ],
)
def test_locality_patterns_match_as_istio_documents(
    locality: str, pattern: str, matches: bool
) -> None:
    assert locality_matches(locality, pattern) is matches


# --- configuration ---------------------------------------------------------------------


def test_node_locality_reaches_the_proxy_spec(tmp_path: Path) -> None:
    config = parse_config("node: {id: vm, locality: us-east/zone-a}\n", tmp_path / "agent.yaml")
    assert config.proxy_spec().locality == "us-east/zone-a"
    assert parse_config("", tmp_path / "agent.yaml").proxy_spec().locality == ""


@pytest.mark.parametrize("bad", ["us-east//r", "a/b/c/d", "us east", "*", "us-east/*", "7"])
def test_bad_node_locality_is_a_located_error(tmp_path: Path, bad: str) -> None:
    text = f"node:\n  id: vm\n  locality: {bad!r}\n" if bad != "7" else "node: {locality: 7}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, tmp_path / "agent.yaml")
    assert caught.value.field == "node.locality"
    assert caught.value.location.endswith("agent.yaml:3" if bad != "7" else "agent.yaml:1")


def _join_dir(directory: Path, labels: str) -> Path:
    directory.mkdir()
    env = f"POD_NAMESPACE='ns'\nSERVICE_ACCOUNT='sa'\nISTIO_METAJSON_LABELS='{labels}'\n"
    (directory / "cluster.env").write_text(env)
    (directory / "mesh.yaml").write_text("")
    (directory / "root-cert.pem").write_text("ROOT")
    (directory / "istio-token").write_text("")
    return directory


def test_joined_vm_takes_its_locality_from_the_join_labels(tmp_path: Path) -> None:
    directory = _join_dir(tmp_path / "join", '{"topology.istio.io/locality": "us-east.zone-a"}')
    plain = parse_config("node: {id: vm}\n", tmp_path / "agent.yaml")
    assert join_from_dir(plain, directory).node.locality == "us-east/zone-a"
    # an explicit node.locality wins
    explicit = parse_config("node: {id: vm, locality: eu-west}\n", tmp_path / "agent.yaml")
    assert join_from_dir(explicit, directory).node.locality == "eu-west"


def test_locality_lb_settings_are_no_longer_warnings() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: us-east, to: eu-west}]
        failoverPriority: [topology.istio.io/network]
"""
    assert warnings(text) == []


# --- incremental translation -------------------------------------------------------------

PROXY = ProxySpec(node_id="vm", namespace="ns", locality="us-east/zone-a")
PLACES = ["us-east/zone-a", "us-east/zone-a/r2", "us-east/zone-b", "eu-west/zone-c", ""]


def _entry(rng: random.Random, i: int) -> RawResource:
    endpoints = [
        {
            "address": f"10.0.{i}.{n}",
            "locality": rng.choice(PLACES),
            "labels": {"v": rng.choice("ab")},
        }
        for n in range(1, rng.randint(1, 5))
    ]
    spec = {
        "hosts": [f"svc{i}.ns.svc.cluster.local"],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
        "endpoints": endpoints,
    }
    return _raw("ServiceEntry", f"svc{i}", spec)


def _locality_setting(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(5)
    if choice == 4:
        return {"failoverPriority": ["v", "topology.kubernetes.io/zone"]}
    if choice == 0:
        return {"failover": [{"from": "us-east", "to": "eu-west"}]}
    if choice == 1:
        share = rng.randint(1, 99)
        to = {"us-east/zone-a/*": share, "us-east/zone-b/*": 100 - share}
        return {"distribute": [{"from": "us-east/*", "to": to}]}
    return {"enabled": choice == 2}


def _rule(rng: random.Random, i: int) -> RawResource:
    policy: dict[str, Any] = {"loadBalancer": {"localityLbSetting": _locality_setting(rng)}}
    if rng.random() < 0.7:
        policy["outlierDetection"] = {"consecutive5xxErrors": 1}
    subsets = [{"name": v, "labels": {"v": v}} for v in "ab" if rng.random() < 0.5]
    spec = {"host": f"svc{i}.ns.svc.cluster.local", "trafficPolicy": policy, "subsets": subsets}
    return _raw("DestinationRule", f"dr{i}", spec)


def _flat(resources: ResourceSet) -> list[tuple[str, list[tuple[str, str, bytes]]]]:
    return [
        (t, [(n, r.version, r.body.SerializeToString(deterministic=True)) for n, r in m.items()])
        for t, m in resources.by_type.items()
    ]


@pytest.mark.parametrize("seed", range(4))
def test_incremental_translation_with_locality_lb_equals_a_fresh_one(seed: int) -> None:
    rng = random.Random(seed)
    normalizer, translator = Normalizer(), Translator()
    first = [_entry(rng, i) for i in range(6)] + [_rule(rng, i) for i in range(4)]
    snapshot, _ = normalizer.apply([SourceEvent("test", upserts=tuple(first))])
    translator.generate(snapshot, PROXY)
    for _ in range(30):
        make = _rule if rng.random() < 0.4 else _entry
        raw = make(rng, rng.randrange(6))
        event = SourceEvent("test", upserts=(raw,))
        if rng.random() < 0.1:
            event = SourceEvent("test", deletes=(raw.key,))
        snapshot, _ = normalizer.apply([event])
        assert _flat(translator.generate(snapshot, PROXY)) == _flat(generate(snapshot, PROXY))
