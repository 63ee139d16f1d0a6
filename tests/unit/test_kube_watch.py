"""The Kubernetes list+watch loop: relist diffs, 410 Gone, bookmarks, drops (no sockets but the
simulator's loopback HTTP, driven through the real `kubernetes` client)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshagent.adapters.kube_watch import StreamState
from meshagent.adapters.kubernetes import KubeOptions, KubernetesAdapter
from meshagent.model.source import SourceEvent
from meshagent.testing.kube_sim import KubeSim
from tests.polling import async_wait_for


def obj(name: str, rv: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv},
            "spec": spec}  # fmt: skip


def test_relist_emits_only_real_changes() -> None:
    state = StreamState()
    assert state.relist([obj("a", "1"), obj("b", "2")], "2") == ([obj("a", "1"), obj("b", "2")], [])
    # a new resourceVersion alone is no change; a missing object is a delete
    upserts, deletes = state.relist([obj("a", "7"), obj("c", "8", x=1)], "9")
    assert upserts == [obj("c", "8", x=1)] and deletes == [("ns", "b")]
    assert state.resource_version == "9"


def test_events_bookmarks_and_repeats() -> None:
    state = StreamState()
    state.relist([obj("a", "1")], "1")
    assert state.event("BOOKMARK", {"metadata": {"resourceVersion": "5"}}) == ([], [])
    assert state.resource_version == "5"
    assert state.event("ADDED", obj("a", "6")) == ([], [])  # same content: nothing to say
    assert state.event("MODIFIED", obj("a", "7", x=2)) == ([obj("a", "7", x=2)], [])
    assert state.event("DELETED", obj("a", "8")) == ([], [("ns", "a")])
    assert state.event("DELETED", obj("a", "9")) == ([], [])  # already gone
    assert state.resource_version == "9"


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    simulator = KubeSim(bookmark_interval_s=0.2).start()
    yield simulator
    simulator.stop()


async def _next(it: Any, timeout: float = 5.0) -> SourceEvent:
    while True:  # skip error reports: they are counted, not asserted on here
        event: SourceEvent = await asyncio.wait_for(it.__anext__(), timeout)
        if event.upserts or event.deletes or (event.synced and not event.errors):
            return event


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    await async_wait_for(condition, timeout=timeout, what="condition")


async def test_adapter_survives_drop_410_and_outage(sim: KubeSim, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(str(sim.token))
    sim.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "ns"}})
    options = KubeOptions(server=sim.url, token_file=token, watch_timeout_s=2, namespaces=("ns",),
                          kinds=("Service", "VirtualService"), backoff_cap_s=0.3)  # fmt: skip
    async with KubernetesAdapter(options) as adapter:
        it = adapter.watch().__aiter__()
        first = await _next(it)
        assert first.synced and [r.name for r in first.upserts] == ["a"]
        assert first.upserts[0].provenance.location.startswith("resourceVersion ")
        sim.apply(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "ns"}}
        )
        assert [r.name for r in (await _next(it)).upserts] == ["b"]
        # a cut watch resumes where it was: nothing is re-announced
        sim.drop_watches()
        sim.apply(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": "ns"}}
        )
        assert [r.name for r in (await _next(it)).upserts] == ["c"]
        # 410 Gone: relist; only the real change (b deleted meanwhile) comes out
        sim.compact()
        sim.delete("Service", "ns", "b")
        sim.drop_watches()
        event = await _next(it)
        assert event.upserts == () and event.deletes == (("kubernetes", "Service", "ns", "b"),)
        # the VirtualService stream relists on its own schedule: wait for it, with a deadline
        await _until(lambda: [s.relists for s in adapter.streams] == [2, 2])
        # API down, then back on the same port: a change made meanwhile flows, nothing flaps
        sim.stop()
        await asyncio.sleep(0.5)  # the outage itself (not a synchronisation)
        sim.start()
        sim.apply(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "d", "namespace": "ns"}}
        )
        event = await _next(it, 10.0)
        assert [r.name for r in event.upserts] == ["d"] and event.deletes == ()
        assert adapter.errors > 0


async def test_istio_kinds_fall_back_to_an_older_served_version(sim: KubeSim) -> None:
    vs: dict[str, Any] = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
          "metadata": {"name": "vs", "namespace": "ns"}, "spec": {"hosts": ["a"]}}  # fmt: skip
    sim.apply(vs)
    options = KubeOptions(
        server=sim.url, kinds=("VirtualService",), istio_versions=("v2", "v1beta1")
    )
    sim.token = None
    async with KubernetesAdapter(options) as adapter:
        first = await _next(adapter.watch().__aiter__())
        (raw,) = first.upserts
        assert raw.api_version == "networking.istio.io/v1beta1" and raw.kind == "VirtualService"


async def test_telemetry_is_read_at_its_own_versions(sim: KubeSim) -> None:
    # given a Telemetry at telemetry.istio.io/v1alpha1 (a group without v1beta1/v1alpha3),
    # when the adapter lists, then it is read at the first version served: v1
    telemetry: dict[str, Any] = {
        "apiVersion": "telemetry.istio.io/v1alpha1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"accessLogging": [{"providers": [{"name": "envoy"}]}]},
    }  # fmt: skip
    sim.apply(telemetry)
    sim.token = None
    async with KubernetesAdapter(KubeOptions(server=sim.url, kinds=("Telemetry",))) as adapter:
        (raw,) = (await _next(adapter.watch().__aiter__())).upserts
        assert (raw.api_version, raw.kind) == ("telemetry.istio.io/v1", "Telemetry")
        assert raw.body["spec"]["accessLogging"][0]["providers"] == [{"name": "envoy"}]


def test_simulator_crud_and_watch_410_through_the_client(sim: KubeSim) -> None:
    from kubernetes import client, watch

    cfg = client.Configuration()
    cfg.host = sim.url
    cfg.api_key = {"authorization": f"Bearer {sim.token}"}
    api = client.CustomObjectsApi(client.ApiClient(cfg))
    group, version, plural = "networking.istio.io", "v1", "workloadentries"
    body = {"apiVersion": f"{group}/{version}", "kind": "WorkloadEntry",
            "metadata": {"name": "vm-1"}, "spec": {"address": "10.0.0.1"}}  # fmt: skip
    created: Any = api.create_namespaced_custom_object(group, version, "ns", plural, body)
    meta = created["metadata"]
    assert meta["namespace"] == "ns" and meta["generation"] == 1 and meta["uid"]
    assert meta["resourceVersion"] and meta["creationTimestamp"]
    patched: Any = api.patch_namespaced_custom_object(
        group, version, "ns", plural, "vm-1", {"spec": {"address": "10.0.0.2"}}
    )
    assert patched["metadata"]["generation"] == 2 and patched["spec"]["address"] == "10.0.0.2"
    listed: Any = api.list_cluster_custom_object(group, "v1beta1", plural)
    assert listed["items"][0]["apiVersion"] == f"{group}/v1beta1"
    old = meta["resourceVersion"]
    sim.compact()
    with pytest.raises(client.ApiException) as gone:
        for _ in watch.Watch().stream(  # type: ignore[no-untyped-call]
            api.list_cluster_custom_object, group, version, plural, resource_version=old,
            timeout_seconds=2,
        ):  # fmt: skip
            pass
    assert gone.value.status == 410
    api.delete_namespaced_custom_object(group, version, "ns", plural, "vm-1")
    assert sim.get("WorkloadEntry", "ns", "vm-1") is None
    bad = client.Configuration()
    bad.host = sim.url
    with pytest.raises(client.ApiException) as denied:
        client.CustomObjectsApi(client.ApiClient(bad)).list_cluster_custom_object(
            group, version, plural
        )
    assert denied.value.status == 401


def _vs(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"hosts": [f"{name}.example.com"],
                     "http": [{"route": [{"destination": {"host": "web.ns.svc.cluster.local"}}]}],
                     **spec}}  # fmt: skip


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


async def _any_event(it: Any, timeout: float = 5.0) -> SourceEvent:
    event: SourceEvent = await asyncio.wait_for(it.__anext__(), timeout)
    return event


async def test_an_object_nested_too_deep_is_rejected_alone(sim: KubeSim) -> None:
    # given two VirtualServices the agent has accepted
    from meshagent.normalize.normalizer import Normalizer

    sim.token = None
    sim.apply(_vs("a"))
    sim.apply(_vs("deep"))
    options = KubeOptions(server=sim.url, kinds=("VirtualService",), watch_timeout_s=2,
                          backoff_cap_s=0.3)  # fmt: skip
    normalizer = Normalizer()
    async with KubernetesAdapter(options) as adapter:
        it = adapter.watch().__aiter__()
        first = await _next(it)
        assert sorted(r.name for r in first.upserts) == ["a", "deep"]
        snapshot, problems = normalizer.apply([first])
        assert len(snapshot.virtual_services) == 2, problems
        # when one is rewritten 1,000 levels deep (free-form fields allow it), then that
        # object alone is reported, located, and nothing of it is emitted
        sim.apply(_vs("deep", x=_nested(1000)))
        event = await _any_event(it)
        assert (event.upserts, event.deletes) == ((), ())
        (error,) = event.errors
        assert (error.kind, error.name, error.severity) == ("VirtualService", "ns/deep", "error")
        assert error.location.startswith("resourceVersion ") and "deeper than 100" in error.reason
        snapshot, _ = normalizer.apply([event])
        assert any("deep.example.com" in vs.hosts for vs in snapshot.virtual_services.values())
        # and the kind keeps flowing: no watch failed, a later change arrives
        sim.apply(_vs("c"))
        assert [r.name for r in (await _next(it)).upserts] == ["c"]
        assert adapter.errors == 0
        # a relist (410 Gone) does not report it again; deleting it deletes it. (No bookmark
        # meanwhile: one carrying the compacted revision would let the watch resume, as an API
        # server's may, and nothing would relist.)
        sim.bookmark_interval_s = 3600.0
        sim.compact()
        sim.drop_watches()
        await _until(lambda: adapter.streams[0].relists == 2)
        sim.bookmark_interval_s = 0.2
        sim.delete("VirtualService", "ns", "deep")
        event = await _any_event(it)
        assert event.deletes == (("kubernetes", "VirtualService", "ns", "deep"),)
        assert event.errors == ()
        sim.apply(_vs("deep", x=_nested(999)))
    # a fresh listing reports it beside the objects it lists
    async with KubernetesAdapter(options) as adapter:
        first = await _any_event(adapter.watch().__aiter__())
        assert first.synced and sorted(r.name for r in first.upserts) == ["a", "c"]
        assert adapter.errors == 0
        assert [(e.kind, e.name) for e in first.errors] == [("VirtualService", "ns/deep")]
