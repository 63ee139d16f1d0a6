"""The merged scrape with a real supervised Envoy and a real application metrics endpoint:
agent, Envoy and application series in one answer that prometheus_client's parser reads; the
application going down is reported in the answer, which stays a 200; an Envoy restart counts."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from tests.net_helpers import free_port
from tests.polling import async_wait_for

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "mesh"
DEADLINE_S = 30.0


@pytest.fixture
def app_endpoint() -> Iterator[ThreadingHTTPServer]:
    """An application's own Prometheus endpoint, as prometheus_client serves it."""
    registry = CollectorRegistry()
    Counter("shop_orders", "Orders taken", ["kind"], registry=registry).labels("book").inc(3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def scrape(port: int) -> tuple[int, str, dict[str, float]]:
    """(status, body, {series: value}) of the merged scrape; the body must parse and declare
    each family once."""
    url = f"http://127.0.0.1:{port}/stats/prometheus"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), {}
    # Each family declared once. (Not the parser's family names: it strips `_total`, so
    # Envoy's own envoy_cluster_upstream_rq and envoy_cluster_upstream_rq_total meet there.)
    declared = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a family declared twice"
    values: dict[str, float] = {}
    for family in parse_text(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return status, body, values


@pytest.mark.envoy
async def test_merged_scrape_with_real_envoy_and_application(
    tmp_path: Path, app_endpoint: ThreadingHTTPServer
) -> None:
    shutil.copytree(QUICKSTART, tmp_path / "mesh")
    app_port = int(app_endpoint.server_address[1])
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(
        f"node: {{id: it, namespace: demo}}\nstate_dir: state\nadmin: {{port: 0}}\n"
        f"envoy: {{manage: true, admin_port: {free_port()}, drain_seconds: 0}}\n"
        f"outbound: {{port_offset: {20000 + free_port() % 20000}}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 50}}\n"
        f"metrics: {{timeout: 2s, app: {{port: {app_port}, path: /metrics}}}}\n"
    )
    agent = Agent(load_config(config_path), envoy_output=subprocess.DEVNULL)
    await agent.start()
    try:
        assert agent.admin is not None and agent.envoy is not None
        port = agent.admin.port

        def merged_with_envoy() -> tuple[int, str, dict[str, float]] | None:
            result = scrape(port)
            return result if "envoy_server_live" in result[2] else None

        # When Prometheus scrapes the merged endpoint
        status, body, values = await async_wait_for(
            merged_with_envoy, timeout=DEADLINE_S, what="Envoy's stats merged", blocking=True
        )
        # Then one answer holds the agent's, Envoy's and the application's series
        assert status == 200
        assert values["envoy_server_live"] == 1
        assert any(k.startswith("envoy_cluster_manager_") for k in values)
        assert values['shop_orders_total{kind="book"}'] == 3
        assert values['meshagent_scrape_target_up{target="app"}'] == 1
        assert values['meshagent_scrape_target_up{target="envoy"}'] == 1
        assert values["meshagent_envoy_up"] == 1 and values["meshagent_envoy_restarts_total"] == 0
        assert "meshagent_process_cpu_seconds_total" in values
        # no prometheus_client `_created` series (Envoy has a real stat lb_subsets_created)
        assert not [k for k in values if k.split("{")[0].endswith("_created") and "envoy" not in k]

        # When the application goes down, the scrape still answers, and says so
        app_endpoint.shutdown()
        app_endpoint.server_close()
        status, body, values = await asyncio.to_thread(scrape, port)
        assert status == 200
        assert values['meshagent_scrape_target_up{target="app"}'] == 0
        assert values['meshagent_scrape_failures_total{target="app"}'] == 1
        assert "shop_orders_total" not in body and values["envoy_server_live"] == 1

        # When Envoy dies, the supervisor restarts it and the restart is counted
        first = agent.envoy.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        def restarted() -> dict[str, float] | None:
            values = scrape(port)[2]
            ok = values.get("meshagent_envoy_restarts_total") == 1
            return values if ok and values.get("meshagent_envoy_up") == 1 else None

        values = await async_wait_for(
            restarted, timeout=DEADLINE_S, what="Envoy restarted", blocking=True
        )
        assert agent.envoy.pid not in (None, first)
    finally:
        await asyncio.wait_for(agent.stop(), DEADLINE_S)


STATS_MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hello, namespace: default}
spec:
  hosts: [hello.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: APP_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.org]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: APP_PORT}}]
"""


def get(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


@pytest.mark.envoy
async def test_envoy_stats_carry_whole_cluster_names_as_istio_tags_them(
    tmp_path: Path, app_endpoint: ThreadingHTTPServer
) -> None:
    """Envoy's default tags stop at the first dot; the bootstrap's stats_tags (Istio's) keep
    a cluster's whole name in `cluster_name`, and the metric name clean."""
    app_port = int(app_endpoint.server_address[1])
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "se.yaml").write_text(STATS_MESH.replace("APP_PORT", str(app_port)))
    offset = 20000 + free_port() % 20000
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(
        f"node: {{id: it}}\nstate_dir: state\nadmin: {{port: 0}}\n"
        f"envoy: {{manage: true, admin_port: {free_port()}, drain_seconds: 0}}\n"
        f"outbound: {{port_offset: {offset}}}\n"
        "sources: {files: {paths: [mesh/], debounce_ms: 50}}\n"
    )
    agent = Agent(load_config(config_path), envoy_output=subprocess.DEVNULL)
    await agent.start()
    try:
        assert agent.admin is not None
        listener = f"http://127.0.0.1:{8080 + offset}/metrics"

        def served() -> bool:
            try:
                return get(listener, "hello.default.svc.cluster.local") == 200
            except OSError:
                return False

        await async_wait_for(served, timeout=DEADLINE_S, what="hello served", blocking=True)
        # When traffic went to both clusters
        assert get(listener, "api.example.org") == 200
        status, body, values = await asyncio.to_thread(scrape, agent.admin.port)
        assert status == 200
        # Then each cluster's series carry its whole name, under Istio's tag names
        hello = 'cluster_name="outbound|8080||hello.default.svc.cluster.local"'
        api = 'cluster_name="outbound|8080||api.example.org"'
        assert values[f"envoy_cluster_upstream_rq_total{{{hello}}}"] >= 1
        assert values[f"envoy_cluster_upstream_rq_total{{{api}}}"] == 1
        # (Envoy's counter envoy_cluster_upstream_rq{envoy_response_code=...}: the parser adds
        # _total; response codes keep Envoy's tag names, see xds/stats_tags.py)
        code = 'envoy_response_code="200"'
        assert values[f"envoy_cluster_upstream_rq_total{{{hello},{code}}}"] >= 1
        prefix = f'http_conn_manager_prefix="outbound_127.0.0.1_{8080 + offset}"'
        klass = 'envoy_response_code_class="2"'
        assert values[f"envoy_http_downstream_rq_xx_total{{{klass},{prefix}}}"] >= 2
        address = f'listener_address="127.0.0.1_{8080 + offset}"'
        assert values[f"envoy_listener_downstream_cx_total{{{address}}}"] >= 1
        # and no name keeps a piece of a host (Envoy's defaults would give
        # envoy_cluster_default_svc_cluster_local_upstream_rq_total)
        names = {k.split("{")[0] for k in values}
        assert not [n for n in names if "svc_cluster_local" in n or "example_org" in n]
        assert "envoy_cluster_default_svc_cluster_local_upstream_rq_total" not in body
    finally:
        await asyncio.wait_for(agent.stop(), DEADLINE_S)
