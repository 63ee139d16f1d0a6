"""AuthorizationPolicy action CUSTOM: the agent config's extension providers, and the shadow
RBAC + ext_authz filters they become (meshagent/xds/translate/ext_authz.py)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from meshagent.agent.config import parse_config
from meshagent.errors import ConfigError
from meshagent.model.proxy import ExtAuthzProvider
from meshagent.model.security import AuthzAction, AuthzPolicy, AuthzRule, Operation
from meshagent.xds.translate.ext_authz import http_filters, network_filters, provider_problem

HTTP = ExtAuthzProvider(
    "ext", "http", "authz.local", 8000, path_prefix="/check", include_headers=("x-user",)
)
GRPC = ExtAuthzProvider("ext-grpc", "grpc", "authz.local", 9000, timeout_ms=1500)


def _custom(
    provider: str, name: str = "ext", paths: tuple[str, ...] = ("/admin/*",)
) -> AuthzPolicy:
    rule = AuthzRule(operations=(Operation(paths=paths),))
    return AuthzPolicy(name, "shop", AuthzAction.CUSTOM, rules=(rule,), provider=provider)


def _as_dicts(filters: list) -> list[dict]:  # type: ignore[type-arg]
    return [json_format.MessageToDict(f) for f in filters]


def test_no_custom_policy_adds_nothing() -> None:
    allow = AuthzPolicy("a", "shop", AuthzAction.ALLOW, rules=(AuthzRule(),))
    assert http_filters([allow], [HTTP]) == []
    assert network_filters([allow], [GRPC], "inbound") == []


def test_http_provider_checks_only_requests_its_rules_match() -> None:
    shadow, ext = _as_dicts(http_filters([_custom("ext")], [HTTP]))
    assert shadow["name"] == "envoy.filters.http.rbac"
    rbac = shadow["typedConfig"]
    assert rbac["shadowRulesStatPrefix"] == "istio_ext_authz_"
    assert list(rbac["shadowRules"]["policies"]) == ["istio-ext-authz-ns[shop]-policy[ext]-rule[0]"]
    assert "rules" not in rbac  # shadow only: the RBAC filter itself enforces nothing
    config = ext["typedConfig"]
    assert ext["name"] == "envoy.filters.http.ext_authz"
    assert config["filterEnabledMetadata"]["path"] == [
        {"key": "istio_ext_authz_shadow_effective_policy_id"}
    ]
    assert config["filterEnabledMetadata"]["value"]["stringMatch"] == {"prefix": "istio-ext-authz"}
    service = config["httpService"]
    assert service["serverUri"]["cluster"] == "outbound|8000||authz.local"
    assert service["pathPrefix"] == "/check"
    assert config["allowedHeaders"]["patterns"] == [{"exact": "x-user", "ignoreCase": True}]
    assert config["statusOnError"] == {"code": "Forbidden"}


def test_grpc_provider_on_http_and_tcp_ports() -> None:
    (_, ext) = _as_dicts(http_filters([_custom("ext-grpc")], [GRPC]))
    grpc = ext["typedConfig"]["grpcService"]
    assert grpc["envoyGrpc"]["clusterName"] == "outbound|9000||authz.local"
    assert grpc["timeout"] == "1.500s"
    shadow, net = _as_dicts(network_filters([_custom("ext-grpc")], [GRPC], "inbound_9"))
    assert (shadow["name"], net["name"]) == (
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
    )
    # paths cannot be checked on TCP: as for DENY, the rule then covers every connection
    assert shadow["typedConfig"]["shadowRules"]["policies"]
    assert net["typedConfig"]["filterEnabledMetadata"]["filter"] == "envoy.filters.network.rbac"


@pytest.mark.parametrize(
    ("policies", "providers", "http", "problem"),
    [
        ([_custom("missing")], [HTTP], True, "'missing' is not defined"),
        ([_custom("ext"), _custom("ext-grpc", "b")], [HTTP, GRPC], True, "several providers"),
        ([_custom("ext")], [HTTP], False, None),  # known, but HTTP checks cannot serve TCP
    ],
)
def test_unservable_custom_policies_deny_everything(
    policies: list[AuthzPolicy],
    providers: list[ExtAuthzProvider],
    http: bool,
    problem: str | None,
) -> None:
    reason = provider_problem(policies, providers)
    assert (reason is None) if problem is None else (problem in (reason or ""))
    built = http_filters(policies, providers) if http else network_filters(policies, providers, "p")
    (only,) = _as_dicts(built)
    rules = only["typedConfig"]["rules"]
    assert rules["action"] == "DENY"
    assert rules["policies"]["istio-ext-authz-deny-all"]["principals"] == [{"any": True}]


CONFIG = "node: {id: a}\nstate_dir: /tmp/x\nextension_providers:\n"


def test_extension_providers_config() -> None:
    text = CONFIG + (
        "  - name: ext\n"
        "    envoy_ext_authz_http: {service: authz.local, port: 8000, timeout: 250ms,\n"
        "      include_request_headers_in_check: [X-User], headers_to_upstream_on_allow: [x-a]}\n"
        "  - name: ext-grpc\n"
        "    envoy_ext_authz_grpc: {service: authz.local, port: 9000, fail_open: true}\n"
    )
    http, grpc = parse_config(text, "/tmp/agent.yaml").proxy_spec().extension_providers
    assert (http.kind, http.timeout_ms, http.include_headers) == ("http", 250, ("x-user",))
    assert http.headers_to_upstream_on_allow == ("x-a",)
    assert (grpc.kind, grpc.port, grpc.fail_open, grpc.timeout_ms) == ("grpc", 9000, True, 600)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("{name: e}", "extension_providers[0]"),
        ("{name: e, envoy_ext_authz_http: {port: 80}}", "envoy_ext_authz_http.service"),
        ("{name: e, envoy_ext_authz_http: {service: s}}", "envoy_ext_authz_http.port"),
        ("{name: e, envoy_ext_authz_grpc: {service: s, port: 1, path_prefix: /x}}", "path_prefix"),
        ("{name: e, envoy_ext_authz_grpc: {service: s, port: 1, timeout: soon}}", "timeout"),
        ("{name: e, envoy_ext_authz_http: {service: s, port: 1, path_prefix: x}}", "path_prefix"),
        ("{name: e, envoy_ext_authz_http: {service: s, port: 1, status_on_error: 99}}", "status"),
    ],
)
def test_bad_extension_providers_are_located(entry: str, field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(CONFIG + f"  - {entry}\n", "/tmp/agent.yaml")
    assert field in str(raised.value) and "agent.yaml:4" in str(raised.value)


def test_a_provider_name_is_unique() -> None:
    entry = "  - {name: e, envoy_ext_authz_grpc: {service: s, port: 1}}\n"
    with pytest.raises(ConfigError, match="defined twice"):
        parse_config(CONFIG + entry + entry, "/tmp/agent.yaml")
