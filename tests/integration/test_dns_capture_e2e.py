"""By name through capture: an unchanged app on host A calls mesh services by their DNS names.

The capture e2e's two hosts (test_capture_e2e.py: real netfilter, real Envoy, B's `hello` app
behind STRICT mTLS), with host A's DNS captured too (`--redirect-dns --capture-all-dns`) and
answered by A's agent (`dns.enabled`). The app's C library resolver asks the host's resolver;
capture hands the query to the DNS proxy, which answers the service's address: its
ServiceEntry `addresses`, or for an entry without any its automatic VIP, which
virtualOutbound matches. Unknown names get SERVFAIL here (no upstream resolver is given).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshagent.normalize.vips import home_slot, slot_addresses
from tests.integration.capture_hosts import B_IP, CLIENT_ID, HELLO, HELLO_VIP, Host, capture_hosts
from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import envoy_available
from tests.integration.netns import NOBODY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.envoy,
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed"),
]

AUTO = "hello-auto.demo.svc.cluster.local"  # a ServiceEntry without addresses
AUTO_MESH = f"""\
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hello-auto, namespace: demo}}
spec:
  hosts: [{AUTO}]
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: {B_IP}, serviceAccount: hello}}]
"""
RESOLVE = (
    "import json,socket,sys\n"
    "try: print(json.dumps(sorted({i[4][0] for i in socket.getaddrinfo(sys.argv[1], 80, "
    "socket.AF_INET, socket.SOCK_STREAM)})))\n"
    "except socket.gaierror as e: print(json.dumps(str(e)))\n"
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Host]]:
    root = tmp_path_factory.mktemp("dns-capture")
    # A's DNS (any port-53 traffic) goes to its agent's 15053, which is ready only once the
    # DNS proxy has its names.
    dns = ("--redirect-dns", "--capture-all-dns")
    with capture_hosts(root, 2, mesh_extra=AUTO_MESH, a_dns=True, a_capture=dns) as (a, b):
        yield {"a": a, "b": b}


def _resolve(a: Host, name: str) -> object:
    done = subprocess.run(
        a.ns.cmd([sys.executable, "-c", RESOLVE, name], NOBODY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(done.stdout)


def test_the_app_resolves_mesh_names_through_the_dns_proxy(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    assert _resolve(a, HELLO) == [HELLO_VIP]
    assert _resolve(a, "hello.demo") == [HELLO_VIP]  # a short name
    assert _resolve(a, AUTO) == [slot_addresses(home_slot(AUTO))[0]]
    # a name the mesh does not have goes upstream; with none configured, it does not resolve
    assert isinstance(_resolve(a, "www.outside.test"), str)


def test_http_by_name_over_mtls(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    url = f"http://{HELLO}:8080/"
    reply = wait_until(lambda: (r := a.ns.http(url)) and r[0] == 200 and r, timeout=30, what=url)
    headers = {k.lower(): v for k, v in json.loads(reply[1])["headers"].items()}
    assert f"URI={CLIENT_ID}" in headers.get("x-forwarded-client-cert", "")


def test_tcp_by_name_and_an_entry_without_addresses_by_its_vip(mesh: dict[str, Host]) -> None:
    a = mesh["a"]
    for host in (HELLO, AUTO):
        url = f"http://{host}:9000/"  # the TCP service (the same demo app behind it)
        reply = wait_until(lambda u=url: a.ns.http(u), timeout=30, what=url)
        assert reply[0] == 200 and json.loads(reply[1])["service"] == "hello"
