"""Benchmark: what the EnvoyFilter patch stage costs.

For N services x 10 endpoints (ports 8080-8083, so 4 outbound listeners and route
configurations, N clusters):
  translate_ms / translate_with_filters_ms   a full translation without EnvoyFilters and with
      two mesh-wide ones (a CLUSTER MERGE of every cluster, a Lua filter before the router of
      every outbound listener)
  endpoint_change_ms / endpoint_change_with_filters_ms   one endpoint moved: the incremental
      translation (normalize excluded)
  patch_stage_full_ms   the stage alone, patching every resource of the generated set
  no_filter_stage_us   the stage itself when no EnvoyFilter exists (the zero-cost path)

Best of three runs each. Usage: python benchmarks/envoyfilter_patch.py [--services 2000].
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.translate_push import service_entry
from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds.envoyfilter import PatchStage
from meshagent.xds.translate import Translator

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
NOOP_LUA = "function envoy_on_request(h) end"
FILTER_SPEC: dict[str, Any] = {
    "configPatches": [
        {
            "applyTo": "CLUSTER",
            "match": {"context": "SIDECAR_OUTBOUND"},
            "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}},
        },
        {
            "applyTo": "HTTP_FILTER",
            "match": {
                "context": "SIDECAR_OUTBOUND",
                "listener": {
                    "filterChain": {
                        "filter": {
                            "name": "envoy.filters.network.http_connection_manager",
                            "subFilter": {"name": "envoy.filters.http.router"},
                        }
                    }
                },
            },
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {
                    "name": "envoy.lua",
                    "typed_config": {
                        "@type": LUA,
                        "default_source_code": {
                            "inline_string": "function envoy_on_request(h) end"
                        },
                    },
                },
            },
        },
    ]
}


def envoy_filter() -> RawResource:
    body = {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "bench", "namespace": "istio-system"},
        "spec": FILTER_SPEC,
    }
    prov = Provenance("files", "bench.yaml:1")
    return RawResource(
        "files", "EnvoyFilter", body["apiVersion"], "istio-system", "bench", body, prov
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def measure(services: int, with_filters: bool) -> dict[str, float]:
    normalizer = Normalizer()
    raws = [service_entry(i, 10) for i in range(services)]
    if with_filters:
        raws.append(envoy_filter())
    snapshot, problems = normalizer.apply([SourceEvent("files", upserts=tuple(raws))])
    assert not [p for p in problems if p.severity == "error"], problems
    proxy = ProxySpec(node_id="bench")
    translator = Translator()
    start = time.perf_counter()
    translator.generate(snapshot, proxy)
    full = _ms(start)
    moved, _ = normalizer.apply([SourceEvent("files", upserts=(service_entry(7, 10, 1),))])
    start = time.perf_counter()
    translator.generate(moved, proxy)
    change = _ms(start)
    return {"translate_ms": full, "endpoint_change_ms": change}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=2000)
    args = parser.parse_args()
    runs = [(measure(args.services, False), measure(args.services, True)) for _ in range(3)]

    def best(which: int, key: str) -> float:
        return min(run[which][key] for run in runs)

    plain = {k: best(0, k) for k in ("translate_ms", "endpoint_change_ms")}
    patched = {k: best(1, k) for k in ("translate_ms", "endpoint_change_ms")}
    filtered = Normalizer().apply([SourceEvent("files", upserts=(envoy_filter(),))])[0]
    raws = tuple(service_entry(i, 10) for i in range(args.services))
    plain_snapshot = Normalizer().apply([SourceEvent("files", upserts=raws)])[0]
    generated = Translator().generate(plain_snapshot, ProxySpec(node_id="bench"))
    with_filters = dataclasses.replace(plain_snapshot, envoy_filters=filtered.envoy_filters)
    stage_runs = []
    for _ in range(3):
        start = time.perf_counter()
        PatchStage().apply(generated, with_filters, ProxySpec(node_id="bench"))
        stage_runs.append(_ms(start))
    empty = Normalizer().apply([])[0]
    stage, resources = PatchStage(), Translator().generate(empty, ProxySpec(node_id="b"))
    start = time.perf_counter()
    for _ in range(10000):
        stage.apply(resources, empty, ProxySpec(node_id="b"))
    no_filter_us = round((time.perf_counter() - start) * 1e6 / 10000, 3)
    print(
        json.dumps(
            {
                "services": args.services,
                "translate_ms": plain["translate_ms"],
                "translate_with_filters_ms": patched["translate_ms"],
                "endpoint_change_ms": plain["endpoint_change_ms"],
                "endpoint_change_with_filters_ms": patched["endpoint_change_ms"],
                "patch_stage_full_ms": min(stage_runs),
                "no_filter_stage_us": no_filter_us,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
