"""AuthorizationPolicy action CUSTOM: the agent config's extension providers, and the shadow
RBAC + ext_authz filters they become (meshagent/xds/translate/ext_authz.py), as Istio's
pilot/pkg/security/authz/builder builds them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from google.protobuf import json_format

from meshagent.agent.config import parse_config
from meshagent.errors import ConfigError
from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.proxy import ExtAuthzProvider, RequestBody
from meshagent.model.security import AuthzAction, AuthzPolicy, AuthzRule, Operation
from meshagent.model.services import Resolution, Service, ServicePort
from meshagent.model.snapshot import frozen_map
from meshagent.xds.translate.ext_authz import http_filters, network_filters, provider_problem
from tests.unit.rbac_eval import Request, allowed

HTTP = ExtAuthzProvider(
    "ext", "http", "authz.local", 8000, path_prefix="/check", include_headers=("x-user",)
)
GRPC = ExtAuthzProvider("ext-grpc", "grpc", "authz.local", 9000, timeout_ms=1500)
AUTHZ = Service(
    "authz.local",
    "shop",
    (ServicePort(8000, "http", "HTTP"), ServicePort(9000, "grpc", "GRPC")),
    Resolution.STATIC,
)
SNAPSHOT = MeshSnapshot(services=frozen_map({"authz.local": AUTHZ}))


def _proxy(*providers: ExtAuthzProvider) -> ProxySpec:
    return ProxySpec("n", extension_providers=providers)


def _http(policies: list[AuthzPolicy], *providers: ExtAuthzProvider) -> list[Any]:
    return http_filters(SNAPSHOT, _proxy(*providers), policies)


def _tcp(policies: list[AuthzPolicy], *providers: ExtAuthzProvider) -> list[Any]:
    return network_filters(SNAPSHOT, _proxy(*providers), policies, "inbound_9")


def _custom(
    provider: str,
    name: str = "ext",
    paths: tuple[str, ...] = ("/admin/*",),
    *,
    ports: tuple[str, ...] = (),
) -> AuthzPolicy:
    rule = AuthzRule(operations=(Operation(paths=paths, ports=ports),))
    return AuthzPolicy(name, "shop", AuthzAction.CUSTOM, rules=(rule,), provider=provider)


def _as_dicts(filters: list) -> list[dict]:  # type: ignore[type-arg]
    return [json_format.MessageToDict(f) for f in filters]


def test_no_custom_policy_adds_nothing() -> None:
    allow = AuthzPolicy("a", "shop", AuthzAction.ALLOW, rules=(AuthzRule(),))
    assert _http([allow], HTTP) == []
    assert _tcp([allow], GRPC) == []


def test_http_provider_checks_only_requests_its_rules_match() -> None:
    shadow, ext = _as_dicts(_http([_custom("ext")], HTTP))
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
    assert service["serverUri"]["timeout"] == "600s"  # Istio's default
    assert service["pathPrefix"] == "/check"
    assert config["allowedHeaders"]["patterns"] == [{"exact": "x-user", "ignoreCase": True}]
    assert "statusOnError" not in config  # not set: Envoy's default (403), as Istio leaves it


def test_grpc_provider_on_http_and_tcp_ports() -> None:
    (_, ext) = _as_dicts(_http([_custom("ext-grpc")], GRPC))
    grpc = ext["typedConfig"]["grpcService"]
    assert grpc["envoyGrpc"]["clusterName"] == "outbound|9000||authz.local"
    assert grpc["timeout"] == "1.500s"
    shadow, net = _as_dicts(_tcp([_custom("ext-grpc")], GRPC))
    assert (shadow["name"], net["name"]) == (
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
    )
    # paths cannot be checked on TCP: as for DENY, the rule then covers every connection
    assert shadow["typedConfig"]["shadowRules"]["policies"]
    assert net["typedConfig"]["filterEnabledMetadata"]["filter"] == "envoy.filters.network.rbac"


def test_http_provider_is_ignored_on_a_tcp_port() -> None:
    # given a known HTTP provider, when the port is TCP, then no filter at all (Istio ignores it)
    assert _tcp([_custom("ext")], HTTP) == []


def _rbac_rules(filters: list[Any]) -> list[dict[str, Any]]:
    return [f["typedConfig"] for f in _as_dicts(filters) if f["name"].endswith(".rbac")]


@pytest.mark.parametrize(
    ("policies", "providers", "problem"),
    [
        ([_custom("missing")], [HTTP], "'missing' is not defined"),
        ([_custom("ext"), _custom("ext-grpc", "b")], [HTTP, GRPC], "multiple providers"),
        ([_custom("bad")], [ExtAuthzProvider("bad", "", problem="port: must be")], "invalid"),
        ([_custom("ext")], [ExtAuthzProvider("ext", "http", "nowhere.local", 80)], "not in the"),
        ([_custom("ext")], [ExtAuthzProvider("ext", "http", "other/authz.local", 8000)], "not in"),
        ([_custom("ext")], [ExtAuthzProvider("ext", "http", "authz.local", 81)], "not a port"),
    ],
)
def test_unservable_provider_denies_only_what_its_rules_match(
    policies: list[AuthzPolicy], providers: list[ExtAuthzProvider], problem: str
) -> None:
    # given CUSTOM policies whose provider cannot be used, when translated, then their rules
    # are DENY rules: their paths are denied, every other request goes on (Istio 1.20+)
    reason = provider_problem(SNAPSHOT, _proxy(*providers), policies)
    assert problem in (reason or "")
    for built in (_http(policies, *providers), _tcp(policies, *providers)):
        (rbac,) = _rbac_rules(built)
        assert rbac["rules"]["action"] == "DENY"
        assert all(n.endswith("-deny-due-to-bad-CUSTOM-action") for n in rbac["rules"]["policies"])
    http = _rbac_rules(_http(policies, *providers))
    assert not allowed(http, Request(headers={":path": "/admin/x"}))
    assert allowed(http, Request(headers={":path": "/public"}))


def test_bad_provider_on_tcp_keeps_the_port_scope_of_its_rules() -> None:
    # paths are dropped on TCP, ports stay: only connections to that port are denied
    policy = _custom("missing", ports=("8080",))
    rbac = _rbac_rules(_tcp([policy], GRPC))
    assert not allowed(rbac, Request(destination_port=8080))
    assert allowed(rbac, Request(destination_port=9000))


def test_namespaced_service_resolves_to_the_real_outbound_cluster() -> None:
    provider = ExtAuthzProvider("ext", "grpc", "shop/authz.local", 9000)
    (_, ext) = _as_dicts(_http([_custom("ext")], provider))
    grpc = ext["typedConfig"]["grpcService"]["envoyGrpc"]
    assert grpc == {"clusterName": "outbound|9000||authz.local", "authority": "authz.local"}


def test_dry_run_custom_policy_never_reaches_the_authorizer() -> None:
    policy = _custom("ext")
    dry = AuthzPolicy(
        "d", "shop", AuthzAction.CUSTOM, rules=policy.rules, provider="missing", dry_run=True
    )
    assert _http([dry], HTTP) == []
    (shadow, _) = _as_dicts(_http([policy, dry], HTTP))
    assert list(shadow["typedConfig"]["shadowRules"]["policies"]) == [
        "istio-ext-authz-ns[shop]-policy[ext]-rule[0]"
    ]


def test_istio_provider_options_become_ext_authz_settings() -> None:
    provider = ExtAuthzProvider(
        "ext",
        "http",
        "authz.local",
        8000,
        status_on_error=503,
        include_headers=("x-custom-id", "x-prefix-*", "*-suffix"),
        headers_to_upstream_on_allow=("Authorization", "x-prefix-*"),
        additional_headers=(("x-header-1", "value-1"),),
        request_body=RequestBody(2048, allow_partial_message=True, pack_as_bytes=True),
    )
    (_, ext) = _as_dicts(_http([_custom("ext")], provider))
    config = ext["typedConfig"]
    assert config["allowedHeaders"]["patterns"] == [
        {"exact": "x-custom-id", "ignoreCase": True},
        {"prefix": "x-prefix-", "ignoreCase": True},
        {"suffix": "-suffix", "ignoreCase": True},
    ]
    assert config["statusOnError"] == {"code": "ServiceUnavailable"}
    assert config["withRequestBody"] == {
        "maxRequestBytes": 2048,
        "allowPartialMessage": True,
        "packAsBytes": True,
    }
    service = config["httpService"]
    assert service["authorizationRequest"]["headersToAdd"] == [
        {"key": "x-header-1", "value": "value-1"}
    ]
    assert service["authorizationResponse"]["allowedUpstreamHeaders"]["patterns"][1] == {
        "prefix": "x-prefix-",
        "ignoreCase": True,
    }


CONFIG = "node: {id: a}\nstate_dir: /tmp/x\nextension_providers:\n"


def test_extension_providers_config() -> None:
    text = CONFIG + (
        "  - name: ext\n"
        "    envoy_ext_authz_http: {service: authz.local, port: '8000', timeout: 250ms,\n"
        "      include_request_headers_in_check: [X-User, x-pre-*], status_on_error: '503',\n"
        "      headers_to_upstream_on_allow: [x-a],\n"
        "      include_additional_headers_in_check: {x-b: v},\n"
        "      include_request_body_in_check: {max_request_bytes: 100, pack_as_bytes: true}}\n"
        "  - name: ext-grpc\n"
        "    envoy_ext_authz_grpc: {service: ns/authz.local, port: 9000, fail_open: true}\n"
        "  - name: old\n"
        "    envoy_ext_authz_http: {service: a.local, port: 1, include_headers_in_check: [x-o]}\n"
    )
    http, grpc, old = parse_config(text, "/tmp/agent.yaml").proxy_spec().extension_providers
    assert (http.kind, http.port, http.timeout_ms) == ("http", 8000, 250)
    assert http.include_headers == ("X-User", "x-pre-*")
    assert (http.status_on_error, http.additional_headers) == (503, (("x-b", "v"),))
    assert http.request_body == RequestBody(100, pack_as_bytes=True)
    assert http.headers_to_upstream_on_allow == ("x-a",)
    assert (grpc.kind, grpc.port, grpc.fail_open) == ("grpc", 9000, True)
    assert (grpc.service, grpc.timeout_ms, grpc.status_on_error) == (
        "ns/authz.local",
        600_000,
        None,
    )
    assert old.include_headers == ("x-o",)  # Istio's deprecated field, when the new one is unset
    assert not (http.problem or grpc.problem or old.problem)


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
        (
            "{name: e, envoy_ext_authz_http: {service: s, port: 1, status_on_error: '499'}}",
            "status",
        ),
        (
            "{name: e, envoy_ext_authz_http: {service: s, port: 1, "
            "include_request_headers_in_check: ['*']}}",
            "include_request_headers_in_check",
        ),
        ("{name: e, envoy_ext_authz_http: {service: s, port: 70000}}", "port"),
    ],
)
def test_a_bad_provider_is_reported_and_kept_apart(entry: str, field: str) -> None:
    # given one bad entry beside a good one, when the config loads, then the agent starts: the
    # bad entry carries its located problem (its policies will deny), the good one is usable
    good = "  - {name: good, envoy_ext_authz_grpc: {service: s, port: 1}}\n"
    config = parse_config(CONFIG + f"  - {entry}\n" + good, "/tmp/agent.yaml")
    bad, ok = config.proxy_spec().extension_providers
    assert (bad.name, bad.kind) == ("e", "")
    assert field in bad.problem and "agent.yaml:4" in bad.problem
    assert (ok.name, ok.problem) == ("good", "")


def test_a_provider_name_is_unique() -> None:
    # Istio keeps the last entry of a name, marked invalid
    entry = "  - {name: e, envoy_ext_authz_grpc: {service: s, port: 1}}\n"
    first, second = parse_config(CONFIG + entry + entry, "/tmp/agent.yaml").extension_providers
    assert not first.problem and "defined twice" in second.problem
    problem = provider_problem(SNAPSHOT, _proxy(first, second), [_custom("e")])
    assert "invalid" in (problem or "")


def test_extension_providers_must_be_a_list() -> None:
    with pytest.raises(ConfigError, match="extension_providers"):
        parse_config("node: {id: a}\nstate_dir: /tmp/x\nextension_providers: {}\n", "/tmp/a.yaml")


def test_trust_domain_aliases_config() -> None:
    text = "node: {id: a}\nstate_dir: /tmp/x\ntrust_domain_aliases: [old.example, td2]\n"
    proxy = parse_config(text, "/tmp/agent.yaml").proxy_spec()
    assert proxy.trust_domain_aliases == ("old.example", "td2")
    with pytest.raises(ConfigError, match=r"trust_domain_aliases\[1\]"):
        parse_config(text.replace("td2", "'Bad Domain'"), "/tmp/agent.yaml")


def test_listeners_follow_the_provider_service_coming_and_going() -> None:
    # given a CUSTOM policy whose provider's service is not in the mesh yet, when its
    # ServiceEntry arrives, then the same translator builds the ext_authz filter (no stale
    # deny rules from its cache), and when it goes, the deny rules come back
    from meshagent.model import InboundPort, LocalWorkload
    from meshagent.xds import typeurls
    from meshagent.xds.translate import Translator

    echo = LocalWorkload("echo", "shop", "echo", ports=(InboundPort(9080, 8080),))
    proxy = ProxySpec("n", workloads=(echo,), extension_providers=(HTTP,))
    policies = frozen_map({"shop/ext": _custom("ext")})
    shared = {
        "authorization_policies": policies,
        "peer_authentications": frozen_map({}),
        "request_authentications": frozen_map({}),
    }  # unchanged maps stay the same objects, as the normalizer keeps them
    without = MeshSnapshot(version=1, **shared)  # type: ignore[arg-type]
    with_service = MeshSnapshot(version=2, services=SNAPSHOT.services, **shared)  # type: ignore[arg-type]
    translator = Translator()

    def has_ext_authz(snap: MeshSnapshot) -> bool:
        listeners = translator.generate(snap, proxy).of(typeurls.LISTENER).values()
        return any(b"envoy.filters.http.ext_authz" in r.value for r in listeners)

    assert not has_ext_authz(without)
    assert has_ext_authz(with_service)
    assert not has_ext_authz(dataclasses.replace(without, version=3))
