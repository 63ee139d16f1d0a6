"""Envoy's memory with every statistic (`envoy.stats.preset: all`, the default) and with
Istio's inclusion set (`preset: istio`), fed N EDS clusters of one endpoint over ADS from the
agent's bootstrap (`bootstrap_for`). Reports server.memory_allocated, RSS and the number of
statistics after all clusters are active.

    PYTHONPATH=. .venv/bin/python benchmarks/envoy_stats_memory.py --clusters 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from benchmarks._envoy import rss_mb, wait_until
from meshagent.agent.config import parse_config
from meshagent.agent.envoy import bootstrap_for
from meshagent.testing.envoy_process import EnvoyProcess
from meshagent.xds import typeurls
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.server import AdsServer

NODE = "vm-bench"


def _resources(n: int) -> ResourceSet:
    clusters, endpoints = [], []
    for i in range(n):
        name = f"outbound|80||svc-{i}.ns-{i % 10}.svc.cluster.local"
        cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        cluster.connect_timeout.FromMilliseconds(1000)
        cluster.eds_cluster_config.eds_config.ads.SetInParent()
        cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
        clusters.append(Resource.pack(name, cluster))
        lb = endpoint_components_pb2.LbEndpoint()
        sock = lb.endpoint.address.socket_address
        sock.address, sock.port_value = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8080
        cla = endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[lb])],
        )
        endpoints.append(Resource.pack(name, cla))
    return ResourceSet.build(
        {
            typeurls.CLUSTER: clusters,
            typeurls.ENDPOINT: endpoints,
            typeurls.LISTENER: [],
            typeurls.ROUTE: [],
        }
    )


def _stat(envoy: EnvoyProcess, name: str) -> int:
    body = envoy.admin_get(f"/stats?filter=^{name.replace('.', '[.]')}$&format=json").body
    for item in json.loads(body)["stats"]:
        if item.get("name") == name:
            return int(item["value"])
    return -1


async def measure(preset: str, n: int, resources: ResourceSet) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        text = (
            f"node: {{id: {NODE}}}\nstate_dir: {tmp}\nxds: {{uds: {tmp}/xds.sock}}\n"
            f"envoy: {{admin_port: 0, stats: {{preset: {preset}}}}}\n"
        )
        config = parse_config(text, path / "agent.yaml")
        cache = SnapshotCache()
        cache.set(NODE, resources)
        server = AdsServer(cache)
        await server.start(uds_path=str(config.xds.uds))
        envoy = EnvoyProcess(bootstrap_for(config), path, extra_args=("--concurrency", "2"))
        await asyncio.to_thread(envoy.start)
        try:
            await asyncio.to_thread(
                wait_until,
                lambda: _stat(envoy, "cluster_manager.active_clusters") >= n + 1,
                timeout=300,
                what=f"{n} active clusters",
                step=0.5,
            )
            await asyncio.sleep(2)  # let the warming settle
            stats = await asyncio.to_thread(envoy.admin_get, "/stats")
            proc = envoy.process
            return {
                "memory_allocated_mb": _stat(envoy, "server.memory_allocated") / 2**20,
                "rss_mb": rss_mb(proc.pid if proc else None),
                "stats": len(stats.body.splitlines()),
            }
        finally:
            await asyncio.to_thread(envoy.stop)
            await server.stop(0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clusters", type=int, default=4000)
    args = parser.parse_args()
    resources = _resources(args.clusters)
    for preset in ("all", "istio"):
        result = await measure(preset, args.clusters, resources)
        print(f"preset={preset:<6} clusters={args.clusters} " + " ".join(
            f"{k}={v:.1f}" for k, v in result.items()))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
