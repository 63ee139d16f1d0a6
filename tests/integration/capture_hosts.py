"""Hosts in network namespaces for the capture end-to-end tests (test_capture_e2e.py,
test_dns_capture_e2e.py): each runs `meshagent run` with capture and a managed Envoy, as root,
whose traffic the capture rules exclude; the "application" is uid nobody.

Host A (10.81.0.1) runs the workload `client`. Host B (10.81.0.2) runs `hello`: the demo app on
127.0.0.1:8080 (HTTP) and the same app as a TCP service on 127.0.0.1:9000, a workload of its
own, reached only through B's virtualInbound, STRICT mTLS and AuthorizationPolicy.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.integration.mesh_harness import MESHAGENT, wait_until
from tests.integration.mtls_hosts import meshagent
from tests.integration.netns import Netns, namespaces, require_netns

HELLO = "hello.demo.svc.cluster.local"
HELLO_VIP = "240.240.0.10"
B_IP, C_IP = "10.81.0.2", "10.82.0.2"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"

MESH = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello, namespace: demo}}
spec:
  hosts: [{HELLO}]
  addresses: [{HELLO_VIP}]
  ports:
  - {{number: 8080, name: http, protocol: HTTP}}
  - {{number: 9000, name: tcp, protocol: TCP}}
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: {B_IP}, serviceAccount: hello}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-denied, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: hello}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/denied]}}}}]}}]
"""


@dataclass
class Host:
    ns: Netns
    root: Path
    config: dict[str, Any]
    agent: Any = None

    def write_config(self) -> None:
        (self.root / "agent.yaml").write_text(yaml.safe_dump(self.config))

    def start_agent(self) -> None:
        self.write_config()
        cmd = [*MESHAGENT, "run", "--config", str(self.root / "agent.yaml")]
        self.agent = self.ns.start(cmd, self.root / "agent.log")
        wait_until(self.ready, timeout=60, what=f"{self.ns.name} ready")

    def ready(self) -> bool:
        reply = self.ns.http("http://127.0.0.1:15020/readyz", uid=None)
        return reply is not None and reply[0] == 200

    def reload(self) -> None:
        self.write_config()
        self.agent.send_signal(signal.SIGHUP)


def capture(ns: Netns, *args: str) -> None:
    """`meshagent capture ARGS` in ns."""
    ns.run(*MESHAGENT, "capture", *args)


def apply_capture(ns: Netns, *more: str) -> None:
    """Capture in ns as an Istio VM has it; root (uid 0: Envoy and the agent) is never
    captured, nor SSH and the admin ports."""
    capture(ns, "apply", "-p", "15001", "-z", "15006", "-u", "0", "-i", "*", "-b", "*",
            "-d", "22,15020,15000", *more)  # fmt: skip


def agent_config(name: str, ca_dir: Path, workloads: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "node": {"id": name, "namespace": workloads[0]["namespace"]},
        "state_dir": "state",
        "sources": {"files": {"paths": ["mesh/"], "debounce_ms": 50}},
        "admin": {"address": "127.0.0.1", "port": 15020},
        "envoy": {"manage": True, "concurrency": 1, "drain_seconds": 1},
        "ca": {"mode": "self-signed", "dir": str(ca_dir)},
        "workloads": workloads,
        "capture": {"enabled": True},
        "log": {"level": "debug", "format": "json"},
    }


@contextmanager
def capture_hosts(
    root: Path,
    count: int,
    *,
    mesh_extra: str = "",
    a_dns: bool = False,
    a_capture: tuple[str, ...] = (),
) -> Iterator[list[Host]]:
    """count namespaces (see netns.namespaces): A and B as the module docstring says, with
    MESH + mesh_extra in their mesh files and both agents ready; a_dns turns on A's DNS proxy
    (no upstream), a_capture adds capture flags on A. Any further namespace is returned
    without an agent."""
    require_netns()
    ca_dir = root / "ca"
    meshagent("ca", "init", "--dir", str(ca_dir))
    with namespaces(count) as spaces:
        a_ns, b_ns = spaces[:2]
        client = {"name": "client", "namespace": "default", "service_account": "client",
                  "labels": {"app": "client"}}  # fmt: skip
        hello = {
            "name": "hello",
            "namespace": "demo",
            "service_account": "hello",
            "labels": {"app": "hello"},
            "ports": [{"port": 8080, "protocol": "HTTP"}],
        }
        # the TCP port as a workload of its own, which the HTTP DENY policy does not select
        hello_tcp = {**hello, "name": "hello-tcp", "labels": {"app": "hello-tcp"},
                     "ports": [{"port": 9000, "protocol": "TCP"}]}  # fmt: skip
        hosts = []
        for key, ns, workloads in (("a", a_ns, [client]), ("b", b_ns, [hello, hello_tcp])):
            host_root = root / key
            (host_root / "mesh").mkdir(parents=True)
            (host_root / "mesh" / "mesh.yaml").write_text(MESH + mesh_extra)
            hosts.append(Host(ns, host_root, agent_config(f"host-{key}", ca_dir, workloads)))
        if a_dns:
            hosts[0].config["dns"] = {"enabled": True, "upstreams": []}
        app = [sys.executable, "-m", "meshagent.testing.demo_app", "--name", "hello"]
        b_ns.start([*app, "--listen", "127.0.0.1:8080"], root / "b" / "app.log")
        b_ns.start([*app, "--listen", "127.0.0.1:9000"], root / "b" / "tcp-app.log")
        apply_capture(b_ns)
        hosts[1].start_agent()
        apply_capture(a_ns, *a_capture)
        hosts[0].start_agent()
        yield [*hosts, *(Host(ns, root / ns.name, {}) for ns in spaces[2:])]
