"""Benchmark: is memory flat under churn? (issue 17, item 4)

In one process, the agent's pipeline at N services x E endpoints (ServiceEntries, as
translate_push.py generates them): normalize, translate, publish to a SnapshotCache, push over
a DeltaStream that ACKs everything; then `--changes` one-endpoint changes the same way, with the
cyclic GC paused around each pass exactly as the agent does (meshagent.gcpause).

Prints one JSON document:
  rss_after_load_mb      RSS once the first full push is ACKed
  rss_after_changes_mb   RSS after the changes
  growth_pct             (after_changes - after_load) / after_load (target: within 10%)
  peak_rss_mb            high-water mark of the process (target: under 300 MB)
  frozen_garbage_objects  objects a full gc.collect() frees at the end (cyclic garbage kept
                         alive by gc.freeze between full collections)
  top_growth             with --trace: the largest tracemalloc differences (load -> end)

Usage: python benchmarks/memory_churn.py [--services 10000] [--endpoints 10] [--changes 100]
       [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.translate_push import NODE, ack_all, delta_requests, service_entry
from meshagent.gcpause import paused_gc
from meshagent.model import ProxySpec, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.delta import DeltaStream
from meshagent.xds.translate import Translator
from meshagent.xds.typeurls import ENDPOINT, ROUTE


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(services: int, endpoints: int, changes: int, trace: bool) -> dict[str, Any]:
    if trace:
        tracemalloc.start(8)
    proxy = ProxySpec(node_id=NODE, namespace="bench", port_offset=10000)
    normalizer, translator, cache = Normalizer(), Translator(), SnapshotCache()
    t0 = time.perf_counter()
    raws = tuple(service_entry(i, endpoints) for i in range(services))
    with paused_gc():
        snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=raws)])
        resources = translator.generate(snapshot, proxy)
    del raws
    version = cache.set(NODE, resources)
    names = {t: sorted(resources.of(t)) for t in (ENDPOINT, ROUTE)}
    stream = DeltaStream(NODE)
    first = delta_requests(stream, names) + stream.on_snapshot(version, resources)
    ack_all(stream, first, True, names)
    del first, resources, snapshot
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    before = tracemalloc.take_snapshot() if trace else None

    t1 = time.perf_counter()
    for generation in range(1, changes + 1):
        raw = service_entry(generation % 97, endpoints, generation=generation)
        with paused_gc():
            snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=(raw,))])
            resources = translator.generate(snapshot, proxy)
        version = cache.set(NODE, resources)
        ack_all(stream, stream.on_snapshot(version, resources), True, names)
        del snapshot, resources
    changes_s = time.perf_counter() - t1
    after_changes = rss_mb()
    result: dict[str, Any] = {
        "services": services,
        "endpoints_per_service": endpoints,
        "changes": changes,
        "load_s": round(load_s, 2),
        "changes_s": round(changes_s, 2),
        "rss_after_load_mb": after_load,
        "rss_after_changes_mb": after_changes,
        "growth_pct": round(100 * (after_changes - after_load) / after_load, 1),
        "peak_rss_mb": peak_mb(),
    }
    if before is not None:
        result["top_growth"] = top_growth(before)
    gc.unfreeze()
    result["frozen_garbage_objects"] = gc.collect()
    result["rss_after_full_collect_mb"] = rss_mb()
    return result


def top_growth(before: tracemalloc.Snapshot) -> list[dict[str, Any]]:
    """The largest allocation differences since `before`, by traceback."""
    diff = tracemalloc.take_snapshot().compare_to(before, "traceback")
    return [
        {
            "kib": round(d.size_diff / 1024),
            "count": d.count_diff,
            "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in d.traceback],
        }
        for d in diff[:8]
    ]


def write_mesh(
    mesh: Path,
    services: int,
    endpoints: int,
    files: int,
    generation: int = 0,
    only: int | None = None,
) -> None:
    """services ServiceEntries in `files` YAML files (atomic renames, as an editor does)."""
    per_file = -(-services // files)
    for f in range(files) if only is None else (only,):
        docs = [
            service_entry(i, endpoints, generation if i == f * per_file else 0).body
            for i in range(f * per_file, min(services, (f + 1) * per_file))
        ]
        tmp = mesh / f".tmp-{f}"
        tmp.write_text(yaml.safe_dump_all(docs))
        tmp.rename(mesh / f"mesh-{f:04d}.yaml")


async def run_agent(
    services: int, endpoints: int, changes: int, files: int, trace: bool
) -> dict[str, Any]:
    """The whole agent in this process (files source, no Envoy): RSS after load and changes."""
    if trace:
        tracemalloc.start(12)
    from meshagent.agent.config import load_config
    from meshagent.agent.daemon import Agent

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "mesh").mkdir()
        write_mesh(root / "mesh", services, endpoints, files)
        (root / "agent.yaml").write_text(
            "node: {id: bench, namespace: bench}\nstate_dir: state\nadmin: {port: 0}\n"
            "outbound: {port_offset: 10000}\n"
            "sources: {files: {paths: [mesh/], debounce_ms: 10}}\n"
        )
        agent = Agent(load_config(root / "agent.yaml"))
        t0 = time.perf_counter()
        await agent.start()
        try:
            await until(lambda: agent.cache.get(NODE)[0] >= 1, 600)
            load_s = time.perf_counter() - t0
            await asyncio.sleep(1)  # let the last-good save and any follow-up settle
            after_load = rss_mb()
            before = tracemalloc.take_snapshot() if trace else None
            t1 = time.perf_counter()
            for generation in range(1, changes + 1):
                version = agent.cache.get(NODE)[0]
                write_mesh(
                    root / "mesh", services, endpoints, files, generation, only=generation % files
                )
                await until(lambda v=version: agent.cache.get(NODE)[0] > v, 120)
            changes_s = time.perf_counter() - t1
            await asyncio.sleep(1)
            after_changes = rss_mb()
            top = top_growth(before) if before is not None else None
            gc.unfreeze()
            garbage = gc.collect()
            after_collect = rss_mb()
        finally:
            await agent.stop()
    return {
        "top_growth": top,
        "frozen_garbage_objects": garbage,
        "rss_after_full_collect_mb": after_collect,
        "mode": "agent",
        "services": services,
        "endpoints_per_service": endpoints,
        "files": files,
        "changes": changes,
        "load_s": round(load_s, 2),
        "changes_s": round(changes_s, 2),
        "rss_after_load_mb": after_load,
        "rss_after_changes_mb": after_changes,
        "growth_pct": round(100 * (after_changes - after_load) / after_load, 1),
        "peak_rss_mb": peak_mb(),
    }


async def until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the agent did not publish in time")
        await asyncio.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--trace", action="store_true", help="tracemalloc (slow, more memory)")
    parser.add_argument("--agent", action="store_true", help="the whole agent, files source")
    parser.add_argument("--files", type=int, default=100, help="--agent: mesh files")
    args = parser.parse_args()
    if args.agent:
        result = asyncio.run(
            run_agent(args.services, args.endpoints, args.changes, args.files, args.trace)
        )
        print(json.dumps(result, indent=1))
        return 0
    print(json.dumps(run(args.services, args.endpoints, args.changes, args.trace), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
