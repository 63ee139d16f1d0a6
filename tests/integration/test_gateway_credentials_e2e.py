"""Ingress HTTPS with a credential from files, through a real Envoy: the handshake presents the
credential; rotating its files makes the next handshake present the new certificate, with no
listener change (no drain: the listener's version and Envoy's listener_manager counters stay)."""

from __future__ import annotations

import http.client
import json
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshagent.testing.kube_sim import KubeSim
from tests.credential_helpers import CA_PEM, Pem, secret_body, server_cert, write_credential
from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.net_helpers import free_port

pytestmark = pytest.mark.slow
HOST = "shop.example.com"
LISTENER_PORT = free_port()
MUTUAL_PORT = free_port()
MESH = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop, namespace: edge}}
spec:
  hosts: [shop.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {{app_port}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {LISTENER_PORT}, name: https, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["{HOST}"]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: {MUTUAL_PORT}, name: https-mtls, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["{HOST}"]
    tls: {{mode: MUTUAL, credentialName: shop-mtls}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: edge}}
spec:
  hosts: ["{HOST}"]
  gateways: [web]
  http:
  - route: [{{destination: {{host: shop.internal, port: {{number: 80}}}}}}]
"""
LISTENER = f"127.0.0.1_{LISTENER_PORT}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshHarness]:
    root = tmp_path_factory.mktemp("gateway-credentials")
    with mesh_harness(
        root,
        node_id="ingress",
        node={"id": "ingress", "namespace": "edge", "type": "router",
              "labels": {"istio": "ingressgateway"}},
        sources={
            "files": {"paths": ["mesh/"], "debounce_ms": 50},
            "credentials": {"paths": ["creds/"], "debounce_ms": 50, "poll_interval_ms": 100},
        },
    ) as harness:  # fmt: skip
        app = harness.start_app("shop", "shop", "v1")
        harness.apply(MESH.replace("{app_port}", str(app.port)))
        yield harness


def _serial_and_reply(
    pem_ca: str, port: int = LISTENER_PORT, client: Pem | None = None
) -> tuple[int, int, bytes]:
    """One new TLS connection: the serial of the certificate the listener presents (checked
    against the CA, for HOST), and the reply to GET /; client: present that certificate."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ca.pem").write_text(pem_ca)
        context = ssl.create_default_context(cafile=str(Path(tmp) / "ca.pem"))
        if client is not None:
            (Path(tmp) / "c.pem").write_text(client.cert)
            (Path(tmp) / "k.pem").write_text(client.key)
            context.load_cert_chain(str(Path(tmp) / "c.pem"), str(Path(tmp) / "k.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=_with_sni(context))
    try:
        conn.request("GET", "/", headers={"host": HOST})
        response = conn.getresponse()
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number, response.status, response.read()
    finally:
        conn.close()


def _with_sni(context: ssl.SSLContext) -> ssl.SSLContext:
    """context, presenting SNI HOST (and checking the certificate for it) although the
    connection goes to 127.0.0.1."""
    original = context.wrap_socket

    def wrap(sock, server_hostname=None, **kw):  # type: ignore[no-untyped-def]
        return original(sock, server_hostname=HOST, **kw)

    context.wrap_socket = wrap  # type: ignore[method-assign]
    return context


def _listener_state(mesh: MeshHarness) -> tuple[str, dict[str, int]]:
    """The listener's version in Envoy's config dump, and the listener_manager counters."""
    dump = json.loads(mesh.envoy_admin("/config_dump?resource=dynamic_listeners").body)
    (listener,) = [c for c in dump["configs"] if c["name"] == LISTENER]
    version = listener["active_state"]["version_info"]
    stats: dict[str, int] = {}
    for line in mesh.envoy_admin("/stats?filter=^listener_manager\\.").body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return version, stats


def _serves(mesh: MeshHarness, pem: Pem) -> bool:
    serial, status, body = _serial_and_reply(CA_PEM)
    return serial == pem.serial and status == 200 and b'"service": "shop"' in body


def test_ingress_https_from_files_rotates_without_a_listener_change(mesh: MeshHarness) -> None:
    creds = mesh.root / "creds"
    first = server_cert(HOST)
    write_credential(creds, "shop-cert", {"tls.crt": first.cert, "tls.key": first.key})
    mesh.start_agent()
    mesh.start_envoy()
    wait_until(lambda: _serves(mesh, first), timeout=20, what="HTTPS with the first certificate")
    version, before = _listener_state(mesh)

    second = server_cert(HOST)
    started = time.monotonic()
    write_credential(creds, "shop-cert", {"tls.crt": second.cert, "tls.key": second.key})
    wait_until(lambda: _serves(mesh, second), timeout=20, what="the rotated certificate")
    print(f"rotation: new certificate served {time.monotonic() - started:.2f}s after the rename")

    version_after, after = _listener_state(mesh)
    assert version_after == version  # the listener was not updated ...
    changes = ("listener_modified", "listener_removed", "listener_added", "lds.update_success",
               "listener_in_place_updated")  # fmt: skip
    for counter in changes:
        key = f"listener_manager.{counter}"
        assert after.get(key, 0) == before.get(key, 0), counter  # ... nor replaced
    for gauge in ("total_listeners_draining", "total_filter_chains_draining"):
        assert after.get(f"listener_manager.{gauge}", 0) == 0, gauge
    # and the agent is ready, serving the rotated secret to an Envoy that ACKed it
    wait_until(lambda: mesh.agent_get("/readyz").status == 200, what="agent ready")


def test_mutual_from_files_needs_a_client_certificate_of_the_credential_ca(
    mesh: MeshHarness,
) -> None:
    creds = mesh.root / "creds"
    server, client = server_cert(HOST), server_cert("client.example.com")
    files = {"tls.crt": server.cert, "tls.key": server.key, "ca.crt": CA_PEM}
    write_credential(creds, "shop-mtls", files)
    if mesh.agent is None:
        mesh.start_agent()
        mesh.start_envoy()

    def served() -> bool:
        serial, status, _ = _serial_and_reply(CA_PEM, MUTUAL_PORT, client)
        return serial == server.serial and status == 200

    wait_until(served, timeout=20, what="MUTUAL with a client certificate")
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        _serial_and_reply(CA_PEM, MUTUAL_PORT)  # no client certificate: refused


# -- the same gateway with its credential from a Kubernetes Secret (the API simulator) ------


@pytest.fixture(scope="module")
def kube_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHarness, KubeSim]]:
    root = tmp_path_factory.mktemp("gateway-kube-secret")
    sim = KubeSim(bookmark_interval_s=0.5).start()
    assert sim.token is not None
    (root / "token").write_text(sim.token)
    try:
        with mesh_harness(
            root,
            node_id="ingress-kube",
            node={"id": "ingress-kube", "namespace": "edge", "type": "router",
                  "labels": {"istio": "ingressgateway"}},
            sources={
                "files": {"paths": ["mesh/"], "debounce_ms": 50},
                "kubernetes": {"server": sim.url, "token_file": "token", "kinds": [],
                               "watch_timeout": "5s"},
            },
        ) as harness:  # fmt: skip
            app = harness.start_app("shop", "shop", "v1")
            harness.apply(MESH.replace("{app_port}", str(app.port)))
            yield harness, sim
    finally:
        sim.stop()


def test_ingress_https_from_a_kubernetes_secret_and_its_update(
    kube_mesh: tuple[MeshHarness, KubeSim],
) -> None:
    mesh, sim = kube_mesh
    first, second = server_cert(HOST), server_cert(HOST)
    sim.apply(secret_body("shop-cert", "edge", tls_crt=first.cert, tls_key=first.key))
    sim.apply(secret_body("shop-cert", "other", tls_crt=second.cert, tls_key=second.key))
    mesh.start_agent()
    mesh.start_envoy()
    wait_until(lambda: _serves(mesh, first), timeout=20, what="HTTPS from the Secret")
    version, _ = _listener_state(mesh)
    sim.apply(secret_body("shop-cert", "edge", tls_crt=second.cert, tls_key=second.key))
    wait_until(lambda: _serves(mesh, second), timeout=20, what="the updated Secret")
    assert _listener_state(mesh)[0] == version
    secret_paths = {r.split("?")[0] for r in sim.requests if "/secrets" in r}
    assert secret_paths == {"GET /api/v1/namespaces/edge/secrets"}  # the router's namespace only
