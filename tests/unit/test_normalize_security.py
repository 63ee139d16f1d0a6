"""PeerAuthentication and AuthorizationPolicy: schema, conversion, normalizer, Istio's corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.yamldocs import load_documents_with_meta, load_file
from meshagent.model.security import AuthzAction, MtlsMode
from meshagent.model.source import SourceEvent
from meshagent.normalize import Normalizer, validate_resource
from tests.unit.normalize_helpers import delete, errors, upsert

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"

PA = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec:
"""
AP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: shop}
spec:
"""


def _corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus not found")
    return CORPUS


def test_peer_authentication_converts_with_port_levels() -> None:
    text = PA + "  selector: {matchLabels: {app: cart}}\n  mtls: {mode: STRICT}\n"
    text += "  portLevelMtls: {8080: {mode: DISABLE}, '9090': {mode: PERMISSIVE}}\n"
    snapshot, diagnostics = Normalizer().apply([upsert(text)])
    assert diagnostics == []
    pa = snapshot.peer_authentications["shop/pa"]
    assert pa.mode is MtlsMode.STRICT and pa.selector == (("app", "cart"),)
    assert pa.port_level == ((8080, MtlsMode.DISABLE), (9090, MtlsMode.PERMISSIVE))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("  mtls: {mode: BLAH}\n", "spec.mtls.mode"),
        ("  portLevelMtls: {80: {mode: STRICT}}\n", "spec.portLevelMtls"),
        (
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls: {'x': {mode: STRICT}}\n",
            "spec.portLevelMtls.x",
        ),
        (
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls: {0: {mode: STRICT}}\n",
            "spec.portLevelMtls.0",
        ),
        ("  mtls: {mode: STRICT, extra: 1}\n", "spec.mtls.extra"),
    ],
)
def test_invalid_peer_authentications_are_located(spec: str, field: str) -> None:
    found = errors(PA + spec)
    assert field in [f for _, f in found], found


def test_authorization_policy_converts_every_part() -> None:
    text = (
        AP
        + """\
  action: DENY
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {principals: ["td/ns/a/sa/b"], notIpBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {methods: [POST], ports: ["8080"], notPaths: ["/health"]}}]
    when: [{key: "request.headers[x-user]", notValues: ["bot*"]}]
"""
    )
    snapshot, diagnostics = Normalizer().apply([upsert(text)])
    assert diagnostics == []
    policy = snapshot.authorization_policies["shop/ap"]
    assert policy.action is AuthzAction.DENY
    (rule,) = policy.rules
    assert rule.sources[0].principals == ("td/ns/a/sa/b",)
    assert rule.sources[0].not_ip_blocks == ("10.0.0.0/8",)
    assert rule.operations[0].ports == ("8080",) and rule.operations[0].not_paths == ("/health",)
    assert rule.conditions[0].key == "request.headers[x-user]"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("  action: MAYBE\n", "spec.action"),
        ("  rules: [{from: [{source: {}}]}]\n", "spec.rules[0].from[0].source"),
        ("  rules: [{from: []}]\n", "spec.rules[0].from"),
        (
            "  rules: [{to: [{operation: {ports: ['http']}}]}]\n",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: ['10.0.0.300']}}]}]\n",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        ("  rules: [{when: [{key: source.ip}]}]\n", "spec.rules[0].when[0]"),
        ("  rules: [{when: [{key: no.such.key, values: [x]}]}]\n", "spec.rules[0].when[0].key"),
        (
            "  rules: [{when: [{key: destination.port, values: ['99999']}]}]\n",
            "spec.rules[0].when[0].values[0]",
        ),
        ("  provider: {name: ext}\n", "spec.provider"),
        (
            "  rules: [{from: [{source: {principals: [a], serviceAccounts: [b]}}]}]\n",
            "spec.rules[0].from[0].source.serviceAccounts",
        ),
    ],
)
def test_invalid_authorization_policies_are_located(spec: str, field: str) -> None:
    found = errors(AP + spec)
    assert field in [f for _, f in found], found


def test_custom_action_keeps_its_provider() -> None:
    text = AP + "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{}]\n"
    snapshot, diagnostics = Normalizer().apply([upsert(text)])
    assert diagnostics == []
    policy = snapshot.authorization_policies["shop/ap"]
    assert (policy.action, policy.provider) == (AuthzAction.CUSTOM, "ext-authz")
    assert ("mesh.yaml:6", "spec.provider") in errors(AP + "  action: CUSTOM\n  provider: {}\n")


def test_deleting_a_policy_removes_it_from_the_snapshot() -> None:
    text = AP + "  rules: [{}]\n"
    normalizer = Normalizer()
    normalizer.apply([upsert(text)])
    snapshot, _ = normalizer.apply([delete(text)])
    assert "shop/ap" not in snapshot.authorization_policies


def test_security_kinds_under_a_networking_api_version_are_errors() -> None:
    text = AP.replace("security.istio.io/v1", "networking.istio.io/v1") + "  rules: [{}]\n"
    assert ("mesh.yaml:1", "apiVersion") in errors(text)


def test_corpus_peerauth_valid_is_accepted() -> None:
    path = _corpus() / "validation" / "peerauth-valid.yaml"
    resources, problems = load_file(path)
    assert problems == [] and resources
    for resource in resources:
        found = [str(d) for d in validate_resource(resource) if d.severity == "error"]
        assert found == [], found


def test_corpus_peerauth_invalid_is_rejected() -> None:
    path = _corpus() / "validation" / "peerauth-invalid.yaml"
    documents, problems = load_documents_with_meta(
        path.read_text(), str(path), strip_keys=("_err",)
    )
    assert problems == [] and documents
    for document in documents:
        found = [d for d in validate_resource(document.resource) if d.severity == "error"]
        assert found, f"{document.resource.provenance.location}: accepted"
        # Rejected for the spec's sake (Istio's reason is in _err), not for its envelope.
        assert all(
            d.field.startswith("spec.portLevelMtls") or d.field == "spec.mtls.mode" for d in found
        ), [str(d) for d in found]


def test_corpus_security_dataset_is_accepted() -> None:
    files = sorted((_corpus() / "dataset").glob("security-*.yaml"))
    assert files
    upserts = tuple(r for p in files for r in load_file(p)[0])
    snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=upserts)])
    assert [str(d) for d in diagnostics if d.severity == "error"] == []
    skipped = {d.kind for d in diagnostics if d.severity == "warning" and d.field == "kind"}
    assert skipped == set()
    assert snapshot.peer_authentications and snapshot.authorization_policies
    assert snapshot.request_authentications
