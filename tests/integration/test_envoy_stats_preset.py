"""`envoy.stats.preset` against a real Envoy. The default (`standard`) keeps a cluster's
request counters, tagged with its whole name, and drops its bookkeeping statistics; `all`
keeps both; `istio` drops per-cluster statistics while the server's and the agent's xDS
cluster's stay. What the status page and `proxy-config endpoints --from envoy` read
(/clusters, host-level counters outside the stats store) works with each."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshagent.agent.config import AgentConfig, parse_config
from meshagent.agent.config.envoy import EnvoyStatsConfig
from meshagent.agent.envoy import bootstrap_for
from meshagent.agent.envoyview import cluster_health, get_json
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.server import AdsServer
from tests.envoy_helpers import EnvoyProcess
from tests.net_helpers import free_port, http_get
from tests.polling import async_wait_for
from tests.xds_builders import cla, eds_cluster, http_listener, resource_set, route_config

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

NODE = "vm-stats"
BACKEND = "outbound|8080||backend.default.svc.cluster.local"
# Made with the cluster, before any request (bookkeeping the `standard` preset drops)
BOOKKEEPING = {
    f"cluster.{BACKEND}.{name}"
    for name in (
        "lb_subsets_active",
        "membership_change",
        "circuit_breakers.default.rq_open",
        "update_attempt",
        "version",
        "assignment_stale",
    )
}


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"up")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def upstream_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def _config(tmp_path: Path, preset: str | None) -> AgentConfig:
    stats = "" if preset is None else f", stats: {{preset: {preset}}}"
    text = (
        f"node: {{id: {NODE}}}\nstate_dir: {tmp_path}\nxds: {{uds: {tmp_path}/xds.sock}}\n"
        f"envoy: {{admin_port: 0{stats}}}\n"
    )
    return parse_config(text, tmp_path / "agent.yaml")


@pytest.mark.parametrize("preset", ["istio", "all", None])
async def test_presets_keep_what_they_say_and_the_clusters_page(
    tmp_path: Path, upstream_port: int, preset: str | None
) -> None:
    config = _config(tmp_path, preset)
    assert config.envoy.stats == EnvoyStatsConfig(preset or "standard")
    listen = free_port()
    cache = SnapshotCache()
    cache.set(
        NODE,
        resource_set(
            clusters=[eds_cluster(BACKEND)],
            endpoints=[cla(BACKEND, upstream_port)],
            listeners=[http_listener("http", listen, "local")],
            routes=[route_config("local", "hello", upstream=BACKEND)],
        ),
    )
    server = AdsServer(cache)
    await server.start(uds_path=str(config.xds.uds))
    envoy = EnvoyProcess(bootstrap_for(config), tmp_path)
    await asyncio.to_thread(envoy.start)
    try:
        url = f"http://127.0.0.1:{listen}/up"
        await async_wait_for(
            lambda: http_get(url).body == "up", blocking=True, timeout=30, what="/up via Envoy"
        )
        stats = (await asyncio.to_thread(envoy.admin_get, "/stats")).body.splitlines()
        names = {line.partition(":")[0] for line in stats}
        assert "server.memory_allocated" in names
        assert "cluster_manager.active_clusters" in names
        assert any(n.startswith("cluster.meshagent-xds.") for n in names)
        per_cluster = f"cluster.{BACKEND}.upstream_rq_total"
        assert (per_cluster in names) == (preset != "istio")
        if preset == "all":
            assert names >= BOOKKEEPING
        else:
            assert not BOOKKEEPING & names
            # ... the same names under cluster_manager (CDS's own) and RDS stay
            assert "cluster_manager.cds.update_attempt" in names
            assert "cluster_manager.cds.version" in names
        if preset is None:  # the default: health kept, and the counter under its whole name
            assert f"cluster.{BACKEND}.membership_healthy" in names
            scrape = (await asyncio.to_thread(envoy.admin_get, "/stats/prometheus")).body
            counter = f'envoy_cluster_upstream_rq_total{{cluster_name="{BACKEND}"}} '
            [line] = [x for x in scrape.splitlines() if x.startswith(counter)]
            assert int(line.rpartition(" ")[2]) >= 1

        # The status page and `proxy-config endpoints --from envoy` read /clusters.
        host, _, port = envoy.admin_address.rpartition(":")
        admin = SimpleNamespace(admin_address=host, admin_port=int(port))
        doc = await asyncio.to_thread(get_json, admin, "/clusters?format=json")
        [backend] = [c for c in cluster_health(doc) if c["name"] == BACKEND]
        [endpoint] = backend["endpoints"]
        assert endpoint["address"] == f"127.0.0.1:{upstream_port}"
        assert endpoint["health"] == "healthy"
        text = await asyncio.to_thread(envoy.clusters)
        assert f"{BACKEND}::127.0.0.1:{upstream_port}::rq_success::" in text
        success = [
            line
            for line in text.splitlines()
            if line.startswith(f"{BACKEND}::") and "rq_success" in line
        ]
        assert int(success[0].rpartition("::")[2]) >= 1  # host counters are kept either way
    finally:
        await asyncio.to_thread(envoy.stop)
        await server.stop(0)
