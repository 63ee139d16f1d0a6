"""Benchmark: the agent's own CPU per WorkloadEntry change, the whole agent in this process.

files_convergence.py's mesh (Istio's serviceentry-workloadentry shape: N ServiceEntries x 4
ports with a workloadSelector, N WorkloadEntries in one workloads.yaml), the agent with the
files source and no Envoy (the cache is published, nothing consumes it). Each change rewrites
workloads.yaml whole (temporary file, rename) with one entry's address moved, then waits until
the agent has published it, analyzed it and saved its last good (everything a change causes),
and takes the process CPU (every thread) over that window, less what the idle agent spends
over the same time (measured before the changes):
  cpu_ms_per_change_p50/p99/mean   the agent's CPU per change
  publish_ms_p50/p99               from the rename to the new snapshot in the cache
  idle_cpu_ms_per_s                the idle agent's CPU (subtracted above)
  first_analysis_ms                the analysis of the loaded mesh (cold, in a worker thread)
  thread_cpu_ms_per_change         CPU per change of each pass run in a worker thread (by
                                   function) and of the event loop's thread (not less idle)
--profile FILE: cProfile of the changes (the event loop's thread and every worker-thread call
through asyncio.to_thread, merged) written to FILE (pstats), the top 40 by cumulative time
printed to stderr.

Usage: python benchmarks/agent_change_cpu.py [--services 10000] [--changes 20] [--profile F]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.files_convergence import NEW, NS, OLD, service_entry, workload_entry
from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent

PORT = 18080
SETTLE_S = 1.6  # the last-good save runs 1 s after a change; the analysis 0.3 s after


class ThreadCpu:
    """CPU time (time.thread_time) of every function run through asyncio.to_thread, by name."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._original = asyncio.to_thread

    def install(self) -> None:
        original = self._original

        async def to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            target = args[0] if getattr(func, "__name__", "") == "_gc_paused" else func
            name = getattr(target, "__qualname__", repr(target))

            def run() -> Any:
                start = time.thread_time()
                try:
                    return func(*args, **kwargs)
                finally:
                    spent = 1000 * (time.thread_time() - start)
                    self.ms[name] = self.ms.get(name, 0.0) + spent

            return await original(run)

        asyncio.to_thread = to_thread  # type: ignore[assignment]

    def uninstall(self) -> None:
        asyncio.to_thread = self._original  # type: ignore[assignment]


class ThreadProfiles:
    """cProfile of every function run through asyncio.to_thread, merged."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._original = asyncio.to_thread

    def install(self) -> None:
        original = self._original

        async def to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            profile = cProfile.Profile()
            self.profiles.append(profile)

            def run() -> Any:
                return profile.runcall(func, *args, **kwargs)

            return await original(run)

        asyncio.to_thread = to_thread  # type: ignore[assignment]

    def uninstall(self) -> None:
        asyncio.to_thread = self._original  # type: ignore[assignment]


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the agent did not get there in time")
        await asyncio.sleep(0.005)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


async def run(n: int, changes: int, profile_to: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mesh = root / "mesh"
        mesh.mkdir()
        (mesh / "services.yaml").write_text("---\n".join(service_entry(i) for i in range(n)))
        entries = [workload_entry(i, OLD, PORT) for i in range(n)]
        workloads = mesh / "workloads.yaml"
        workloads.write_text("---\n".join(entries))
        (root / "agent.yaml").write_text(
            f"node: {{id: bench, cluster: meshagent, namespace: {NS}}}\nstate_dir: state\n"
            "admin: {port: 0}\noutbound: {port_offset: 10000}\n"
            "sources: {files: {paths: [mesh/], debounce_ms: 100, poll_interval_ms: 200}}\n"
        )
        agent = Agent(load_config(root / "agent.yaml"))
        node = agent.proxy.node_id
        t0 = time.perf_counter()
        await agent.start()
        try:
            clusters = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
            await until(lambda: len(agent.cache.get(node)[1].of(clusters)) >= 4 * n, 1800)
            load_s = time.perf_counter() - t0
            await until(lambda: not agent.analysis.stale(agent.snapshot), 600)
            first_analysis_ms = agent.analysis.report()["duration_ms"]
            await asyncio.sleep(SETTLE_S)
            c0 = time.process_time()
            await asyncio.sleep(3 * SETTLE_S)
            idle_per_s = (time.process_time() - c0) / (3 * SETTLE_S)
            profiles = ThreadProfiles()
            main = cProfile.Profile()
            threads = ThreadCpu()
            if profile_to:
                profiles.install()
                main.enable()
            else:
                threads.install()
            loop_cpu = time.thread_time()
            cpu: list[float] = []
            publish: list[float] = []
            at = [OLD] * n
            for k in range(changes):
                i = (k * 7919) % n
                at[i] = NEW if at[i] == OLD else OLD
                entries[i] = workload_entry(i, at[i], PORT)
                version = agent.cache.get(node)[0]
                tmp_file = workloads.with_name(".workloads.yaml.tmp")
                tmp_file.write_text("---\n".join(entries))
                c0, w0 = time.process_time(), time.perf_counter()
                os.replace(tmp_file, workloads)
                await until(lambda v=version: agent.cache.get(node)[0] > v, 600)
                publish.append(1000 * (time.perf_counter() - w0))
                await until(lambda: not agent.analysis.stale(agent.snapshot), 600)
                await asyncio.sleep(max(0.0, SETTLE_S - (time.perf_counter() - w0)))
                wall = time.perf_counter() - w0
                cpu.append(1000 * (time.process_time() - c0 - idle_per_s * wall))
            loop_cpu = time.thread_time() - loop_cpu
            threads.uninstall()
            if profile_to:
                main.disable()
                profiles.uninstall()
                stats = pstats.Stats(main)
                for p in profiles.profiles:
                    stats.add(p)
                stats.dump_stats(profile_to)
                stats.sort_stats("cumulative").print_stats(40)  # to stdout: moved below
        finally:
            await agent.stop()
    return {
        "services": n,
        "changes": changes,
        "profiled": bool(profile_to),
        "load_s": round(load_s, 1),
        "first_analysis_ms": first_analysis_ms,
        "idle_cpu_ms_per_s": round(1000 * idle_per_s, 1),
        "cpu_ms_per_change_p50": _pct(cpu, 0.5),
        "cpu_ms_per_change_p99": _pct(cpu, 0.99),
        "cpu_ms_per_change_mean": round(statistics.mean(cpu), 1),
        # each worker-thread pass's CPU, and the event loop's (including idle polls), per change
        "thread_cpu_ms_per_change": {
            "event_loop": round(1000 * loop_cpu / changes, 1),
            **{
                k: round(v / changes, 1) for k, v in sorted(threads.ms.items(), key=lambda i: -i[1])
            },
        },
        "publish_ms_p50": _pct(publish, 0.5),
        "publish_ms_p99": _pct(publish, 0.99),
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--profile", help="write a pstats file of the changes here")
    args = parser.parse_args()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the agent's logs and the profile printout: not the JSON
    try:
        result = asyncio.run(run(args.services, args.changes, args.profile))
    finally:
        sys.stdout = real_stdout
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
