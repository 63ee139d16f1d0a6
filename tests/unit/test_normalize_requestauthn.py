"""RequestAuthentication: schema (Istio's JWT rule checks, located), conversion, normalizer."""

from __future__ import annotations

import pytest

from meshagent.adapters.kubernetes import ISTIO_KINDS
from meshagent.model.security import JwtRule
from meshagent.normalize import Normalizer
from meshagent.testing.kube_store import BY_KIND
from tests.unit.normalize_helpers import delete, errors, upsert, warnings

JWKS = '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}'
RA = """\
apiVersion: security.istio.io/{version}
kind: RequestAuthentication
metadata: {{name: ra, namespace: shop}}
spec:
"""


def _doc(spec: str, version: str = "v1") -> str:
    return RA.format(version=version) + spec


FULL = f"""\
  selector: {{matchLabels: {{app: cart}}}}
  jwtRules:
  - issuer: https://login.example.org
    audiences: [cart, shop]
    jwks: '{JWKS}'
    fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}, {{name: x-token}}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
  - issuer: other
    jwksUri: https://keys.example.com:8443/jwks.json
    timeout: 2s
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_request_authentication_converts_every_field(version: str) -> None:
    snapshot, diagnostics = Normalizer().apply([upsert(_doc(FULL, version))])
    assert diagnostics == []
    policy = snapshot.request_authentications["shop/ra"]
    assert policy.selector == (("app", "cart"),)
    first, second = policy.jwt_rules
    assert first == JwtRule(
        issuer="https://login.example.org",
        audiences=("cart", "shop"),
        jwks=JWKS,
        from_headers=(("x-jwt", "Bearer "), ("x-token", "")),
        from_params=("token",),
        from_cookies=("session",),
        forward_original_token=True,
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(("x-user", "sub"),),
    )
    assert second.jwks_uri == "https://keys.example.com:8443/jwks.json"
    assert second.timeout_ms == 2000 and second.jwks is None


def test_deleting_the_resource_removes_the_policy() -> None:
    normalizer = Normalizer()
    normalizer.apply([upsert(_doc(FULL))])
    snapshot, _ = normalizer.apply([delete(_doc(FULL))])
    assert dict(snapshot.request_authentications) == {}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("  jwtRules: [{jwks: '" + JWKS + "'}]\n", "spec.jwtRules[0].issuer"),
        ("  jwtRules: [{issuer: ''}]\n", "spec.jwtRules[0].issuer"),
        ("  jwtRules: [{issuer: a, audiences: ['']}]\n", "spec.jwtRules[0].audiences[0]"),
        ("  jwtRules: [{issuer: a, jwks: 'not json'}]\n", "spec.jwtRules[0].jwks"),
        ('  jwtRules: [{issuer: a, jwks: \'{"kty": "EC"}\'}]\n', "spec.jwtRules[0].jwks"),
        ("  jwtRules: [{issuer: a, jwks: '{\"keys\": [1]}'}]\n", "spec.jwtRules[0].jwks"),
        ("  jwtRules: [{issuer: a, jwksUri: 'ftp://k/j'}]\n", "spec.jwtRules[0].jwksUri"),
        ("  jwtRules: [{issuer: a, jwksUri: 'https:///j'}]\n", "spec.jwtRules[0].jwksUri"),
        ("  jwtRules: [{issuer: a, jwksUri: 'http://k:99999/'}]\n", "spec.jwtRules[0].jwksUri"),
        (
            "  jwtRules: [{issuer: a, fromHeaders: [{prefix: x}]}]\n",
            "spec.jwtRules[0].fromHeaders[0].name",
        ),
        (
            "  jwtRules: [{issuer: a, fromHeaders: [{name: 'a b'}]}]\n",
            "spec.jwtRules[0].fromHeaders[0].name",
        ),
        ("  jwtRules: [{issuer: a, fromParams: ['']}]\n", "spec.jwtRules[0].fromParams[0]"),
        ("  jwtRules: [{issuer: a, fromCookies: ['']}]\n", "spec.jwtRules[0].fromCookies[0]"),
        (
            "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x}]}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
        ),
        (
            "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: 'x:y', claim: c}]}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
        ),
        ("  jwtRules: [{issuer: a, timeout: soon}]\n", "spec.jwtRules[0].timeout"),
        ("  jwtRules: [{issuer: a, audience: [x]}]\n", "spec.jwtRules[0].audience"),
        (
            "  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Service, name: g}]\n",
            "spec.targetRefs",
        ),
    ],
)
def test_invalid_request_authentications_are_located(spec: str, field: str) -> None:
    found = errors(_doc(spec))
    assert field in [f for _, f in found], found
    assert all(location.startswith("mesh.yaml:") for location, _ in found)


def test_an_invalid_edit_keeps_the_last_valid_policy() -> None:
    normalizer = Normalizer()
    normalizer.apply([upsert(_doc(FULL))])
    snapshot, diagnostics = normalizer.apply([upsert(_doc("  jwtRules: [{issuer: ''}]\n"))])
    assert [d.field for d in diagnostics] == ["spec.jwtRules[0].issuer"]
    assert len(snapshot.request_authentications["shop/ra"].jwt_rules) == 2


def test_jwks_wins_over_jwks_uri_with_a_warning() -> None:
    spec = f"  jwtRules: [{{issuer: a, jwks: '{JWKS}', jwksUri: 'https://k/j'}}]\n"
    assert warnings(_doc(spec)) == ["spec.jwtRules[0].jwksUri"]
    snapshot, _ = Normalizer().apply([upsert(_doc(spec))])
    (rule,) = snapshot.request_authentications["shop/ra"].jwt_rules
    assert rule.jwks == JWKS and rule.jwks_uri is None


def test_a_rule_without_keys_warns() -> None:
    assert warnings(_doc("  jwtRules: [{issuer: a}]\n")) == ["spec.jwtRules[0]"]


def test_target_refs_warn_and_the_policy_applies_nowhere() -> None:
    spec = (
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n"
        f"  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]\n"
    )
    assert warnings(_doc(spec)) == ["spec.targetRefs"]
    snapshot, _ = Normalizer().apply([upsert(_doc(spec))])
    assert snapshot.request_authentications["shop/ra"].jwt_rules == ()


def test_kubernetes_adapter_and_simulator_know_the_kind() -> None:
    assert ("security.istio.io", "requestauthentications", "RequestAuthentication") in ISTIO_KINDS
    info = BY_KIND["RequestAuthentication"]
    assert info.plural == "requestauthentications" and "v1beta1" in info.versions
