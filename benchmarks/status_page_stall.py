"""Benchmark: how long the status page (GET /) stalls the agent's event loop at scale.

A synthetic Envoy admin (a loopback `python -m http.server` serving /clusters?format=json and
/server_info bodies shaped like Envoy 1.40's) with C clusters of H hosts each, and a report of
as many services (a MeshSnapshot of ServiceEntries, built by the normalizer). The view cache
is invalidated before each view, so every view fetches, parses, and drops the previous view,
as when the kept view has expired.
While views run, a ticker on the same loop sleeps 1 ms at a time and records how late it
wakes: that lateness is what the xDS server and the admin endpoints would wait.
  stall_ms_max / stall_ms_p99   ticker lateness during the views
  idle_stall_ms_max / _p99      the same for 2 s without views (the machine's own noise)
  debug_status_*                the same for GET /debug/status (the JSON of `meshagent status`)
  view_ms_p50                   one page view, end to end
  clusters_json_mb              size of the /clusters body

Usage: python benchmarks/status_page_stall.py [--clusters 10000] [--hosts 10] [--views 3]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._envoy import free_port, percentile, wait_until
from meshagent.agent.admin import Request
from meshagent.agent.opspages import EnvoyViewCache, install_ops_pages, status_page
from meshagent.agent.statuspage import mesh_report
from meshagent.gcpause import paused_gc
from meshagent.model import Provenance, RawResource, SourceEvent
from meshagent.normalize import Normalizer

COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
GAUGES = ("cx_active", "rq_active")


def host(i: int, j: int) -> dict[str, Any]:
    stats = [{"name": k, **({"value": str(j + 1)} if k in ("rq_total", "rq_success") else {})}
             for k in COUNTERS]  # fmt: skip
    stats += [{"type": "GAUGE", "name": k} for k in GAUGES]
    return {
        "address": {"socket_address": {"address": f"10.{i // 250 % 250}.{i % 250}.{j}",
                                       "port_value": 8080}},
        "stats": stats,
        "health_status": {"eds_health_status": "HEALTHY"},
        "weight": 1,
        "locality": {},
    }  # fmt: skip


def clusters_doc(clusters: int, hosts: int) -> dict[str, Any]:
    return {"cluster_statuses": [
        {"name": f"outbound|8080||svc-{i}.bench.svc.cluster.local",
         "observability_name": f"outbound|8080||svc-{i}.bench.svc.cluster.local",
         "added_via_api": True,
         "circuit_breakers": {"thresholds": [{"max_connections": 4294967295}]},
         "host_statuses": [host(i, j) for j in range(hosts)]}
        for i in range(clusters)
    ]}  # fmt: skip


def snapshot(services: int, hosts: int) -> Any:
    """A MeshSnapshot of services ServiceEntries with hosts endpoints each."""
    raws = []
    for i in range(services):
        name = f"svc-{i}"
        body = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"hosts": [f"{name}.bench.svc.cluster.local"], "resolution": "STATIC",
                         "location": "MESH_INTERNAL",
                         "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
                         "endpoints": [{"address": f"10.{i // 250 % 250}.{i % 250}.{j}"}
                                       for j in range(hosts)]}}  # fmt: skip
        prov = Provenance("bench", f"bench:{name}", "ServiceEntry", "bench", name)
        raws.append(RawResource("bench", "ServiceEntry", body["apiVersion"], "bench", name,
                                body, prov))  # fmt: skip
    with paused_gc():
        return Normalizer().apply([SourceEvent("bench", upserts=tuple(raws))])[0]


class FakeAgent:
    """What the status page reads of the Agent, built as the Agent builds it."""

    def __init__(self, envoy: Any, mesh: Any) -> None:
        self.config = SimpleNamespace(envoy=envoy)
        self.snapshot = mesh

    def status_report(self, *, mesh: bool = True) -> dict[str, Any]:
        return {
            "node": "bench", "not_ready": [], "sources": [{"name": "files", "synced": True}],
            "mesh": mesh_report(self.snapshot) if mesh else None,
            "certificates": [], "diagnostics": [],
            "xds": {"connected": True, "stream": "delta", "types": {}},
        }  # fmt: skip


async def measure(agent: FakeAgent, views: int) -> dict[str, Any]:
    lateness: list[float] = []
    running = True

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while running:
            start = loop.time()
            await asyncio.sleep(0.001)
            lateness.append((loop.time() - start - 0.001) * 1000)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(2.0)  # the ticker alone: what the machine's load costs it
    idle, lateness[:] = list(lateness), []
    view_ms = []
    cache = EnvoyViewCache()
    for _ in range(views):
        cache.invalidate()  # as when the kept view has expired
        start = time.perf_counter()
        response = await status_page(agent, Request("GET", "/?refresh=0", {}), cache)
        view_ms.append((time.perf_counter() - start) * 1000)
        assert response.status == 200 and b"svc-1.bench" in response.body
    page, lateness[:] = list(lateness), []
    debug_ms = []
    admin = SimpleNamespace(pages={}, request_pages={}, actions={})
    install_ops_pages(admin, agent)  # type: ignore[arg-type]
    for _ in range(views):
        start = time.perf_counter()
        answer = admin.pages["/debug/status"]()
        response = await answer if inspect.isawaitable(answer) else answer
        debug_ms.append((time.perf_counter() - start) * 1000)
        assert response.status == 200 and b"svc-1.bench" in response.body
    running = False
    await tick
    return {
        "idle_stall_ms_max": round(max(idle), 1),
        "idle_stall_ms_p99": percentile(idle, 0.99),
        "stall_ms_max": round(max(page), 1),
        "stall_ms_p99": percentile(page, 0.99),
        "view_ms_p50": percentile(view_ms, 0.5),
        "debug_status_stall_ms_max": round(max(lateness), 1),
        "debug_status_stall_ms_p99": percentile(lateness, 0.99),
        "debug_status_ms_p50": percentile(debug_ms, 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--views", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        body = json.dumps(clusters_doc(args.clusters, args.hosts), indent=1).encode()
        (Path(tmp) / "clusters").write_bytes(body)  # the server ignores ?format=json
        (Path(tmp) / "server_info").write_text(json.dumps({"version": "x/1.40.0/Clean/RELEASE",
                                                           "state": "LIVE"}))  # fmt: skip
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "-d", tmp, str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            envoy = SimpleNamespace(admin_address="127.0.0.1", admin_port=port)
            wait_until(lambda: _serving(port), timeout=10, what="the synthetic Envoy admin")
            agent = FakeAgent(envoy, snapshot(args.clusters, args.hosts))
            result = asyncio.run(measure(agent, args.views))
        finally:
            server.terminate()
            server.wait()
    size = round(len(body) / 1e6, 1)
    print(json.dumps({"clusters": args.clusters, "hosts": args.hosts, "clusters_json_mb": size,
                      **result}, indent=2))  # fmt: skip


def _serving(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
