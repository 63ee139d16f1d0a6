"""Benchmark: full snapshot build, and the cost of pushing a one-endpoint change.

For N services x 10 endpoints (N = 1,000 and 10,000 by default), each size in its own
subprocess so that peak RSS is per size:
  build_s            normalize every ServiceEntry + translate to Envoy resources
  normalize_s, translate_s   the two parts of build_s
  full_push_bytes    bytes of the initial delta push of everything (CDS, EDS, LDS, RDS)
  delta_change_cpu_ms   agent CPU for one endpoint change: normalize + translate + delta
                        stream diff + serialize the responses (what gRPC would write)
  delta_change_bytes    bytes of those responses (target <= 1% of full_push_bytes)
  sotw_change_cpu_ms / sotw_change_bytes   the same change over a state-of-the-world stream
  peak_rss_mb        peak resident memory of the process
Targets (issue #2): build_s <= 0.5 at 10k; delta_change_cpu_ms <= 5; delta bytes <= 1%; RSS <= 300.

Usage: python benchmarks/translate_push.py [--sizes 1000,10000] [--endpoints 10]
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

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
)

from meshagent.gcpause import paused_gc
from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.delta import DeltaStream
from meshagent.xds.sotw import SotwStream
from meshagent.xds.translate import Translator

NODE = "bench"
TYPES = (typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE)


def service_entry(i: int, endpoints: int, generation: int = 0) -> RawResource:
    """ServiceEntry svc-<i> with `endpoints` static endpoints; generation moves endpoint 0."""
    name = f"svc-{i}"
    body: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "hosts": [f"{name}.bench.svc.cluster.local"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 8080 + i % 4, "name": "http", "protocol": "HTTP"}],
            "endpoints": [
                {
                    "address": f"10.{(i >> 8) & 255}.{i & 255}.{(e + generation) % 250 + 1}",
                    "labels": {"version": f"v{e % 2}"},
                }
                for e in range(endpoints)
            ],
        },
    }
    prov = Provenance("bench", f"bench:{i}", "ServiceEntry", "bench", name)
    return RawResource("bench", "ServiceEntry", "networking.istio.io/v1", "bench", name, body, prov)


def delta_requests(stream: DeltaStream, names: dict[str, list[str]]) -> list[Any]:
    out: list[Any] = []
    for type_url in TYPES:
        req = DeltaDiscoveryRequest(type_url=type_url)
        req.node.id = NODE
        if type_url in (typeurls.ENDPOINT, typeurls.ROUTE):
            req.resource_names_subscribe.extend(names[type_url])
        out += stream.on_request(req)
    return out


def sotw_requests(stream: SotwStream, names: dict[str, list[str]]) -> list[Any]:
    out: list[Any] = []
    for type_url in TYPES:
        req = DiscoveryRequest(type_url=type_url)
        req.node.id = NODE
        if type_url in (typeurls.ENDPOINT, typeurls.ROUTE):
            req.resource_names.extend(names[type_url])
        out += stream.on_request(req)
    return out


def ack_all(stream: Any, responses: list[Any], delta: bool, names: dict[str, list[str]]) -> None:
    """Settle every response (Envoy would ACK each); bounded by the number of responses."""
    pending = list(responses)
    for _ in range(100):
        if not pending:
            return
        nxt: list[Any] = []
        for resp in pending:
            if delta:
                req = DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce)
            else:
                req = DiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce,
                    version_info=resp.version_info,
                )
                if resp.type_url in (typeurls.ENDPOINT, typeurls.ROUTE):
                    req.resource_names.extend(names[resp.type_url])
            req.node.id = NODE
            nxt += stream.on_request(req)
        pending = nxt


def wire_bytes(responses: list[Any]) -> int:
    return sum(len(r.SerializeToString()) for r in responses)


def run_size(n: int, endpoints: int) -> dict[str, Any]:
    proxy = ProxySpec(node_id=NODE, namespace="bench", port_offset=10000)
    raws = [service_entry(i, endpoints) for i in range(n)]
    normalizer, translator = Normalizer(), Translator()
    # The agent pauses the cyclic GC around both passes (meshagent.gcpause): so do we.
    t0 = time.perf_counter()
    with paused_gc():
        snapshot, diagnostics = normalizer.apply([SourceEvent("bench", upserts=tuple(raws))])
    t1 = time.perf_counter()
    with paused_gc():
        resources = translator.generate(snapshot, proxy)
    t2 = time.perf_counter()
    errors = [str(d) for d in diagnostics if d.severity == "error"]
    names = {t: sorted(resources.of(t)) for t in TYPES}

    result: dict[str, Any] = {
        "services": n, "endpoints_per_service": endpoints, "config_errors": len(errors),
        "normalize_s": round(t1 - t0, 4), "translate_s": round(t2 - t1, 4),
        "build_s": round(t2 - t0, 4),
        "resources": {typeurls.SHORT_NAMES[t]: len(resources.of(t)) for t in TYPES},
    }
    for offset, (kind, stream_cls, requests) in enumerate((
        ("delta", DeltaStream, delta_requests), ("sotw", SotwStream, sotw_requests),
    )):
        stream = stream_cls(NODE)
        first = requests(stream, names) + stream.on_snapshot(1, resources)
        result[f"{kind}_full_push_bytes"] = wire_bytes(first)
        ack_all(stream, first, kind == "delta", names)
        resources = translator.generate(normalizer.snapshot, proxy)
        result.update(one_change(kind, stream, normalizer, translator, proxy, endpoints,
                                 names, first_generation=1 + 100 * offset))
    result["delta_change_bytes_pct_of_full"] = round(
        100 * result["delta_change_bytes"] / result["delta_full_push_bytes"], 4)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def one_change(kind: str, stream: Any, normalizer: Normalizer, translator: Translator,
               proxy: ProxySpec, endpoints: int, names: dict[str, list[str]],
               first_generation: int, rounds: int = 20) -> dict[str, Any]:
    """Median CPU and bytes of `rounds` one-endpoint changes pushed through `stream`."""
    cpu: list[float] = []
    sizes: list[int] = []
    for generation in range(first_generation, first_generation + rounds):
        raw = service_entry(generation % 7, endpoints, generation=generation)
        c0 = time.process_time()
        with paused_gc():
            snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=(raw,))])
            resources = translator.generate(snapshot, proxy)
        responses = stream.on_snapshot(snapshot.version, resources)
        size = wire_bytes(responses)
        cpu.append(time.process_time() - c0)
        sizes.append(size)
        ack_all(stream, responses, kind == "delta", names)
    cpu.sort()
    sizes.sort()
    return {
        f"{kind}_change_cpu_ms": round(1000 * cpu[len(cpu) // 2], 3),
        f"{kind}_change_cpu_ms_max": round(1000 * cpu[-1], 3),
        f"{kind}_change_bytes": sizes[len(sizes) // 2],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one, args.endpoints)))
        return 0
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--endpoints", str(args.endpoints)],
            check=True, capture_output=True, text=True, timeout=600,
        ).stdout
        results.append(json.loads(out))
    print(json.dumps({"benchmark": "translate_push", "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
