"""Benchmark: one WorkloadEntry change through the files adapter, in-process (no Envoy).

Istio's serviceentry-workloadentry shape (benchmarks/selector_scale.py's generators): N
ServiceEntries in services.yaml, N-1 WorkloadEntries in workloads.yaml, and the last
WorkloadEntry alone in small.yaml. Each round rewrites small.yaml the way editors and ansible
do (write a temporary file, rename it into place) with the entry's address moved, and measures
from the rename to
  event_ms      the files adapter yielding the SourceEvent
  snapshot_ms   that event normalized and translated (what the agent publishes)
Also reported: the adapter's own processing time of that event (process_ms, a wrapped
FilesAdapter._process) and the initial listing.

--in-big changes the middle entry of workloads.yaml instead (the whole file rewritten).

Usage: python benchmarks/files_change.py [--sizes 1000,10000] [--rounds 30]
       [--debounce-ms 100] [--poll-ms 200] [--in-big]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.selector_scale import NS, service_entry, workload_entry
from meshagent.adapters.files import FilesAdapter
from meshagent.gcpause import paused_gc
from meshagent.model import ProxySpec
from meshagent.normalize import Normalizer
from meshagent.xds.translate import Translator


def _dump(raws: list[Any]) -> str:
    return yaml.safe_dump_all([r.body for r in raws], sort_keys=False)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


async def run_size(
    n: int, rounds: int, debounce_ms: int, poll_ms: int, in_big: bool
) -> dict[str, Any]:
    proxy = ProxySpec(node_id="bench", namespace=NS, port_offset=10000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mesh"
        root.mkdir()
        (root / "services.yaml").write_text(_dump([service_entry(i) for i in range(n)]))
        big = [workload_entry(i, 0) for i in range(n - 1)]
        (root / "workloads.yaml").write_text(_dump(big))
        small = root / "small.yaml"
        small.write_text(_dump([workload_entry(n - 1, 0)]))
        if in_big:  # the entry that changes is the middle one of workloads.yaml
            small, target = root / "workloads.yaml", n // 2
        adapter = FilesAdapter([root], debounce_ms=debounce_ms, poll_interval_ms=poll_ms)
        process_times: list[float] = []
        original = adapter._process

        def timed(scan: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(scan)
            finally:
                process_times.append(time.perf_counter() - t)

        adapter._process = timed  # type: ignore[method-assign]
        normalizer, translator = Normalizer(), Translator()
        event_ms: list[float] = []
        snapshot_ms: list[float] = []
        async with adapter:
            events = adapter.watch().__aiter__()
            t0 = time.perf_counter()
            first = await events.__anext__()
            t1 = time.perf_counter()
            with paused_gc():
                snapshot, _ = normalizer.apply([first])
                translator.generate(snapshot, proxy)
            t2 = time.perf_counter()
            process_times.clear()
            for generation in range(1, rounds + 1):
                if in_big:
                    big[target] = workload_entry(target, 0, generation + 1)  # gen 1 == gen 0 here
                    text = _dump(big)
                else:
                    text = _dump([workload_entry(n - 1, 0, generation)])
                await asyncio.sleep(0.05)  # not in step with the poll
                start = time.perf_counter()
                await asyncio.to_thread(_replace, small, text)
                event = await events.__anext__()
                got = time.perf_counter()
                with paused_gc():
                    snapshot, _ = normalizer.apply([event])
                    translator.generate(snapshot, proxy)
                done = time.perf_counter()
                assert len(event.upserts) == 1, event
                event_ms.append(1000 * (got - start))
                snapshot_ms.append(1000 * (done - start))
        process_ms = [1000 * t for t in process_times]
    return {
        "services": n,
        "changed_file": "workloads.yaml (n-1 entries)" if in_big else "small.yaml (1 entry)",
        "debounce_ms": debounce_ms,
        "poll_interval_ms": poll_ms,
        "load_listing_s": round(t1 - t0, 3),
        "load_snapshot_s": round(t2 - t0, 3),
        "event_ms_p50": _pct(event_ms, 0.5),
        "event_ms_p99": _pct(event_ms, 0.99),
        "process_ms_p50": _pct(process_ms, 0.5),
        "process_ms_p99": _pct(process_ms, 0.99),
        "snapshot_ms_p50": _pct(snapshot_ms, 0.5),
        "snapshot_ms_p99": _pct(snapshot_ms, 0.99),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--debounce-ms", type=int, default=100)
    parser.add_argument("--poll-ms", type=int, default=200)
    parser.add_argument("--in-big", action="store_true", help="change an entry of the big file")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size
    args = parser.parse_args()
    if args.one:
        result = asyncio.run(
            run_size(args.one, args.rounds, args.debounce_ms, args.poll_ms, args.in_big)
        )
        print(json.dumps(result))
        return 0
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size), "--rounds", str(args.rounds)]
        command += ["--debounce-ms", str(args.debounce_ms), "--poll-ms", str(args.poll_ms)]
        command += ["--in-big"] if args.in_big else []
        out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
        results.append(json.loads(out.stdout))
    print(json.dumps({"benchmark": "files_change", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
