"""AuthorizationPolicy as current Istio builds it (pilot/pkg/security/authz and
pilot/pkg/security/trustdomain): trustDomains, trust-domain aliases, the istio.io/dry-run
annotation and TCP ports, decided request by request through the RBAC evaluator on the
listeners the translator really builds."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import json_format, message

from meshagent.model import InboundPort, LocalWorkload, MeshSnapshot, ProxySpec
from meshagent.normalize import Normalizer
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator
from meshagent.xds.translate.trust import expand_principals, expand_trust_domains
from tests.unit.normalize_helpers import errors, upsert
from tests.unit.rbac_eval import Request, allowed, shadow_hits

HTTP_PORT, TCP_PORT = 9080, 9000
WORKLOAD = LocalWorkload(
    "cart",
    "shop",
    "cart",
    labels=(("app", "cart"),),
    ports=(InboundPort(HTTP_PORT, 8080), InboundPort(TCP_PORT, 9001, protocol="TCP")),
)
AP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: shop{meta}}}
spec:
{spec}"""


DENY_FROM = "  action: DENY\n  rules:\n  - from:\n    - source: "


def policy(spec: str, name: str = "ap", meta: str = "") -> str:
    return AP.format(name=name, meta=meta, spec=spec)


def snapshot(*texts: str) -> MeshSnapshot:
    snap, diagnostics = Normalizer().apply([upsert(*texts)])
    assert [d for d in diagnostics if d.severity == "error"] == []
    return snap


def _typed(config: Any, kind: type[message.Message]) -> dict[str, Any]:
    found = kind()
    config.Unpack(found)
    return json_format.MessageToDict(found)


def rbac_filters(
    snap: MeshSnapshot, port: int, proxy: ProxySpec | None = None
) -> list[dict[str, Any]]:
    """The RBAC filter configs of the inbound listener of port, in order."""
    proxy = proxy or ProxySpec("vm", workloads=(WORKLOAD,))
    listeners = Translator().generate(snap, proxy).of(typeurls.LISTENER)
    (resource,) = [r for n, r in listeners.items() if n.endswith(f"_{port}")]
    listener = Listener()
    resource.body.Unpack(listener)
    chain = listener.filter_chains[0]
    out = []
    for f in chain.filters:
        if f.name == "envoy.filters.network.rbac":
            out.append(json_format.MessageToDict(_unpack_any(f.typed_config)))
        if f.name == "envoy.filters.network.http_connection_manager":
            manager = hcm.HttpConnectionManager()
            f.typed_config.Unpack(manager)
            out += [
                json_format.MessageToDict(_unpack_any(h.typed_config))
                for h in manager.http_filters
                if h.name == "envoy.filters.http.rbac"
            ]
    return out


def _unpack_any(any_config: Any) -> message.Message:
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac

    kind = (
        http_rbac.RBAC if any_config.type_url.endswith("http.rbac.v3.RBAC") else network_rbac.RBAC
    )
    found = kind()
    any_config.Unpack(found)
    return found


def peer(identity: str | None, port: int = HTTP_PORT, path: str = "/") -> Request:
    return Request(headers={":path": path}, principal=identity, destination_port=port)


# --- 1. trustDomains / notTrustDomains --------------------------------------------------


def test_trust_domain_fields_are_known_and_validated() -> None:
    ok = "  rules:\n  - from:\n    - source: {trustDomains: [a.example, '*.corp'], "
    ok += "notTrustDomains: [b]}\n"
    assert errors(policy(ok)) == []
    bad = "  rules:\n  - from:\n    - source: {trustDomains: ['']}\n"
    assert [f for _, f in errors(policy(bad))] == ["spec.rules[0].from[0].source.trustDomains[0]"]


@pytest.mark.parametrize("port", [HTTP_PORT, TCP_PORT])
def test_allow_by_trust_domain_no_longer_fails_open(port: int) -> None:
    # given the only ALLOW policy of a workload names a trust domain (before: "unknown field",
    # the policy was dropped and everyone was allowed), then only that trust domain gets in
    snap = snapshot(policy("  rules:\n  - from:\n    - source: {trustDomains: [cluster.local]}\n"))
    filters = rbac_filters(snap, port)
    assert allowed(filters, peer("spiffe://cluster.local/ns/a/sa/b", port))
    assert not allowed(filters, peer("spiffe://evil.example/ns/a/sa/b", port))
    assert not allowed(filters, peer("spiffe://cluster.local.evil.com/ns/a/sa/b", port))
    assert not allowed(filters, peer(None, port))


def test_deny_by_trust_domain_patterns() -> None:
    spec = DENY_FROM + "{trustDomains: ['*.evil.example', 'bad*']}\n"
    filters = rbac_filters(snapshot(policy(spec)), HTTP_PORT)
    assert not allowed(filters, peer("spiffe://x.evil.example/ns/a/sa/b"))
    assert not allowed(filters, peer("spiffe://bad-td/ns/a/sa/b"))
    assert allowed(filters, peer("spiffe://cluster.local/ns/evil.example/sa/b"))  # not the domain
    assert allowed(filters, peer("spiffe://good/ns/bad/sa/b"))


def test_not_trust_domains_and_the_condition_key() -> None:
    spec = (
        "  rules:\n  - from:\n    - source: {notTrustDomains: [other.example]}\n"
        "    when:\n    - key: source.trustDomain\n      values: [cluster.local, other.example]\n"
    )
    filters = rbac_filters(snapshot(policy(spec)), HTTP_PORT)
    assert allowed(filters, peer("spiffe://cluster.local/ns/a/sa/b"))
    assert not allowed(filters, peer("spiffe://other.example/ns/a/sa/b"))


@pytest.mark.parametrize(
    ("when", "field"),
    [
        ("{key: source.serviceAccount, values: [shop/cart]}", None),
        ("{key: 'request.experimental.inline.headers[x-a]', values: [v]}", None),
        ("{key: source.serviceAccount, values: ['shop/*']}", "values"),
        ("{key: source.serviceAccount, values: [a/b/c]}", "values"),
        ("{key: 'destination.labels[app]', values: [a]}", "key"),
    ],
)
def test_condition_keys_istio_knows(when: str, field: str | None) -> None:
    found = [f for _, f in errors(policy(f"  rules:\n  - when:\n    - {when}\n"))]
    assert found == ([] if field is None else [f"spec.rules[0].when[0].{field}"])


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        ("[cart, shop/cart]", True),
        ("['shop/*']", False),
        ("[a/b/c]", False),
        ("['/cart']", False),
        ("[" + ", ".join(f"sa{i}" for i in range(17)) + "]", False),
    ],
)
def test_service_accounts_follow_istio_rules(values: str, ok: bool) -> None:
    found = errors(policy(f"  rules:\n  - from:\n    - source: {{serviceAccounts: {values}}}\n"))
    assert [f for _, f in found] == ([] if ok else ["spec.rules[0].from[0].source.serviceAccounts"])


def test_source_service_account_condition_decides() -> None:
    spec = "  rules:\n  - when:\n    - {key: source.serviceAccount, values: [cart]}\n"
    filters = rbac_filters(snapshot(policy(spec)), HTTP_PORT)
    assert allowed(filters, peer("spiffe://cluster.local/ns/shop/sa/cart"))
    assert not allowed(filters, peer("spiffe://cluster.local/ns/other/sa/cart"))


# --- 2. trust-domain aliases -------------------------------------------------------------

ALIASED = ProxySpec(
    "vm", workloads=(WORKLOAD,), trust_domain="new.td", trust_domain_aliases=("old.td",)
)


@pytest.mark.parametrize(
    ("principal", "expanded"),
    [  # Istio's ReplaceTrustDomainAliases, bundle [new.td, old.td]
        ("old.td/ns/a/sa/b", ("new.td/ns/a/sa/b", "old.td/ns/a/sa/b")),
        ("cluster.local/ns/a/sa/b", ("new.td/ns/a/sa/b", "old.td/ns/a/sa/b")),
        ("other.td/ns/a/sa/b", ("other.td/ns/a/sa/b",)),
        ("*/ns/a/sa/b", ("*/ns/a/sa/b",)),
        ("*.td/ns/a/sa/b", ("*.td/ns/a/sa/b",)),
        ("old.td/ns/a/sa/b/extra", ("old.td/ns/a/sa/b/extra",)),
        ("old.td/ns/a/sa/*", ("new.td/ns/a/sa/*", "old.td/ns/a/sa/*")),
    ],
)
def test_principals_expand_like_istio(principal: str, expanded: tuple[str, ...]) -> None:
    assert expand_principals([principal], ("new.td", "old.td")) == expanded


def test_trust_domain_values_expand_to_the_bundle() -> None:
    assert expand_trust_domains(["old.td", "x"], ("new.td", "old.td")) == ("new.td", "old.td", "x")


def test_aliases_let_principals_and_namespaces_match_every_alias() -> None:
    spec = (
        "  rules:\n  - from:\n    - source: {principals: [old.td/ns/a/sa/b]}\n"
        "    - source: {namespaces: [ops]}\n"
    )
    filters = rbac_filters(snapshot(policy(spec)), HTTP_PORT, ALIASED)
    for td in ("new.td", "old.td"):
        assert allowed(filters, peer(f"spiffe://{td}/ns/a/sa/b"))
        assert allowed(filters, peer(f"spiffe://{td}/ns/ops/sa/x"))
    assert not allowed(filters, peer("spiffe://third.td/ns/a/sa/b"))
    assert not allowed(filters, peer("spiffe://new.td/ns/a/sa/c"))
    # without the alias, an old identity does not match a policy written for the new domain
    plain = rbac_filters(
        snapshot(policy(spec.replace("old.td/", "new.td/"))),
        HTTP_PORT,
        ProxySpec("vm", workloads=(WORKLOAD,), trust_domain="new.td"),
    )
    assert not allowed(plain, peer("spiffe://old.td/ns/a/sa/b"))


def test_cluster_local_points_at_the_local_trust_domain() -> None:
    spec = DENY_FROM + "{principals: [cluster.local/ns/a/sa/b]}\n"
    filters = rbac_filters(snapshot(policy(spec)), TCP_PORT, ALIASED)
    assert not allowed(filters, peer("spiffe://new.td/ns/a/sa/b", TCP_PORT))
    assert not allowed(filters, peer("spiffe://old.td/ns/a/sa/b", TCP_PORT))
    assert allowed(filters, peer("spiffe://new.td/ns/a/sa/c", TCP_PORT))


# --- 3. istio.io/dry-run -----------------------------------------------------------------

DRY = ", annotations: {istio.io/dry-run: 'true'}"


def test_dry_run_annotation_is_read() -> None:
    snap = snapshot(policy("  action: DENY\n  rules: [{}]\n", meta=DRY))
    assert snap.authorization_policies["shop/ap"].dry_run
    bogus = policy(
        "  action: DENY\n  rules: [{}]\n", meta=", annotations: {istio.io/dry-run: maybe}"
    )
    snap, diagnostics = Normalizer().apply([upsert(bogus)])
    assert not snap.authorization_policies["shop/ap"].dry_run  # Istio enforces it
    assert [d.field for d in diagnostics] == ["metadata.annotations.istio.io/dry-run"]


@pytest.mark.parametrize("port", [HTTP_PORT, TCP_PORT])
def test_dry_run_deny_never_blocks_but_is_shadowed(port: int) -> None:
    spec = DENY_FROM + "{principals: [cluster.local/ns/a/sa/b]}\n"
    filters = rbac_filters(snapshot(policy(spec, meta=DRY)), port)
    caller = peer("spiffe://cluster.local/ns/a/sa/b", port)
    assert allowed(filters, caller)
    assert shadow_hits(filters, caller) == ["ns[shop]-policy[ap]-rule[0]"]
    (only,) = filters
    assert only["shadowRulesStatPrefix"] == "istio_dry_run_deny_"
    assert "rules" not in only


def test_dry_run_allow_beside_an_enforced_allow() -> None:
    # the dry-run ALLOW is a shadow; the enforced ALLOW alone decides
    enforced = policy("  rules:\n  - from:\n    - source: {namespaces: [a]}\n", name="real")
    dry = policy("  rules:\n  - from:\n    - source: {namespaces: [b]}\n", name="try", meta=DRY)
    filters = rbac_filters(snapshot(enforced, dry), HTTP_PORT)
    assert allowed(filters, peer("spiffe://cluster.local/ns/a/sa/x"))
    from_b = peer("spiffe://cluster.local/ns/b/sa/x")
    assert not allowed(filters, from_b)
    assert shadow_hits(filters, from_b) == ["ns[shop]-policy[try]-rule[0]"]
    assert filters[0]["shadowRulesStatPrefix"] == "istio_dry_run_allow_"


def test_dry_run_allow_alone_allows_everything() -> None:
    dry = policy("  rules:\n  - from:\n    - source: {namespaces: [b]}\n", meta=DRY)
    filters = rbac_filters(snapshot(dry), HTTP_PORT)
    assert allowed(filters, peer("spiffe://cluster.local/ns/z/sa/x"))


# --- 5. TCP ports drop HTTP-only fields one by one ----------------------------------------


def test_tcp_deny_keeps_its_ports() -> None:
    # Istio's own example: DENY to {ports: [8080], paths: [/x]}: on a TCP port 9000 nothing is
    # denied (ports: 8080 stays), on 8080 every connection is
    spec = "  action: DENY\n  rules:\n  - to:\n    - operation: {ports: ['9000'], paths: [/x]}\n"
    filters = rbac_filters(snapshot(policy(spec)), TCP_PORT)
    assert not allowed(filters, peer("spiffe://cluster.local/ns/a/sa/b", TCP_PORT))
    other = policy(spec.replace("'9000'", "'8080'"))
    assert allowed(rbac_filters(snapshot(other), TCP_PORT), peer(None, TCP_PORT))


def test_tcp_deny_keeps_principals_and_namespaces() -> None:
    spec = (
        "  action: DENY\n  rules:\n  - from:\n"
        "    - source: {namespaces: [bad], requestPrincipals: ['*']}\n"
        "    to:\n    - operation: {methods: [POST]}\n"
        "    when:\n    - {key: 'request.headers[x-a]', values: [b]}\n"
    )
    filters = rbac_filters(snapshot(policy(spec)), TCP_PORT)
    assert not allowed(filters, peer("spiffe://cluster.local/ns/bad/sa/x", TCP_PORT))
    assert allowed(filters, peer("spiffe://cluster.local/ns/good/sa/x", TCP_PORT))


def test_tcp_audit_keeps_its_ports() -> None:
    spec = "  action: AUDIT\n  rules:\n  - to:\n    - operation: {ports: ['8080'], hosts: [a]}\n"
    (audit,) = rbac_filters(snapshot(policy(spec)), TCP_PORT)
    policies = audit["rules"]["policies"]
    assert policies["ns[shop]-policy[ap]-rule[0]"]["permissions"] == [
        {"andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 8080}]}}]}}
    ]


def test_tcp_allow_with_an_http_field_never_matches() -> None:
    spec = "  rules:\n  - to:\n    - operation: {ports: ['9000'], paths: [/x]}\n"
    filters = rbac_filters(snapshot(policy(spec)), TCP_PORT)
    assert not allowed(filters, peer("spiffe://cluster.local/ns/a/sa/b", TCP_PORT))
    experimental = (
        "  rules:\n  - when:\n    - {key: 'experimental.envoy.filters.a.b[c]', values: [d]}\n"
    )
    (allow,) = rbac_filters(snapshot(policy(experimental)), TCP_PORT)
    assert allow["rules"]["policies"]  # works on TCP in Istio: the rule is kept


@pytest.mark.parametrize("port", [HTTP_PORT, TCP_PORT])
def test_allow_nothing_still_denies_everything(port: int) -> None:
    # `spec: {}` (ALLOW without rules) denies all; its dry-run twin denies nothing
    filters = rbac_filters(snapshot(policy("  {}\n")), port)
    assert filters and not allowed(filters, peer("spiffe://cluster.local/ns/a/sa/b", port))
    dry = rbac_filters(snapshot(policy("  {}\n", meta=DRY)), port)
    assert allowed(dry, peer("spiffe://cluster.local/ns/a/sa/b", port))
