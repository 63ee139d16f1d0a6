"""The Consul API simulator (driven by py-consul over real HTTP) and the Consul adapter against
it: response shapes like Consul's documented examples, blocking queries, ACLs, faults, index
resets, token files and registration of local workloads. Loopback only, no Envoy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import consul
import pytest

from meshagent.adapters.consul import CATALOG_QPS, ConsulAdapter, ConsulOptions
from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.model.source import SourceEvent
from meshagent.testing.consul_sim import ConsulSimulator, canonical_keys, load_data
from meshagent.testing.consul_state import SERVICES_KEY, service_key
from tests.net_helpers import free_port
from tests.polling import async_wait_for

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "consul"


@pytest.fixture
def sim() -> Iterator[ConsulSimulator]:
    simulator = ConsulSimulator(max_wait_s=1.0).start()
    yield simulator
    simulator.stop()


def corpus(name: str) -> Any:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus/consul not found")
    return json.loads((CORPUS / name).read_text())


def keys_of(value: Any) -> set[str]:
    return set(value) if isinstance(value, dict) else set()


def get(
    sim: ConsulSimulator, path: str, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(f"http://{sim.address}{path}")
    if token:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


# -- shapes ----------------------------------------------------------------------------------


def test_responses_have_the_documented_keys(sim: ConsulSimulator) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    body = corpus("catalog-register.request.json")
    sim._catalog_register(canonical_keys(body))
    _, health = c.health.service("redis")
    (doc,) = corpus("health-service.response.json")
    (got,) = health
    assert keys_of(doc["Node"]) <= keys_of(got["Node"])
    assert keys_of(doc["Service"]) <= keys_of(got["Service"])
    for check in got["Checks"]:
        assert keys_of(doc["Checks"][0]) <= keys_of(check)
    _, flat = c.catalog.service("redis")
    assert keys_of(corpus("catalog-service.response.json")[0]) <= keys_of(flat[0])
    _, services = c.catalog.services()
    assert services == {"redis": ["primary", "v1"]}
    c.config.set("service-defaults", "web", {"Protocol": "http"})
    listed = c.config.list("service-defaults")
    assert keys_of(corpus("config-list.response.json")[0]) <= keys_of(listed[0])
    assert keys_of(corpus("config-get.response.json")) <= keys_of(
        c.config.get("service-defaults", "web")
    )


def test_agent_registration_example_and_check_states(sim: ConsulSimulator) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    sim.state.register_service(
        "sim-node",
        canonical_keys(corpus("agent-service-register.request.json")),
        [{"TTL": "1h", "CheckID": "redis-ttl"}],
    )
    assert c.health.service("redis", passing=True)[1] == []  # checks start critical, as Consul's
    c.agent.check.ttl_warn("redis-ttl")
    (entry,) = c.health.service("redis")[1]
    assert {ch["Status"] for ch in entry["Checks"]} == {"passing", "warning"}
    assert entry["Service"]["Weights"] == {"Passing": 10, "Warning": 1}
    c.agent.check.ttl_pass("redis-ttl")
    assert len(c.health.service("redis", passing=True)[1]) == 1


# -- blocking queries, ACLs, datacenters -----------------------------------------------------------


def test_blocking_query_waits_and_wakes_on_change(sim: ConsulSimulator) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    index, _ = c.health.service("web")
    start = time.monotonic()
    again, _ = c.health.service("web", index=index, wait="300ms")
    assert again == index and 0.25 < time.monotonic() - start < 5.0  # blocked, then let go
    status, _, headers = get(sim, "/v1/catalog/services")
    assert status == 200 and headers["X-Consul-KnownLeader"] == "true"

    def later() -> None:
        time.sleep(0.2)  # the change that wakes the query below (this is the test's stimulus)
        c.agent.service.register("web", service_id="w1", port=80)

    import threading

    threading.Thread(target=later, daemon=True).start()
    start = time.monotonic()
    woke, entries = c.health.service("web", index=index, wait="5s")
    # woken by the change (after 0.2 s), well before the 5 s wait: room for a busy machine
    assert woke > index and len(entries) == 1 and time.monotonic() - start < 3.0


def test_acl_tokens_and_datacenter() -> None:
    sim = ConsulSimulator(acl_token="root", read_tokens=("reader",)).start()
    try:
        assert get(sim, "/v1/catalog/services")[:2] == (403, "ACL not found")
        assert get(sim, "/v1/catalog/services?token=root")[0] == 200
        assert get(sim, "/v1/catalog/services", token="reader")[0] == 200
        c = consul.Consul(host="127.0.0.1", port=sim.port, token="reader")
        with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
            c.agent.service.register("web", port=80)
        assert get(sim, "/v1/catalog/services?dc=dc9&token=root")[0] == 500
    finally:
        sim.stop()


def test_other_datacenters_answer_with_dc_and_block_on_their_own_indexes(
    sim: ConsulSimulator,
) -> None:
    sim.add_datacenter("dc2")
    load_data(
        sim,
        {
            "register": [
                {
                    "Datacenter": "dc3",
                    "Node": "n3",
                    "Address": "10.3.0.1",
                    "Service": {"Service": "db", "Port": 5432},
                }
            ]
        },
    )
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    c.catalog.register("n2", "10.2.0.1", service={"Service": "web", "Port": 80}, dc="dc2")
    assert "web" not in c.catalog.services()[1]
    index, found = c.health.service("web", dc="dc2")
    assert [e["Node"]["Datacenter"] for e in found] == ["dc2"]
    assert [e["Service"]["Port"] for e in c.health.service("db", dc="dc3")[1]] == [5432]
    assert get(sim, "/v1/catalog/services?dc=dc9")[0] == 500

    def later() -> None:
        service = {"Service": "web", "ID": "web-2", "Port": 81}
        c.catalog.register("n2", "10.2.0.1", service=service, dc="dc2")

    timer = threading.Timer(0.2, later)
    timer.start()
    try:
        new, _ = c.health.service("web", dc="dc2", index=index, wait="5s")
    finally:
        timer.join()
    assert int(new) > int(index)


# -- the adapter -----------------------------------------------------------------------------------


async def events(adapter: ConsulAdapter) -> AsyncIterator[SourceEvent]:
    async for event in adapter.watch():
        yield event


async def next_matching(
    it: AsyncIterator[SourceEvent], predicate: Any, timeout: float = 10.0
) -> SourceEvent:
    async def find() -> SourceEvent:
        async for event in it:
            if predicate(event):
                return event
        raise AssertionError("adapter stopped")

    return await asyncio.wait_for(find(), timeout)


def ids(event: SourceEvent) -> list[str]:
    (resource,) = [r for r in event.upserts if r.kind == "ConsulService"]
    return sorted(i["Service"]["ID"] for i in resource.body["Instances"])


async def test_adapter_faults_index_reset_and_token_file(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    c.agent.service.register(
        "web", service_id="w1", port=80, check={"TTL": "1h", "Status": "passing"}
    )
    token = tmp_path / "token"
    token.write_text("root\n")
    sim.acl_token = "root"
    options = ConsulOptions(address=sim.address, wait_s=1.0, token_file=token, backoff_cap_s=0.3)
    async with ConsulAdapter(options) as adapter:
        it = events(adapter)
        first = await next_matching(it, lambda e: e.synced)
        assert ids(first) == ["w1"]
        await asyncio.to_thread(sim.state.set_check, "service:w1", "critical")
        assert ids(await next_matching(it, lambda e: e.upserts)) == []

        token.write_text("wrong\n")  # re-read on the next query: 403 ACL not found, reported
        sim.state.set_check("service:w1", "passing")
        failed = await next_matching(it, lambda e: e.errors)
        assert "ACL not found" in failed.errors[0].reason and not failed.deletes
        token.write_text("root-again\n")
        sim.acl_token = "root-again"
        sim.state.set_check("service:w1", "critical")  # flows again once the token is right
        assert ids(await next_matching(it, lambda e: e.upserts and not ids(e))) == []
        sim.state.set_check("service:w1", "passing")
        assert ids(await next_matching(it, lambda e: e.upserts)) == ["w1"]

        sim.state.reset_indexes(1)  # backwards: the adapter starts over and follows changes
        sim.state.register_service(
            "sim-node", {"ID": "w2", "Service": "web", "Port": 81}, [{"Status": "passing"}]
        )
        assert ids(await next_matching(it, lambda e: e.upserts and ids(e) == ["w1", "w2"]))

        sim.faults.malformed = True
        sim.state.deregister_service("sim-node", "w2")
        failed = await next_matching(it, lambda e: e.errors)
        assert "JSON" in failed.errors[0].reason or "Expecting" in failed.errors[0].reason
        sim.faults.clear()
        # The watch reads afresh after the error; a read answered just before the deregister
        # may still be on its way, so wait for the state rather than take the next upsert.
        await next_matching(it, lambda e: e.upserts and ids(e) == ["w1"])

        sim.state.deregister_service("sim-node", "w1")  # Consul says the service is gone
        gone = await next_matching(it, lambda e: e.deletes)
        assert gone.deletes == (("consul", "ConsulService", "", "web"),)


@pytest.fixture
def patient_sim() -> Iterator[ConsulSimulator]:
    """A simulator that lets blocking queries wait as long as they ask (60 s at most)."""
    simulator = ConsulSimulator(max_wait_s=60.0).start()
    yield simulator
    simulator.stop()


def register_web(sim: ConsulSimulator, service_id: str, port: int) -> None:
    body = {"ID": service_id, "Service": "web", "Port": port}
    sim.state.register_service("sim-node", body, [{"Status": "passing"}])


async def watching_web(
    sim: ConsulSimulator,
) -> tuple[ConsulAdapter, AsyncIterator[SourceEvent]]:
    """An adapter whose blocking queries wait 30 s, synced on web=[w1] at a high index."""
    register_web(sim, "w1", 80)
    for status in ("critical", "passing") * 5:  # indexes well above those of a fresh Consul
        sim.state.set_check("service:w1", status)
    adapter = ConsulAdapter(ConsulOptions(address=sim.address, wait_s=30.0, backoff_cap_s=0.2))
    await adapter.__aenter__()
    it = events(adapter)
    assert ids(await next_matching(it, lambda e: e.synced)) == ["w1"]
    return adapter, it


async def test_a_consul_rebuilt_with_lower_indexes_is_followed_at_once(
    patient_sim: ConsulSimulator,
) -> None:
    """After connection errors the adapter reads afresh (index 0): a blocking query at its old
    index would wait out the whole 30 s `wait` against the rebuilt Consul's lower indexes."""
    sim = patient_sim
    adapter, it = await watching_web(sim)
    try:
        await async_wait_for(
            lambda: sim.blocked[service_key("web")] > 0, what="web's blocked query"
        )
        await asyncio.to_thread(sim.stop)
        # web's watch noticed (its blocked query was cut)
        await next_matching(it, lambda e: any("health of web" in d.reason for d in e.errors))
        sim.state.reset_indexes(1)  # rebuilt from scratch: every index starts low again
        await asyncio.to_thread(sim.start)
        register_web(sim, "w2", 81)  # index 2, below what the adapter last saw

        change = await next_matching(it, lambda e: e.upserts and ids(e) == ["w1", "w2"], 5.0)
        assert not change.deletes
    finally:
        await adapter.__aexit__(None, None, None)


async def test_a_restore_answers_blocked_queries_at_once(patient_sim: ConsulSimulator) -> None:
    """A snapshot restore makes Consul abandon every blocked query; the lower index it then
    reports resets the adapter's index, so the next change arrives without waiting 30 s."""
    sim = patient_sim
    adapter, it = await watching_web(sim)
    try:
        await async_wait_for(
            lambda: sim.blocked[service_key("web")] > 0, what="web's blocked query"
        )
        sim.state.reset_indexes(1)
        register_web(sim, "w2", 81)

        await next_matching(it, lambda e: e.upserts and ids(e) == ["w1", "w2"], 5.0)
    finally:
        await adapter.__aexit__(None, None, None)


async def test_blocking_queries_hold_no_threads(patient_sim: ConsulSimulator) -> None:
    """Every watched service has a blocking query in flight, and none holds a thread (py-consul's
    asyncio client): 10k services must not cost 10k threads."""
    sim = patient_sim
    for i in range(40):
        body = {"ID": f"s{i}", "Service": f"svc{i}", "Port": 80}
        sim.state.register_service("sim-node", body, [{"Status": "passing"}])
    before = threading.active_count()
    adapter = ConsulAdapter(ConsulOptions(address=sim.address, wait_s=30.0))
    await adapter.__aenter__()
    it = events(adapter)
    try:
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(
            lambda: all(sim.blocked[service_key(f"svc{i}")] > 0 for i in range(40)),
            what="a blocked query per service",
        )
        assert threading.active_count() <= before + 1  # (+1: a resolver thread, at most)
        register = {"ID": "s0b", "Service": "svc0", "Port": 81}
        sim.state.register_service("sim-node", register, [{"Status": "passing"}])
        change = await next_matching(it, lambda e: e.upserts)
        assert [r.name for r in change.upserts] == ["svc0"]
    finally:
        await adapter.__aexit__(None, None, None)


async def test_the_catalog_listing_is_reread_at_most_catalog_qps_under_churn(
    patient_sim: ConsulSimulator,
) -> None:
    """Every registration changes the catalog's index, and its answer names every service: under
    churn the adapter re-reads it at most CATALOG_QPS times a second (not beside every change),
    while each service's health changes still all come through."""
    sim = patient_sim
    register_web(sim, "w0", 80)
    adapter = ConsulAdapter(ConsulOptions(address=sim.address, wait_s=30.0))
    await adapter.__aenter__()
    it = events(adapter)
    try:
        await next_matching(it, lambda e: e.synced)
        await async_wait_for(lambda: sim.blocked[SERVICES_KEY] > 0, what="the catalog watch")
        before, start = sim.requests["catalog/services"], time.monotonic()
        for i in range(1, 41):
            register_web(sim, f"w{i}", 80 + i)
            await next_matching(it, lambda e, n=i + 1: e.upserts and len(ids(e)) == n)
        elapsed = time.monotonic() - start
        reads = sim.requests["catalog/services"] - before
        assert reads <= 2 + CATALOG_QPS * elapsed, (reads, elapsed)
    finally:
        await adapter.__aexit__(None, None, None)


class _NoScan(dict):  # type: ignore[type-arg]
    """A dict that fails any full scan: reads must use the simulator's indexes."""

    def _scan(self, *args: Any) -> Any:
        raise AssertionError("full scan of the simulator's services or checks")

    items = values = keys = __iter__ = _scan


def test_reads_and_writes_of_one_service_do_not_scan_the_datacenter(
    sim: ConsulSimulator,
) -> None:
    state = sim.state
    for i in range(50):
        body = {"ID": f"s{i}", "Service": f"svc{i % 10}", "Port": 80 + i, "Tags": [f"t{i}"]}
        state.register_service("sim-node", body, [{"CheckID": f"c{i}", "Status": "passing"}])
    state.ensure_node("other", "127.0.0.2")
    state.register_service("other", {"ID": "o1", "Service": "svc1", "Port": 9}, [])
    expected_health = state.health_service("svc1", passing=True)
    expected_catalog = state.catalog_services()
    state.services, state.checks = _NoScan(state.services), _NoScan(state.checks)

    assert state.health_service("svc1", passing=True) == expected_health
    assert [i["Service"]["ID"] for i in expected_health] == ["o1", "s1", "s11", "s21", "s31", "s41"]
    assert state.catalog_services() == expected_catalog
    assert expected_catalog["svc1"] == ["t1", "t11", "t21", "t31", "t41"]
    assert len(state.catalog_service("svc2")) == 5
    state.set_check("c1", "critical")
    assert "s1" not in [i["Service"]["ID"] for i in state.health_service("svc1", passing=True)]
    state.register_service("sim-node", {"ID": "s99", "Service": "svc1", "Port": 1}, [])
    state.deregister_service("sim-node", "s1")
    assert "c1" not in {cid for (_, cid) in dict.keys(state.checks)}
    assert [i["Service"]["ID"] for i in state.health_service("svc1")][-1] == "s99"
    state.deregister_node("other")
    assert "o1" not in [i["Service"]["ID"] for i in state.health_service("svc1")]
    state.deregister_service("sim-node", "s99")
    for i in (11, 21, 31, 41):
        state.deregister_service("sim-node", f"s{i}")
    assert "svc1" not in state.catalog_services()


# -- registration of local workloads --------------------------------------------------------------


async def test_agent_registers_local_workloads_and_deregisters_on_stop(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    text = f"""
node: {{id: host1}}
state_dir: {tmp_path}/state
admin: {{address: 127.0.0.1, port: {free_port()}}}
sources:
  files: null
  consul: {{address: "{sim.address}", wait: 1s, register: true}}
workloads:
- {{name: billing, labels: {{version: v1}}, ports: [{{port: {free_port()}, protocol: HTTP}}]}}
"""
    agent = Agent(parse_config(text, tmp_path / "agent.yaml"))
    await agent.start()
    try:
        entries = await async_wait_for(
            lambda: sim.state.health_service("billing"), what="registered", timeout=10
        )
        service = entries[0]["Service"]
        assert service["ID"] == "host1-billing" and service["Meta"]["version"] == "v1"
        check = next(c for c in entries[0]["Checks"] if c["ServiceID"])
        assert check["Definition"]["HTTP"].endswith("/readyz")
        # the simulator runs the HTTP check: the agent is not ready (no Envoy), so critical
        await async_wait_for(
            lambda: [
                c
                for c in sim.state.health_service("billing")[0]["Checks"]
                if c["ServiceID"] and c["Output"]
            ],
            what="check ran",
            timeout=10,
        )
    finally:
        await agent.stop()
    assert sim.state.health_service("billing") == []


def test_cli_dev_consul_sim_serves_its_data_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data.json"
    data.write_text(
        json.dumps(
            {
                "register": [
                    {
                        "Node": "n1",
                        "Address": "127.0.0.9",
                        "Service": {"Service": "web", "Port": 80},
                    }
                ],
                "config": [
                    {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100}]}
                ],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshagent.agent.cli",
            "dev",
            "consul-sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        c = consul.Consul(host="127.0.0.1", port=port)
        services = wait_for_value(lambda: c.catalog.services()[1])
        assert services == {"web": []}
        assert c.config.list("service-splitter")[0]["Name"] == "web"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for_value(probe: Any) -> Any:
    from tests.polling import wait_for

    return wait_for(probe, timeout=10, what="consul-sim answering")


# -- gateway config entries ------------------------------------------------------------------

INGRESS = {
    "Listeners": [
        {
            "Port": 8888,
            "Protocol": "http",
            "Services": [{"Name": "api", "Namespace": "frontend", "Hosts": ["api.mydomain.com"]}],
        },
        {"Port": 8443, "Protocol": "tcp", "Services": [{"Name": "redis", "Namespace": "ops"}]},
    ]
}
TERMINATING = {
    "Services": [
        {
            "Name": "api",
            "Namespace": "frontend",
            "CAFile": "/etc/certs/ca.pem",
            "CertFile": "/etc/certs/api/client.pem",
            "KeyFile": "/etc/certs/api/client.key",
            "SNI": "api.my-domain",
        },
        {"Name": "web", "Namespace": "frontend"},
    ]
}


def test_gateway_entries_are_stored_and_their_links_listed_as_consul_does(
    sim: ConsulSimulator,
) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    assert c.config.set("ingress-gateway", "my-ingress-gateway", INGRESS)
    assert c.config.set("terminating-gateway", "my-terminating-gateway", TERMINATING)
    assert c.config.get("ingress-gateway", "my-ingress-gateway")["Listeners"][0]["Port"] == 8888
    assert [e["Name"] for e in c.config.list("terminating-gateway")] == ["my-terminating-gateway"]
    for kind, gateway in (
        ("ingress", "my-ingress-gateway"),
        ("terminating", "my-terminating-gateway"),
    ):
        expected = corpus(f"catalog-gateway-services-{kind}.response.json")
        got = c.catalog.gateway_services(gateway)
        strip = ("CreateIndex", "ModifyIndex")
        assert [{k: v for k, v in r.items() if k not in strip} for r in got] == [
            {k: v for k, v in r.items() if k not in strip} for r in expected
        ]


def test_gateway_services_block_until_a_gateway_entry_changes(sim: ConsulSimulator) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    status, body, headers = get(sim, "/v1/catalog/gateway-services/edge")
    assert status == 200 and body == []
    index = int(headers["X-Consul-Index"])
    c.config.set("service-defaults", "web", {"Protocol": "http"})  # not a gateway entry

    def later() -> None:
        time.sleep(0.2)  # the change that wakes the query below (this is the test's stimulus)
        c.config.set("terminating-gateway", "edge", {"Services": [{"Name": "web"}]})

    threading.Thread(target=later, daemon=True).start()
    start = time.monotonic()
    status, body, headers = get(sim, f"/v1/catalog/gateway-services/edge?index={index}&wait=5s")
    assert int(headers["X-Consul-Index"]) > index and body[0]["Service"]["Name"] == "web"
    assert time.monotonic() - start < 3.0
    c.config.delete("terminating-gateway", "edge")
    assert get(sim, "/v1/catalog/gateway-services/edge")[1] == []


@pytest.mark.parametrize(
    ("kind", "entry", "reason"),
    [
        (
            "ingress-gateway",
            {"Listeners": [{"Port": 1, "Services": [{"Name": "a"}, {"Name": "b"}]}]},
            "L7",
        ),
        ("ingress-gateway", {"Listeners": [{"Port": 1}, {"Port": 1}]}, "already used"),
        ("terminating-gateway", {"Services": [{"Name": "a", "CertFile": "c"}]}, "together"),
        ("no-such-kind", {}, "invalid config entry kind"),
    ],
)
def test_consul_refuses_invalid_gateway_entries(
    sim: ConsulSimulator, kind: str, entry: dict[str, Any], reason: str
) -> None:
    c = consul.Consul(host="127.0.0.1", port=sim.port)
    with pytest.raises(consul.ConsulException, match=reason):
        c.config.set(kind, "edge", entry)
    assert sim.state.config == {}
