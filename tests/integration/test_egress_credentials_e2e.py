"""A DestinationRule's tls.credentialName at an egress gateway, through a real Envoy: plaintext
in, mutual TLS out with the client certificate of a credential from files, the server checked
against the credential's CA; a rotated client certificate is used by the next connection."""

from __future__ import annotations

import http.server
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.credential_helpers import CA_PEM, Pem, server_cert, write_credential
from tests.integration.mesh_harness import MeshHarness, http_request, mesh_harness, wait_until
from tests.net_helpers import free_port

pytestmark = pytest.mark.slow
HOST = "api.example.com"
GATEWAY_PORT = free_port()


class _MutualTlsServer:
    """An HTTPS server on loopback that requires a client certificate of the test CA and
    answers with its serial (one request per connection)."""

    def __init__(self) -> None:
        pem = server_cert(HOST)
        self._dir = tempfile.TemporaryDirectory()
        files = {name: Path(self._dir.name) / name for name in ("c.pem", "k.pem", "ca.pem")}
        for (_, path), text in zip(files.items(), (pem.cert, pem.key, CA_PEM), strict=True):
            path.write_text(text)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(files["c.pem"]), str(files["k.pem"]))
        context.load_verify_locations(str(files["ca.pem"]))
        context.verify_mode = ssl.CERT_REQUIRED

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: each one handshakes

            def do_GET(self) -> None:
                der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
                serial = x509.load_der_x509_certificate(der).serial_number if der else 0
                body = str(serial).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._dir.cleanup()


def _mesh(backend_port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: egress}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: http-tls, protocol: HTTP, targetPort: {backend_port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: egress}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: api-client, sni: {HOST}, subjectAltNames: [{HOST}]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: out, namespace: egress}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {GATEWAY_PORT}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["{HOST}"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: egress}}
spec:
  hosts: ["{HOST}"]
  gateways: [out]
  http:
  - route: [{{destination: {{host: {HOST}, port: {{number: 443}}}}}}]
"""


@pytest.fixture(scope="module")
def backend() -> Iterator[_MutualTlsServer]:
    server = _MutualTlsServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, backend: _MutualTlsServer
) -> Iterator[MeshHarness]:
    root = tmp_path_factory.mktemp("egress-credentials")
    with mesh_harness(
        root,
        node_id="egress",
        node={"id": "egress", "namespace": "egress", "type": "router",
              "labels": {"istio": "egressgateway"}},
        sources={
            "files": {"paths": ["mesh/"], "debounce_ms": 50},
            "credentials": {"paths": ["creds/"], "debounce_ms": 50, "poll_interval_ms": 100},
        },
    ) as harness:  # fmt: skip
        harness.apply(_mesh(backend.port))
        yield harness


def _client_serial() -> int | None:
    reply = http_request("127.0.0.1", GATEWAY_PORT, "/", {"host": HOST})
    return int(reply.body) if reply.status == 200 else None


def _credential(creds: Path, client: Pem) -> None:
    files = {"tls.crt": client.cert, "tls.key": client.key, "ca.crt": CA_PEM}
    write_credential(creds, "api-client", files)


def test_egress_originates_mutual_tls_with_the_credential_and_its_rotation(
    mesh: MeshHarness,
) -> None:
    creds = mesh.root / "creds"
    first = server_cert("client.egress")
    _credential(creds, first)
    mesh.start_agent()
    mesh.start_envoy()
    wait_until(lambda: _client_serial() == first.serial, timeout=20, what="mTLS out")
    second = server_cert("client.egress")
    _credential(creds, second)
    wait_until(lambda: _client_serial() == second.serial, timeout=20, what="the rotated cert")
