"""The agent's own metrics (issue 16): process, build, Envoy, certificate expiry as a
timestamp, and no `_created` series."""

from __future__ import annotations

import asyncio
import platform
import socket
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families as parse_text

from meshagent import __version__
from meshagent.agent.config import parse_config
from meshagent.agent.daemon import Agent
from meshagent.agent.metrics import AgentMetrics, MetricsObserver
from meshagent.agent.security import CertMetrics
from meshagent.model.identity import Identity

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }


def test_no_created_series_for_counters_and_histograms() -> None:
    metrics = AgentMetrics()
    observer = MetricsObserver(metrics)
    observer.pushed("vm", CDS, "1", 1, 0, 10)
    observer.acked("vm", CDS, "1", 0.01)
    metrics.convergence.observe(0.2)

    text = metrics.exposition().decode()

    assert 'meshagent_xds_pushes_total{type="cds"} 1.0' in text
    assert "meshagent_xds_ack_latency_seconds_count" in text
    assert "_created" not in text


def test_build_info_and_process_metrics() -> None:
    values = samples(AgentMetrics().exposition().decode())

    labels = (("python_version", platform.python_version()), ("version", __version__))
    assert values[("meshagent_build_info", labels)] == 1
    assert values[("meshagent_process_resident_memory_bytes", ())] > 0
    started = values[("meshagent_process_start_time_seconds", ())]
    assert time.time() - 3600 < started <= time.time()
    assert ("process_cpu_seconds_total", ()) not in values  # never the application's names


def test_envoy_up_and_restarts_are_read_at_scrape_time() -> None:
    metrics = AgentMetrics()
    assert "meshagent_envoy_up" not in metrics.exposition().decode()  # nothing to watch yet
    state = (True, 2)
    metrics.envoy.watch(lambda: state)

    values = samples(metrics.exposition().decode())
    assert values[("meshagent_envoy_up", ())] == 1
    assert values[("meshagent_envoy_restarts_total", ())] == 2

    state = (False, 3)
    values = samples(metrics.exposition().decode())
    assert values[("meshagent_envoy_up", ())] == 0
    assert values[("meshagent_envoy_restarts_total", ())] == 3


def test_certificate_expiry_is_an_absolute_timestamp_beside_the_seconds_left() -> None:
    metrics = AgentMetrics()
    watcher = CertMetrics(metrics)
    web = Identity("cluster.local", "shop", "web")
    not_after = time.time() + 3600.5

    watcher.cert_issued(web, not_after)
    watcher.cert_issued(web, not_after + 60)  # a rotation moves it

    values = samples(metrics.exposition().decode())
    key = (("identity", web.spiffe_id),)
    assert values[("meshagent_cert_expiry_timestamp_seconds", key)] == not_after + 60
    assert 3600 < values[("meshagent_cert_expiry_seconds", key)] <= 3661


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return str(response.read().decode())


async def test_the_agent_serves_both_pages_on_its_tcp_port(tmp_path: Path) -> None:
    # Given an agent whose Envoy (not managed) is not running
    config = parse_config(
        f"state_dir: {tmp_path}/state\nadmin: {{port: 0}}\nsources: {{files: null}}\n"
        f"envoy: {{admin_port: {_free_port()}}}\nmetrics: {{timeout: 1s}}\n",
        tmp_path / "agent.yaml",
    )
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        assert agent.admin is not None
        port = agent.admin.port
        # Then /metrics is the agent's alone, and the merged scrape says Envoy is down
        own = samples(await asyncio.to_thread(_get, port, "/metrics"))
        assert own[("meshagent_envoy_up", ())] == 0  # no ADS stream
        assert own[("meshagent_envoy_restarts_total", ())] == 0
        merged = samples(await asyncio.to_thread(_get, port, "/stats/prometheus"))
        assert merged[("meshagent_scrape_target_up", (("target", "envoy"),))] == 0
        assert ("meshagent_scrape_target_up", (("target", "app"),)) not in merged
    finally:
        await agent.stop()


async def test_the_workload_certificates_expiry_timestamp_is_its_not_after(
    tmp_path: Path,
) -> None:
    # Given an agent with a CA and one workload (so one certificate)
    config = parse_config(
        f"state_dir: {tmp_path}/state\nadmin: {{port: 0}}\nsources: {{files: null}}\n"
        "ca: {mode: self-signed, workload_ttl: 1h}\n"
        "workloads: [{name: web, namespace: shop, service_account: web, ports: [{port: 9080}]}]\n",
        tmp_path / "agent.yaml",
    )
    agent = Agent(config, adapter_factory=lambda cfg: [])
    await agent.start()
    try:
        assert agent.admin is not None
        (cert,) = agent._proxy.certificates
        # Then the scrape carries its notAfter as Unix time, and the seconds left beside it
        values = samples(await asyncio.to_thread(_get, agent.admin.port, "/metrics"))
        key = (("identity", "spiffe://cluster.local/ns/shop/sa/web"),)
        assert values[("meshagent_cert_expiry_timestamp_seconds", key)] == cert.not_after
        assert 3500 < values[("meshagent_cert_expiry_seconds", key)] <= 3600
    finally:
        await agent.stop()
