"""Benchmark: the cost of `meshagent analyze`'s checks on a large mesh.

For N services (N = 1,000 and 10,000 by default), each a ServiceEntry with 10 endpoints
(labels app, version v1/v2), a VirtualService with two matched rules and a default one to
subsets, a DestinationRule with two subsets, and one AuthorizationPolicy per 10 services:
  normalize_s        building the snapshot (for scale; not part of the analysis)
  analyze_ms         the running agent's analysis of a snapshot (AgentAnalysis.run: gather
                     the accepted documents, run every check), the best of 3 (the first
                     run computes everything; later ones reuse per-object results)
  analyze_ms_runs    the 3 runs (the first: cold)
  capture_ms         of analyze_ms, reading the normalizer (the agent holds its lock for it)
  analyze_after_endpoint_change_ms   the run after a one-endpoint change
  messages           messages found (0: the generated mesh is clean)
  render_ms          /debug/analyze's report from the kept messages
Each size runs in its own subprocess.

Usage: python benchmarks/analyze_scale.py [--sizes 1000,10000]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshagent.agent.analysis_runtime import AgentAnalysis
from meshagent.gcpause import paused_gc
from meshagent.model import Provenance, RawResource, SourceEvent
from meshagent.normalize import Normalizer

NET = "networking.istio.io/v1"


def _raw(kind: str, name: str, spec: dict[str, Any], api: str = NET) -> RawResource:
    body = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "bench"},
        "spec": spec,
    }
    prov = Provenance("files", f"/mesh/{name}.yaml:1", kind, "bench", name)
    return RawResource("files", kind, api, "bench", name, body, prov)


def mesh(n: int) -> list[RawResource]:
    """The documents of n services (see the module docstring)."""
    out = []
    for i in range(n):
        host = f"svc-{i}.bench.svc.cluster.local"
        endpoints = [
            {"address": f"10.{i // 250}.{i % 250}.{j + 1}", "labels": {"version": f"v{j % 2 + 1}"}}
            for j in range(10)
        ]
        out.append(_raw("ServiceEntry", f"svc-{i}", {
            "hosts": [host], "resolution": "STATIC", "endpoints": endpoints,
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}))  # fmt: skip
        to = [{"destination": {"host": host, "subset": "v1"}}]
        out.append(_raw("VirtualService", f"svc-{i}", {"hosts": [host], "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "route": to},
            {"match": [{"headers": {"x-canary": {"exact": "1"}}}], "route": to},
            {"route": to}]}))  # fmt: skip
        out.append(_raw("DestinationRule", f"svc-{i}", {"host": host, "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}]}))  # fmt: skip
        if i % 10 == 0:
            out.append(_raw("AuthorizationPolicy", f"svc-{i}", {
                "selector": {"matchLabels": {"version": "v1"}},
                "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]},
                api="security.istio.io/v1"))  # fmt: skip
    return out


def measure(n: int) -> dict[str, Any]:
    documents = mesh(n)
    normalizer = Normalizer()
    start = time.perf_counter()
    snapshot, _ = normalizer.apply([SourceEvent("files", upserts=tuple(documents))])
    normalize_s = time.perf_counter() - start
    analysis = AgentAnalysis(None, lambda: [])
    runs, captures = [], []
    for _ in range(3):
        start = time.perf_counter()
        with paused_gc():  # as the agent runs it (daemon._gc_paused)
            captured = analysis.capture(snapshot, normalizer)
            captures.append((time.perf_counter() - start) * 1000)
            analysis.analyze(captured)
        runs.append((time.perf_counter() - start) * 1000)
    # the agent after a one-endpoint change: a new snapshot, most objects the same
    moved = dict(documents[0].body)
    spec = dict(moved["spec"])
    spec["endpoints"] = [{**spec["endpoints"][0], "address": "10.250.0.1"}, *spec["endpoints"][1:]]
    moved["spec"] = spec
    change = RawResource(**{**{f: getattr(documents[0], f) for f in (
        "source", "kind", "api_version", "namespace", "name", "provenance", "lines")},
        "body": moved})  # fmt: skip
    snapshot, _ = normalizer.apply([SourceEvent("files", upserts=(change,))])
    start = time.perf_counter()
    with paused_gc():
        analysis.run(snapshot, normalizer)
    change_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    report = analysis.report()
    render_ms = (time.perf_counter() - start) * 1000
    return {
        "services": n,
        "normalize_s": round(normalize_s, 2),
        "analyze_ms": round(min(runs), 1),
        "analyze_ms_runs": [round(r, 1) for r in runs],
        "capture_ms": round(min(captures), 1),
        "analyze_after_endpoint_change_ms": round(change_ms, 1),
        "messages": len(report["messages"]),
        "render_ms": round(render_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size)], check=True, capture_output=True
        )
        results.append(json.loads(out.stdout))
    print(json.dumps({"benchmark": "analyze_scale", "results": results}, indent=2))


if __name__ == "__main__":
    main()
