"""Benchmark: one sidecar at 10k services, without and with a Sidecar scoping it to 100.

The mesh: N ServiceEntries (default 10,000) with E static endpoints each; 100 of them in the
proxy's namespace `app`, the rest in `bench`. "scoped" adds a Sidecar in `app` with
`egress: [{hosts: ["./*"]}]`. For each case:

  in-process (the agent's normalizer and translator, no I/O):
    clusters, endpoints, listeners, routes   resources generated for the proxy
    config_bytes        serialized size of all of them (what a full push carries)
    translate_s         first full translation (normalize excluded)
    change_in_scope_ms / change_out_of_scope_ms
                        normalize + translate of a one-endpoint change of a service inside /
                        outside the scope (median of 20)
  real agent + real Envoy (`meshagent run` from files, Envoy from `meshagent bootstrap`):
    push_s              agent start until Envoy has every expected cluster active
    envoy_clusters      Envoy's cluster_manager.active_clusters (its static ones included)
    envoy_allocated_mb / envoy_heap_mb   Envoy's /memory (allocated, heap_size) once converged
    envoy_rss_mb        Envoy's resident memory (from /proc)

Usage: python benchmarks/sidecar_scope.py [--services 10000] [--endpoints 4] [--in-scope 100]
       [--no-envoy]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._envoy import envoy_binary, free_port
from meshagent.gcpause import paused_gc
from meshagent.model import Provenance, ProxySpec, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator

NODE = "bench"
APP = "app"  # the proxy's namespace
TYPES = (typeurls.CLUSTER, typeurls.ENDPOINT, typeurls.LISTENER, typeurls.ROUTE)
REPO = Path(__file__).resolve().parents[1]
MESHAGENT = [sys.executable, "-m", "meshagent.agent.cli"]
SIDECAR = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Sidecar",
    "metadata": {"name": "default", "namespace": APP},
    "spec": {"egress": [{"hosts": ["./*"]}]},
}


def namespace_of(i: int, in_scope: int) -> str:
    return APP if i < in_scope else "bench"


def entry_body(i: int, endpoints: int, in_scope: int, generation: int = 0) -> dict[str, Any]:
    """ServiceEntry svc-<i>; generation moves its first endpoint."""
    ns = namespace_of(i, in_scope)
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": f"svc-{i}", "namespace": ns},
        "spec": {
            "hosts": [f"svc-{i}.{ns}.svc.cluster.local"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 8080 + i % 4, "name": "http", "protocol": "HTTP"}],
            "endpoints": [
                {"address": f"10.{(i >> 8) & 255}.{i & 255}.{(e + generation) % 250 + 1}"}
                for e in range(endpoints)
            ],
        },
    }


def raw_of(body: dict[str, Any]) -> RawResource:
    meta = body["metadata"]
    kind, ns, name = body["kind"], meta["namespace"], meta["name"]
    prov = Provenance("bench", f"bench:{ns}/{name}", kind, ns, name)
    return RawResource("bench", kind, body["apiVersion"], ns, name, body, prov)


def mesh_bodies(services: int, endpoints: int, in_scope: int, scoped: bool) -> list[dict[str, Any]]:
    bodies = [entry_body(i, endpoints, in_scope) for i in range(services)]
    return [*bodies, SIDECAR] if scoped else bodies


def in_process(services: int, endpoints: int, in_scope: int, scoped: bool) -> dict[str, Any]:
    proxy = ProxySpec(node_id=NODE, namespace=APP, port_offset=10000)
    raws = [raw_of(b) for b in mesh_bodies(services, endpoints, in_scope, scoped)]
    normalizer, translator = Normalizer(), Translator()
    with paused_gc():
        snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=tuple(raws))])
    t0 = time.perf_counter()
    with paused_gc():
        resources = translator.generate(snapshot, proxy)
    translate_s = time.perf_counter() - t0
    labels = ("clusters", "endpoints", "listeners", "routes")  # in TYPES' order
    out: dict[str, Any] = {k: len(resources.of(t)) for k, t in zip(labels, TYPES, strict=True)}
    out["config_bytes"] = sum(len(r.value) for t in TYPES for r in resources.of(t).values())
    out["translate_s"] = round(translate_s, 4)
    for label, index in (("in_scope", 0), ("out_of_scope", services - 1)):
        times = []
        for generation in range(1, 21):
            raw = raw_of(entry_body(index, endpoints, in_scope, generation))
            t0 = time.perf_counter()
            with paused_gc():
                snapshot, _ = normalizer.apply([SourceEvent("bench", upserts=(raw,))])
                translator.generate(snapshot, proxy)
            times.append(time.perf_counter() - t0)
        out[f"change_{label}_ms"] = round(1000 * statistics.median(times), 3)
    return out


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return bytes(reply.read())


def active_clusters(admin: int) -> int:
    try:
        text = get(admin, "/stats?filter=^cluster_manager%5C.active_clusters$").decode()
    except OSError:
        return -1
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name == "cluster_manager.active_clusters":
            return int(value)
    return -1


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


def with_envoy(
    services: int, endpoints: int, in_scope: int, scoped: bool, expected: int
) -> dict[str, Any]:
    """The real agent and a real Envoy: time to converge and Envoy's memory."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "mesh").mkdir()
        docs = mesh_bodies(services, endpoints, in_scope, scoped)
        (root / "mesh" / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
        admin, envoy_admin = free_port(), free_port()
        config = {
            "node": {"id": NODE, "namespace": APP},
            "state_dir": "state",
            "admin": {"address": "127.0.0.1", "port": admin},
            "envoy": {"manage": False, "admin_port": envoy_admin},
            # An unusual loopback address: no clash with other listeners on the machine.
            "outbound": {"address": "127.0.47.11", "port_offset": 10000},
            "sources": {"files": {"paths": ["mesh/"], "debounce_ms": 10}},
            "log": {"level": "warning", "format": "json"},
        }
        (root / "agent.yaml").write_text(yaml.safe_dump(config))
        bootstrap = subprocess.run(
            [*MESHAGENT, "bootstrap", "--config", str(root / "agent.yaml")],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        (root / "envoy.json").write_bytes(bootstrap)
        expected += len(json.loads(bootstrap).get("static_resources", {}).get("clusters", []))
        log = open(root / "logs", "ab")  # noqa: SIM115 - closed with the processes
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        processes: list[subprocess.Popen[bytes]] = []
        try:
            t0 = time.monotonic()
            processes.append(
                subprocess.Popen(
                    [*MESHAGENT, "run", "--config", str(root / "agent.yaml")],
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            envoy = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(root / "envoy.json"),
                    "--use-dynamic-base-id",
                    "--log-level",
                    "error",
                    "--concurrency",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            processes.append(envoy)
            deadline = time.monotonic() + 600
            while active_clusters(envoy_admin) < expected:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"Envoy did not converge; see {root / 'logs'}")
                time.sleep(0.2)
            push_s = time.monotonic() - t0
            memory = json.loads(get(envoy_admin, "/memory"))
            return {
                "push_s": round(push_s, 2),
                "envoy_clusters": active_clusters(envoy_admin),
                "envoy_allocated_mb": round(int(memory["allocated"]) / 2**20, 1),
                "envoy_heap_mb": round(int(memory["heap_size"]) / 2**20, 1),
                "envoy_rss_mb": rss_mb(envoy.pid),
            }
        finally:
            for proc in reversed(processes):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--in-scope", type=int, default=100)
    parser.add_argument("--no-envoy", action="store_true", help="in-process figures only")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "in_scope": args.in_scope,
    }
    for scoped in (False, True):
        case = in_process(args.services, args.endpoints, args.in_scope, scoped)
        if not args.no_envoy:
            case.update(
                with_envoy(args.services, args.endpoints, args.in_scope, scoped, case["clusters"])
            )
        result["scoped" if scoped else "unscoped"] = case
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
