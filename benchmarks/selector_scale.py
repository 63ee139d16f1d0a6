"""Benchmark: ServiceEntries that select WorkloadEntries (Istio's serviceentry-workloadentry shape).

N ServiceEntries in one namespace, each with `workloadSelector: {app: svc-<i>}` and four
ports, and W WorkloadEntries per service labelled `app: svc-<i>`. Measured in-process, the
way the agent runs the two passes (cyclic GC paused):
  load_normalize_s, load_translate_s   the first full load
  change_ms_p50 / change_ms_max        one WorkloadEntry's address moves: normalize + translate
  change_matches                       how many endpoints that change touched (expect W)
  peak_rss_mb                          peak resident memory of the process

Before the selector index, one change re-evaluated every selector of the namespace against
every WorkloadEntry (N x N*W label matches); now it costs what the change touches.

Usage: python benchmarks/selector_scale.py [--sizes 1000,10000] [--instances 1] [--rounds 20]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshagent.gcpause import paused_gc
from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator

NS = "bench"


def _raw(kind: str, name: str, spec: dict[str, Any]) -> RawResource:
    body = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    prov = Provenance("bench", f"bench:{kind}:{name}", kind, NS, name)
    return RawResource("bench", kind, "networking.istio.io/v1", NS, name, body, prov)


def service_entry(i: int) -> RawResource:
    ports = [
        {"number": 80, "name": "http", "protocol": "HTTP"},
        {"number": 443, "name": "https", "protocol": "HTTPS"},
        {"number": 9090, "name": "grpc", "protocol": "GRPC"},
        {"number": 3306, "name": "tcp", "protocol": "TCP"},
    ]
    return _raw(
        "ServiceEntry",
        f"svc-{i}",
        {
            "hosts": [f"svc-{i}.{NS}.example"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": ports,
            "workloadSelector": {"labels": {"app": f"svc-{i}"}},
        },
    )


def workload_entry(i: int, w: int, generation: int = 0) -> RawResource:
    host = (i * 64 + w) % (1 << 24)
    last = (host + generation) & 255 or 1
    return _raw(
        "WorkloadEntry",
        f"svc-{i}-{w}",
        {
            "address": f"10.{(host >> 16) & 255}.{(host >> 8) & 255}.{last}",
            "labels": {"app": f"svc-{i}", "version": "v1"},
        },
    )


def run_size(n: int, instances: int, rounds: int) -> dict[str, Any]:
    proxy = ProxySpec(node_id="bench", namespace=NS, port_offset=10000)
    raws = [service_entry(i) for i in range(n)]
    raws += [workload_entry(i, w) for i in range(n) for w in range(instances)]
    normalizer, translator = Normalizer(), Translator()
    t0 = time.perf_counter()
    with paused_gc():
        snapshot, diagnostics = normalizer.apply([SourceEvent("bench", upserts=tuple(raws))])
    t1 = time.perf_counter()
    with paused_gc():
        resources = translator.generate(snapshot, proxy)
    t2 = time.perf_counter()
    errors = [str(d) for d in diagnostics if d.severity == "error"]
    times: list[float] = []
    matches = 0
    for generation in range(1, rounds + 1):
        raw = workload_entry(generation * 7 % n, 0, generation)
        c0 = time.perf_counter()
        with paused_gc():
            snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=(raw,))])
            translator.generate(snapshot, proxy)
        times.append(time.perf_counter() - c0)
        matches = len(snapshot.endpoints[f"svc-{generation * 7 % n}.{NS}.example"])
    times.sort()
    return {
        "services": n,
        "instances_per_service": instances,
        "config_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "load_normalize_s": round(t1 - t0, 3),
        "load_translate_s": round(t2 - t1, 3),
        "clusters": len(resources.of(typeurls.CLUSTER)),
        "change_ms_p50": round(1000 * times[len(times) // 2], 3),
        "change_ms_max": round(1000 * times[-1], 3),
        "change_matches": matches,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one, args.instances, args.rounds)))
        return 0
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [
                sys.executable, __file__, "--one", str(size),
                "--instances", str(args.instances), "--rounds", str(args.rounds),
            ],
            check=True, capture_output=True, text=True, timeout=1800,
        ).stdout
        results.append(json.loads(out))
    print(json.dumps({"benchmark": "selector_scale", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
