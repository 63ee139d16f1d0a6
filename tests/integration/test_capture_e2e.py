"""Transparent mesh on a VM: real netfilter capture, real Envoy, real traffic, three "hosts".

Host A (10.81.0.1 / 10.82.0.1) runs an agent with capture; its application (uid nobody) calls
mesh services by their address, unchanged. Host B (10.81.0.2) runs an agent with capture and
the `hello` app on 127.0.0.1 (HTTP 8080, and the same app as a TCP service on 9000), reached
only through B's virtualInbound, STRICT mTLS and AuthorizationPolicy. Host C (10.82.0.2) is
outside the mesh. Envoy and the agents run as root, whose traffic the capture rules exclude.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.mesh_harness import MESHAGENT, wait_until
from tests.integration.mtls_hosts import envoy_available, meshagent
from tests.integration.netns import Netns, namespaces, require_netns

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed"),
]

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

SSH_BANNER_SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',22)); s.listen()\n"
    "while True:\n"
    "  c,_=s.accept(); c.sendall(b'SSH-2.0-meshagent-test\\r\\n'); c.close()\n"
)


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


def _capture(ns: Netns, *args: str) -> None:
    """`meshagent capture` in ns; root (uid 0: Envoy and the agent) is never captured."""
    ns.run(*MESHAGENT, *args)


def apply_capture(ns: Netns) -> None:
    _capture(ns, "capture", "apply", "-p", "15001", "-z", "15006", "-u", "0", "-i", "*",
             "-b", "*", "-d", "22,15020,15000")  # fmt: skip


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


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Host]]:
    require_netns()
    root = tmp_path_factory.mktemp("capture")
    ca_dir = root / "ca"
    meshagent("ca", "init", "--dir", str(ca_dir))
    with namespaces(3) as (a_ns, b_ns, c_ns):
        client = {"name": "client", "namespace": "default", "service_account": "client",
                  "labels": {"app": "client"}}  # fmt: skip
        hello = {"name": "hello", "namespace": "demo", "service_account": "hello",
                 "labels": {"app": "hello"}, "ports": [{"port": 8080, "protocol": "HTTP"}]}
        # the TCP port as a workload of its own, which the HTTP DENY policy does not select
        hello_tcp = {**hello, "name": "hello-tcp", "labels": {"app": "hello-tcp"},
                     "ports": [{"port": 9000, "protocol": "TCP"}]}  # fmt: skip
        hosts = {}
        for key, ns, workloads in (("a", a_ns, [client]), ("b", b_ns, [hello, hello_tcp])):
            host_root = root / key
            (host_root / "mesh").mkdir(parents=True)
            (host_root / "mesh" / "mesh.yaml").write_text(MESH)
            hosts[key] = Host(ns, host_root, agent_config(f"host-{key}", ca_dir, workloads))
        app = [sys.executable, "-m", "meshagent.testing.demo_app", "--name", "hello"]
        b_ns.start([*app, "--listen", "127.0.0.1:8080"], root / "b" / "app.log")
        b_ns.start([*app, "--listen", "127.0.0.1:9000"], root / "b" / "tcp-app.log")
        b_ns.start([sys.executable, "-c", SSH_BANNER_SERVER], root / "b" / "ssh.log")
        outside = [sys.executable, "-m", "meshagent.testing.demo_app", "--name", "outside"]
        c_ns.start([*outside, "--listen", f"{C_IP}:7070"], root / "c.log")
        hosts["c"] = Host(c_ns, root / "c", {})
        for key in ("b", "a"):
            apply_capture(hosts[key].ns)
            hosts[key].start_agent()
        yield hosts


def _hello(a: Host, path: str = "/", port: int = 8080) -> tuple[int, str] | None:
    return a.ns.http(f"http://{HELLO_VIP}:{port}{path}", host=HELLO)


def test_the_unchanged_app_reaches_a_mesh_service_over_mtls(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    reply = wait_until(lambda: (r := _hello(a)) and r[0] == 200 and r, timeout=30, what="hello")
    headers = {k.lower(): v for k, v in json.loads(reply[1])["headers"].items()}
    assert f"URI={CLIENT_ID}" in headers.get("x-forwarded-client-cert", "")


def test_an_app_calling_by_address_alone_is_routed_too(mesh: dict[str, Host]) -> None:
    # Host: <VIP>:8080, as a client that was given the address and no name sends it
    reply = wait_until(lambda: mesh["a"].ns.http(f"http://{HELLO_VIP}:8080/"), timeout=30,
                       what="by address")  # fmt: skip
    assert reply[0] == 200 and json.loads(reply[1])["service"] == "hello"


def test_a_tcp_service_by_its_address(mesh: dict[str, Host]) -> None:
    reply = wait_until(lambda: _hello(mesh["a"], port=9000), timeout=30, what="tcp service")
    assert reply[0] == 200 and json.loads(reply[1])["service"] == "hello"


def test_inbound_goes_through_virtual_inbound_with_policy(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    wait_until(lambda: (r := _hello(a)) and r[0] == 200, timeout=30, what="hello")
    assert _hello(a, "/denied") == (403, "RBAC: access denied")
    # root is not captured on A: a plaintext request reaches B's capture, and STRICT refuses it
    assert a.ns.http(f"http://{B_IP}:8080/", uid=None) is None


def test_ssh_stays_direct(mesh: dict[str, Host]) -> None:
    banner = mesh["a"].ns.run(
        sys.executable, "-c",
        "import socket,sys; s=socket.create_connection((sys.argv[1],22),timeout=5);"
        "print(s.recv(64).decode().strip())", B_IP,
    ).stdout  # fmt: skip
    assert banner.startswith("SSH-2.0-meshagent-test")


def test_outbound_traffic_policy_then_capture_remove(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    outside = f"http://{C_IP}:7070/"
    reply = wait_until(lambda: a.ns.http(outside), timeout=30, what="passthrough")
    assert reply[0] == 200 and json.loads(reply[1])["service"] == "outside"

    a.config["outbound_traffic_policy"] = {"mode": "REGISTRY_ONLY"}
    a.reload()
    wait_until(lambda: a.ns.http(outside) is None, timeout=30, what="blackhole")
    assert (_hello(a) or (0, ""))[0] == 200  # the mesh service still answers

    _capture(a.ns, "capture", "remove")
    reply = wait_until(lambda: a.ns.http(outside), timeout=30, what="direct after remove")
    assert reply[0] == 200
    assert _hello(a) is None  # the VIP means nothing without capture
    apply_capture(a.ns)
    a.config["outbound_traffic_policy"] = {"mode": "ALLOW_ANY"}
    a.reload()
    wait_until(lambda: a.ns.http(outside), timeout=30, what="passthrough again")
