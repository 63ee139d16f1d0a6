"""A real agent on one machine: demo apps + `meshagent run` (a real subprocess) + a real Envoy
from `meshagent bootstrap`. The one launcher of a real agent for the integration tests
(tests/integration/mesh_harness.py re-exports it) and the benchmarks.

One harness is shared by a test module: each test replaces the mesh files, then waits for
Envoy to show the new behaviour. Every wait has a deadline; only loopback is used.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshagent.agent.admin import PUBLIC_PATHS
from meshagent.agent.opscli import admin_request
from meshagent.testing.demo_app import DemoApp
from meshagent.testing.envoy_process import EnvoyProcess, kill_managed_envoy
from meshagent.testing.loopback import free_port
from meshagent.testing.polling import wait_for as wait_until

# The checkout the agent subprocesses run from (cwd), so `python -m meshagent` finds this code.
REPO = Path(__file__).resolve().parents[2]
MESHAGENT = [sys.executable, "-m", "meshagent.agent.cli"]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class MeshHarness:
    """Owns the processes; tests talk to it through apply(), request() and friends."""

    def __init__(self, root: Path, *, node_id: str = "e2e", **config: Any) -> None:
        """config: top-level agent config keys that replace the defaults (e.g. `ca`,
        `workloads`, `inbound`, `outbound`); node_id names the proxy (one per "host")."""
        self.root = root
        self.node_id = node_id
        self.config_overrides = config
        self.mesh_dir = root / "mesh"
        self.mesh_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = root / "state"
        self.admin_port = free_port()
        self.envoy_admin_port = free_port()
        self.outbound_port = free_port()
        self.config_path = root / "agent.yaml"
        self.apps: dict[str, DemoApp] = {}
        self.agent: subprocess.Popen[bytes] | None = None
        self.envoy: subprocess.Popen[bytes] | None = None  # envoy_process's, for pid and poll
        self.envoy_process: EnvoyProcess | None = None
        self._write_agent_config(**config)

    # -- processes ---------------------------------------------------------------------------
    def _write_agent_config(self, **overrides: Any) -> None:
        config: dict[str, Any] = {
            "node": {"id": self.node_id, "cluster": "meshagent", "namespace": "default"},
            "sources": {"files": {"paths": ["mesh/"], "debounce_ms": 50}},
            "state_dir": "state",
            "admin": {"address": "127.0.0.1", "port": self.admin_port},
            "envoy": {"manage": False, "admin_port": self.envoy_admin_port},
            "outbound": {"address": "127.0.0.1", "ports": {8080: self.outbound_port}},
            "log": {"level": "debug", "format": "json"},
        }
        config.update(overrides)
        self.config_path.write_text(yaml.safe_dump(config))

    def configure(self, **config: Any) -> None:
        """Change top-level agent config keys (before start_agent, or then SIGHUP it)."""
        self.config_overrides.update(config)
        self._write_agent_config(**self.config_overrides)

    def start_app(self, key: str, name: str, version: str) -> DemoApp:
        app = DemoApp(name, version).start()
        self.apps[key] = app
        return app

    def start_agent(self) -> None:
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - owned by the process
        self.agent = subprocess.Popen(
            [*MESHAGENT, "run", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.healthy, what="agent /healthz")

    def stop_agent(self, sig: int = signal.SIGTERM) -> int:
        assert self.agent is not None
        self.agent.send_signal(sig)
        code = self.agent.wait(timeout=15)
        self.agent = None
        return code

    def start_envoy(self, *, old_bootstrap: bool = False) -> None:
        """Start Envoy from `meshagent bootstrap`; old_bootstrap drops its runtime layer (as
        a bootstrap written before the RE2 limit was raised), so that Envoy rejects regexes
        the agent accepts: a way to make a real NACK happen."""
        # `meshagent bootstrap` in this process: the same command as a subprocess would run,
        # without a second start-up of the package (half a second per Envoy).
        from meshagent.agent.cli import main as meshagent_main

        written = self.root / "bootstrap.out.json"
        code = meshagent_main(["bootstrap", "--config", str(self.config_path), "-o", str(written)])
        assert code == 0, f"meshagent bootstrap exited with {code}"
        data = json.loads(written.read_text())
        if old_bootstrap:
            del data["layered_runtime"]
        self.envoy_process = EnvoyProcess(
            data,
            self.root,
            log_level="warning",
            # Access log lines reach their files within 0.1 s, not after Envoy's default 10 s
            # flush interval: tests that read the logs wait on the line, not on that timer.
            extra_args=(
                *("--concurrency", "1", "--drain-time-s", "1"),
                *("--file-flush-interval-msec", "100"),
            ),
            name="envoy",  # envoy.json, envoy.log in root
        ).start()
        self.envoy = self.envoy_process.process
        wait_until(lambda: self.envoy_admin("/ready").status == 200, what="envoy ready")

    def close(self) -> None:
        # Everything is told to stop first and waited for after: the apps' shutdowns (each
        # waits up to its server's poll interval) and the processes' exits overlap.
        running = [p for p in (self.agent, self.envoy) if p is not None and p.poll() is None]
        for proc in running:
            proc.terminate()
        if self.apps:
            with ThreadPoolExecutor(len(self.apps)) as pool:
                list(pool.map(DemoApp.stop, self.apps.values()))
        for proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        kill_managed_envoy(self.state_dir)  # a managed Envoy outlives an agent that was killed

    # -- configuration -----------------------------------------------------------------------
    def apply(self, documents: str, name: str = "mesh.yaml", *, clear: bool = True) -> None:
        """Replace the mesh files with one file holding documents (atomically, like an editor)."""
        if clear:
            for old in self.mesh_dir.glob("*.yaml"):
                if old.name != name:
                    old.unlink()
        tmp = self.mesh_dir / f".{name}.tmp"
        tmp.write_text(documents)
        os.replace(tmp, self.mesh_dir / name)

    # -- observation -------------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.agent_get("/healthz").status == 200

    def agent_get(self, path: str) -> Reply:
        """GET path from the agent: public pages on its TCP port, the rest on its socket."""
        if path.partition("?")[0] in PUBLIC_PATHS:
            return http_request("127.0.0.1", self.admin_port, path, {})
        status, body = admin_request(self.state_dir / "admin.sock", path)
        return Reply(status, {}, body)

    def envoy_admin(self, path: str) -> Reply:
        return http_request("127.0.0.1", self.envoy_admin_port, path, {})

    def request(
        self, host: str, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Reply:
        return http_request(
            "127.0.0.1", self.outbound_port, path, {"host": host, **(headers or {})}, method
        )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of metric `name` whose labels include `labels`."""
        total = 0.0
        for line in self.agent_get("/metrics").body.decode().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total


def http_request(
    host: str, port: int, path: str, headers: dict[str, str], method: str = "GET"
) -> Reply:
    """One plain HTTP request (no proxies, 10 s timeout), its reply read whole."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@contextmanager
def mesh_harness(root: Path, **options: Any) -> Iterator[MeshHarness]:
    """A harness under root; options go to MeshHarness (node_id, agent config keys)."""
    harness = MeshHarness(root, **options)
    with ExitStack() as stack:
        stack.callback(harness.close)
        yield harness


def urlopen_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def healthy_ports(mesh: MeshHarness, cluster: str) -> set[int]:
    """Ports of the healthy loopback endpoints Envoy has for cluster (from its admin /clusters)."""
    ports = set()
    for line in mesh.envoy_admin("/clusters").body.decode().splitlines():
        if line.startswith(cluster + "::127.0.0.1:") and "::health_flags::healthy" in line:
            ports.add(int(line.split("::")[1].rsplit(":", 1)[1]))
    return ports


def wait_for_ports(
    mesh: MeshHarness, cluster: str, versions: set[str], timeout: float = 10.0
) -> float:
    """Seconds until Envoy's endpoints for cluster are exactly the apps named by versions."""
    want = {mesh.apps[v].port for v in versions}
    start = time.monotonic()
    wait_until(
        lambda: healthy_ports(mesh, cluster) == want, timeout=timeout, what=f"endpoints {versions}"
    )
    return time.monotonic() - start


def count_served_by(mesh: MeshHarness, host: str, n: int) -> collections.Counter[str]:
    """Who answered n requests to host (sent 8 at a time)."""

    def one(_: int) -> str:
        reply = mesh.request(host)
        return reply.headers.get("x-served-by", str(reply.status))

    with ThreadPoolExecutor(8) as pool:
        return collections.Counter(pool.map(one, range(n)))
