"""Kubernetes Secrets: the simulator (through the real `kubernetes` client) and the adapter
(only the configured namespaces, only credential types, a 403 that does not stop the rest)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshagent.adapters.kubernetes import KubeOptions, KubernetesAdapter
from meshagent.agent.config import parse_config
from meshagent.agent.daemon import build_adapters
from meshagent.errors import ConfigError
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer
from meshagent.testing.kube_sim import KubeSim
from tests.credential_helpers import CA_PEM, secret_body, server_cert


@pytest.fixture
def sim() -> Iterator[KubeSim]:
    simulator = KubeSim(bookmark_interval_s=0.2).start()
    simulator.token = None
    yield simulator
    simulator.stop()


def _core(sim: KubeSim) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = sim.url
    return client.CoreV1Api(client.ApiClient(cfg))


def test_the_simulator_stores_secrets_as_the_api_server_does(sim: KubeSim) -> None:
    from kubernetes import client, watch

    api = _core(sim)
    pem = server_cert()
    body = {"metadata": {"name": "web"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": pem.cert, "tls.key": pem.key}}  # fmt: skip
    api.create_namespaced_secret("gw", body)
    read = api.read_namespaced_secret("web", "gw")
    assert read.string_data is None and read.type == "kubernetes.io/tls"
    assert sorted(read.data) == ["tls.crt", "tls.key"]
    with pytest.raises(client.ApiException) as bad:
        api.create_namespaced_secret("gw", {"metadata": {"name": "x"}, "type": "kubernetes.io/tls",
                                            "stringData": {"tls.crt": pem.cert}})  # fmt: skip
    assert bad.value.status == 422
    with pytest.raises(client.ApiException) as immutable:
        api.patch_namespaced_secret("web", "gw", {"type": "Opaque"})
    assert immutable.value.status == 422
    api.create_namespaced_secret("gw", {"metadata": {"name": "plain"}, "data": {"a": "eA=="}})
    assert api.read_namespaced_secret("plain", "gw").type == "Opaque"
    sa = {"metadata": {"name": "tok"}, "type": "kubernetes.io/service-account-token"}
    api.create_namespaced_secret("gw", sa)
    selector = "type!=kubernetes.io/service-account-token"
    listed = api.list_namespaced_secret("gw", field_selector=selector)
    assert sorted(i.metadata.name for i in listed.items) == ["plain", "web"]
    named = api.list_secret_for_all_namespaces(field_selector="metadata.name=web")
    assert [i.metadata.name for i in named.items] == ["web"]
    with pytest.raises(client.ApiException) as unsupported:
        api.list_namespaced_secret("gw", field_selector="data.x=1")
    assert unsupported.value.status == 400
    seen = [
        e["object"].metadata.name
        for e in watch.Watch().stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_secret, "gw", field_selector=selector, timeout_seconds=1
        )
    ]
    assert sorted(seen) == ["plain", "web"]


async def _next(it: Any, timeout: float = 5.0) -> SourceEvent:
    event: SourceEvent = await asyncio.wait_for(it.__anext__(), timeout)
    return event


def _options(sim: KubeSim, **kw: Any) -> KubeOptions:
    return KubeOptions(server=sim.url, kinds=(), watch_timeout_s=2, backoff_cap_s=0.3, **kw)


async def test_the_adapter_watches_credential_secrets_of_its_namespaces(sim: KubeSim) -> None:
    pem, new = server_cert(), server_cert()
    sim.apply(secret_body("web", "gw", tls_crt=pem.cert, tls_key=pem.key, ca_crt=CA_PEM))
    sim.apply(secret_body("other", "elsewhere", tls_crt=pem.cert, tls_key=pem.key))
    sim.apply(secret_body("tok", "gw", "kubernetes.io/service-account-token", token="t"))
    async with KubernetesAdapter(_options(sim, secret_namespaces=("gw",))) as adapter:
        it = adapter.watch().__aiter__()
        first = await _next(it)
        assert first.synced and [(r.namespace, r.name) for r in first.upserts] == [("gw", "web")]
        normalizer = Normalizer()
        snap, found = normalizer.apply([first])
        assert not found and snap.credentials["gw/web"].ca_cert_pem == CA_PEM
        sim.apply(secret_body("web", "gw", tls_crt=new.cert, tls_key=new.key))
        snap, _ = normalizer.apply([await _next(it)])
        assert snap.credentials["gw/web"].cert_chain_pem == new.cert
        sim.delete("Secret", "gw", "web")
        event = await _next(it)
        assert event.deletes == (("kubernetes", "Secret", "gw", "web"),)
    secret_requests = [r for r in sim.requests if "/secrets" in r]
    assert secret_requests and all("/namespaces/gw/secrets" in r for r in secret_requests)
    assert all("fieldSelector=type%21%3Dhelm.sh" in r for r in secret_requests)


async def test_no_secret_namespaces_no_secret_requests(sim: KubeSim) -> None:
    options = dataclasses.replace(_options(sim), kinds=("Service",))
    async with KubernetesAdapter(options) as adapter:
        assert (await _next(adapter.watch().__aiter__())).synced
    assert not [r for r in sim.requests if "/secrets" in r]


async def test_forbidden_secrets_are_an_error_and_the_rest_still_syncs(sim: KubeSim) -> None:
    sim.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "gw"}})
    sim.faults.status, sim.faults.path_prefix = 403, "/api/v1/namespaces/gw/secrets"
    options = dataclasses.replace(_options(sim, secret_namespaces=("gw",)), kinds=("Service",))
    async with KubernetesAdapter(options) as adapter:
        first = await _next(adapter.watch().__aiter__())
    assert first.synced and [r.name for r in first.upserts] == ["a"]
    assert len(first.errors) == 1 and "forbidden" in first.errors[0].reason


@pytest.mark.parametrize(
    ("node", "secrets", "want"),
    [
        ("{type: router, namespace: gw}", "", ("gw",)),
        ("{namespace: gw}", "", ()),
        ("{type: router}", "secrets: false", ()),
        ("{}", "secrets: [a, b]", ("a", "b")),
    ],
)
def test_secret_namespaces_from_the_config(
    tmp_path: Path, node: str, secrets: str, want: tuple[str, ...]
) -> None:
    text = f"node: {node}\nsources:\n  kubernetes:\n    server: http://x\n    {secrets}\n"
    config = parse_config(text, tmp_path / "agent.yaml")
    (adapter,) = [a for a in build_adapters(config) if isinstance(a, KubernetesAdapter)]
    assert adapter.options.secret_namespaces == want


def test_a_bad_secrets_value_is_located(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("sources:\n  kubernetes: {server: 'http://x', secrets: 3}\n", tmp_path / "a")
    assert "sources.kubernetes.secrets" in str(err.value)
