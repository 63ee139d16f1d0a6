"""Benchmark: what an Envoy spends applying N services' clusters (4 per service, the
serviceentry-workloadentry shape of files_convergence.py) from a CDS file, by statistics
configuration and cluster options (issue 17: which part of the initial load is Envoy's).

One Envoy per variant, one after the other, timed from its start until every cluster is
active (`cluster_manager.active_clusters`, polled every 50 ms), with its CPU seconds.
  --stats   envoy: Envoy's default stats_config (no deferred statistics)
            envoy-deferred: the same with deferred statistics
            agent: the agent's (its tags, deferred statistics, and the stats_matcher of the
                   default `envoy.stats.preset: standard`; files_convergence --files-stats)
            agent-all, agent-istio: the same with `preset: all` (no matcher), or `istio`
            agent-no-cluster-tag: the agent's without the `cluster_name` tag
            agent-regex: the agent's with --regex as the `cluster_name` tag's regex
  --clusters  minimal, or agent: the agent's cluster options (files_convergence
            --files-clusters agent; endpoints inline either way)

Usage: python benchmarks/envoy_cluster_load.py [--services 1000] [--stats agent,envoy]
       [--clusters minimal] [--regex R]
Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._envoy import cpu_s, envoy_binary, envoy_stats, free_port, wait_until
from benchmarks.files_convergence import ENVOY_ARGS, PORTS, files_bootstrap, static_clusters

STATS = (
    "envoy",
    "envoy-deferred",
    "agent",
    "agent-all",
    "agent-istio",
    "agent-no-cluster-tag",
    "agent-regex",
)


def bootstrap(root: Path, n: int, stats: str, regex: str, like_agent: bool) -> tuple[Path, int]:
    body = ",".join(
        c for i in range(n) for c in static_clusters(i, "127.0.0.1", 9, PORTS, like_agent)
    )
    cds = root / "cds.json"
    cds.write_text(f'{{"version_info":"1","resources":[{body}]}}')
    admin = free_port()
    preset = stats.removeprefix("agent-") if stats in ("agent-all", "agent-istio") else "standard"
    config: dict[str, Any] = files_bootstrap(
        admin, free_port(), cds, 1, "envoy" if stats.startswith("envoy") else "agent", preset
    )
    if stats == "envoy-deferred":
        config["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    tags = config.get("stats_config", {}).get("stats_tags", [])
    if stats == "agent-no-cluster-tag":
        tags[:] = [t for t in tags if t["tag_name"] != "cluster_name"]
    if stats == "agent-regex":
        for tag in tags:
            if tag["tag_name"] == "cluster_name":
                tag["regex"] = regex
    path = root / "bootstrap.json"
    path.write_text(json.dumps(config))
    return path, admin


def run(n: int, stats: str, regex: str, like_agent: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path, admin = bootstrap(Path(tmp), n, stats, regex, like_agent)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [envoy_binary(), "-c", str(path), *ENVOY_ARGS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def active() -> bool:
                try:
                    got = envoy_stats(admin, "cluster_manager.active_clusters")
                except OSError:
                    return False
                return got.get("cluster_manager.active_clusters", 0) >= len(PORTS) * n

            wait_until(active, timeout=600, what="every cluster active", step=0.05)
            return {
                "services": n,
                "clusters": len(PORTS) * n,
                "stats": stats,
                "cluster_options": "agent" if like_agent else "minimal",
                "active_s": round(time.perf_counter() - started, 2),
                "envoy_cpu_s": round(cpu_s(proc.pid), 2),
                "envoy_memory_allocated_mb": round(
                    envoy_stats(admin, "server.memory_allocated")["server.memory_allocated"] / 1e6,
                    1,
                ),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--stats", default="agent,envoy", help=f"comma-separated: {STATS}")
    parser.add_argument("--clusters", choices=("minimal", "agent"), default="minimal")
    parser.add_argument("--regex", default="", help="the cluster_name regex for agent-regex")
    args = parser.parse_args()
    for stats in args.stats.split(","):
        if stats not in STATS:
            parser.error(f"--stats: {stats!r} is not one of {STATS}")
        result = run(args.services, stats, args.regex, args.clusters == "agent")
        print(json.dumps({"benchmark": "envoy_cluster_load", **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
