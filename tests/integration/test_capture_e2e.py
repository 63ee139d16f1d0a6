"""Transparent mesh on a VM: real netfilter capture, real Envoy, real traffic, three "hosts".

Host A (10.81.0.1 / 10.82.0.1) runs an agent with capture; its application (uid nobody) calls
mesh services by their address, unchanged. Host B (10.81.0.2) runs an agent with capture and
the `hello` app on 127.0.0.1 (HTTP 8080, and the same app as a TCP service on 9000), reached
only through B's virtualInbound, STRICT mTLS and AuthorizationPolicy. Host C (10.82.0.2) is
outside the mesh. Envoy and the agents run as root, whose traffic the capture rules exclude.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from tests.integration.capture_hosts import (
    B_IP,
    C_IP,
    CLIENT_ID,
    HELLO,
    HELLO_VIP,
    Host,
    apply_capture,
    capture,
    capture_hosts,
)
from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import envoy_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.envoy,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed"),
]

SSH_BANNER_SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',22)); s.listen()\n"
    "while True:\n"
    "  c,_=s.accept(); c.sendall(b'SSH-2.0-meshagent-test\\r\\n'); c.close()\n"
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Host]]:
    root = tmp_path_factory.mktemp("capture")
    with capture_hosts(root, 3) as (a, b, c):
        b.ns.start([sys.executable, "-c", SSH_BANNER_SERVER], root / "b" / "ssh.log")
        outside = [sys.executable, "-m", "meshagent.testing.demo_app", "--name", "outside"]
        c.ns.start([*outside, "--listen", f"{C_IP}:7070"], root / "c.log")
        # and on 8080, a port mesh HTTP services use: Envoy parses HTTP there
        c.ns.start([*outside, "--listen", f"{C_IP}:8080"], root / "c-http.log")
        yield {"a": a, "b": b, "c": c}


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
    outside = f"http://{C_IP}:7070/"  # TCP: virtualOutbound's default chain
    outside_http = f"http://{C_IP}:8080/"  # HTTP: route 8080's catch-all virtual host
    reply = wait_until(lambda: a.ns.http(outside), timeout=30, what="passthrough")
    assert reply[0] == 200 and json.loads(reply[1])["service"] == "outside"
    reply = wait_until(lambda: a.ns.http(outside_http), timeout=30, what="allow_any")
    assert reply[0] == 200 and json.loads(reply[1])["service"] == "outside"

    a.config["outbound_traffic_policy"] = {"mode": "REGISTRY_ONLY"}
    a.reload()
    wait_until(lambda: a.ns.http(outside) is None, timeout=30, what="blackhole")
    assert (a.ns.http(outside_http) or (0, ""))[0] == 502  # block_all
    assert (_hello(a) or (0, ""))[0] == 200  # the mesh service still answers

    capture(a.ns, "remove")
    reply = wait_until(lambda: a.ns.http(outside), timeout=30, what="direct after remove")
    assert reply[0] == 200
    assert _hello(a) is None  # the VIP means nothing without capture
    apply_capture(a.ns)
    a.config["outbound_traffic_policy"] = {"mode": "ALLOW_ANY"}
    a.reload()
    wait_until(lambda: a.ns.http(outside), timeout=30, what="passthrough again")
