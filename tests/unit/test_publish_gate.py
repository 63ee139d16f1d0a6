"""The agent publishes only consistent ResourceSets, and traces NACKs to the files responsible."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.agent.publishing import NackExplainer, named_in
from meshagent.model import ProxySpec
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet
from meshagent.xds.translate import Translator
from tests.unit.normalize_helpers import upsert
from tests.unit.test_daemon import (
    FakeNormalizer,
    QueueAdapter,
    http_get,
    raw,
    running,
    until,
    write_config,
)
from tests.xds_builders import cla, eds_cluster, resource_set


class ListTranslator:
    """Returns `current`, whatever the snapshot."""

    def __init__(self, current: ResourceSet) -> None:
        self.current = current

    def generate(self, snapshot: Any, proxy: ProxySpec) -> ResourceSet:
        return self.current


async def test_an_inconsistent_set_is_not_published_and_is_reported_once(tmp_path: Path) -> None:
    good = resource_set(clusters=[eds_cluster("a")], endpoints=[cla("a", 80)])
    bad = resource_set(clusters=[eds_cluster("a"), eds_cluster("b")], endpoints=[cla("a", 80)])
    adapter, translator = QueueAdapter(), ListTranslator(good)
    agent = Agent(
        load_config(write_config(tmp_path, "mesh")),
        adapter_factory=lambda _: [adapter],
        normalizer=FakeNormalizer(),
        translator=translator,
    )

    def errors() -> list[str]:
        return [d["message"] for d in agent.config_errors()["diagnostics"]]

    async def body() -> None:
        assert agent.admin is not None
        await adapter.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "first publish")

        # When translation yields a cluster without its ClusterLoadAssignment, twice
        translator.current = bad
        normalizer = agent.normalizer
        assert isinstance(normalizer, FakeNormalizer)
        for calls, name in ((2, "b"), (3, "c")):
            await adapter.events.put(SourceEvent("files", upserts=(raw(name),)))
            await until(lambda: normalizer.calls >= calls, f"event {name}")  # noqa: B023

        # Then the last good set keeps serving, and the error is reported once, named
        assert agent.cache.get("vm-1") == (1, good)
        assert len(errors()) == 1
        assert "cluster b (EDS) needs ClusterLoadAssignment b" in errors()[0]
        assert agent.metrics.config_errors.labels(source="xds")._value.get() == 1
        reasons = agent.ready_reasons()
        assert any(r.startswith("configuration not published: cluster b") for r in reasons)
        _, text = await asyncio.to_thread(http_get, agent.admin.port, "/readyz")
        assert "configuration not published" in text

        # When it is consistent again, it is published and the reason is gone
        translator.current = resource_set(clusters=[eds_cluster("b")], endpoints=[cla("b", 81)])
        await adapter.events.put(SourceEvent("files", upserts=(raw("d"),)))
        await until(lambda: agent.cache.get("vm-1")[0] == 2, "publish after the fix")
        assert not any("not published" in r for r in agent.ready_reasons())

    await running(agent, body)


VS_REGEX = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: blobs, namespace: default}
spec:
  hosts: [blobs.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: blobs, namespace: default}
spec:
  hosts: [blobs.example.com]
  http:
  - match: [{uri: {regex: "^/blobs/(x)+$"}}]
    route: [{destination: {host: blobs.example.com}}]
"""


def test_a_nack_is_traced_to_the_resources_and_files_named_in_it() -> None:
    normalizer = Normalizer()
    texts = VS_REGEX.split("---")
    snapshot, _ = normalizer.apply([upsert(*texts, path="mesh/blobs.yaml")])
    proxy = ProxySpec(node_id="vm-1")
    served = Translator().generate(snapshot, proxy)
    explainer = NackExplainer()

    # By name: Envoy names the cluster
    error = "Error adding/updating cluster(s) outbound|8080||blobs.example.com: bad timeout"
    names, origins = explainer.explain(typeurls.CLUSTER, "3", error, served, snapshot, proxy)
    assert names == ["outbound|8080||blobs.example.com"]
    assert origins == ["ServiceEntry/default/blobs (mesh/blobs.yaml:2)"]

    # By content: a regex message names no resource, only the regex
    error = "regex '^/blobs/(x)+$' RE2 program size of 132 > max program size of 100"
    d = explainer.diagnostic(typeurls.ROUTE, "4", error, served, snapshot, proxy)
    assert d.name == "8080" and d.severity == "error" and d.source == "envoy"
    assert "VirtualService/default/blobs (mesh/blobs.yaml:" in d.reason
    assert d.location.startswith("mesh/blobs.yaml:")


def test_names_are_found_as_whole_tokens() -> None:
    served = resource_set(clusters=[eds_cluster("80"), eds_cluster("8080")])
    resources = served.of(typeurls.CLUSTER)
    assert named_in("Unexpected RDS configuration (expecting 8080): x", resources) == ["8080"]
    assert named_in("cluster '80': bad", resources) == ["80"]
    assert named_in("nothing here", resources) == []


def test_attribution_failure_leaves_the_error_standing() -> None:
    from meshagent.agent.publishing import inconsistency_diagnostics
    from meshagent.xds.consistency import ConsistencyChecker

    found = ConsistencyChecker().check(resource_set(clusters=[eds_cluster("outbound|80||b.x")]))
    not_a_snapshot: Any = frozenset()  # what a fake normalizer hands the agent
    [d] = inconsistency_diagnostics(found, not_a_snapshot, ProxySpec(node_id="vm-1"))
    assert d.location == "generated config" and "needs ClusterLoadAssignment" in d.reason


def entry(name: str, port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 10.0.0.1}}]
"""


async def test_two_ports_on_one_local_port_keep_the_last_good_listener(tmp_path: Path) -> None:
    # Given an agent whose outbound ports send 80 and 1080 both to local port 2080
    config = write_config(tmp_path, "mesh")
    with config.open("a") as f:
        f.write("outbound: {port_offset: 1000, ports: {80: 2080}}\n")
    adapter = QueueAdapter()
    agent = Agent(load_config(config), adapter_factory=lambda _: [adapter])

    def listeners() -> list[str]:
        return list(agent.served_resources().of(typeurls.LISTENER))

    async def body() -> None:
        first = upsert(entry("web", 80), path="mesh/web.yaml")
        await adapter.events.put(SourceEvent("files", upserts=first.upserts, synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "first publish")
        served = agent.served_resources()
        assert listeners() == ["127.0.0.1_2080"]

        # When a service on port 1080 arrives, nothing is published and the error names both
        second = upsert(entry("api", 1080), path="mesh/api.yaml")
        await adapter.events.put(SourceEvent("files", upserts=second.upserts))
        await until(lambda: bool(agent._inconsistent), "the check to fail")
        assert agent.served_resources() is served
        [error] = [d for d in agent.config_errors()["diagnostics"] if d["source"] == "xds"]
        assert "2 listeners are named 127.0.0.1_2080" in error["reason"]
        assert "ServiceEntry/default/web (mesh/web.yaml:2)" in error["reason"]
        assert "ServiceEntry/default/api (mesh/api.yaml:2)" in error["reason"]
        assert any("not published: 2 listeners" in r for r in agent.ready_reasons())

        # When it moves to another port, everything is published again
        moved = upsert(entry("api", 1081), path="mesh/api.yaml")
        await adapter.events.put(SourceEvent("files", upserts=moved.upserts))
        await until(lambda: agent.cache.get("vm-1")[0] == 2, "publish after the fix")
        assert sorted(listeners()) == ["127.0.0.1_2080", "127.0.0.1_2081"]
        assert not agent._inconsistent

    await running(agent, body)
