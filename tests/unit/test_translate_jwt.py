"""Translation of RequestAuthentication: the inbound jwt_authn filter and the JWKS clusters."""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_config
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshagent.model import InboundPort, LocalWorkload, MeshSnapshot, ProxySpec, frozen_map
from meshagent.model.security import AuthzPolicy, AuthzRule, JwtRule, RequestAuthn, Source
from meshagent.xds import typeurls
from meshagent.xds.translate import Translator
from meshagent.xds.translate.jwt import JWT_AUTHN

JWKS = '{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}'
CART = LocalWorkload(
    "cart",
    "shop",
    "cart",
    labels=(("app", "cart"),),
    ports=(InboundPort(9080, 8080, protocol="HTTP"), InboundPort(9306, 3306, protocol="TCP")),
)
WEB = LocalWorkload(
    "web", "shop", "web", labels=(("app", "web"),), ports=(InboundPort(9081, 8081, "HTTP"),)
)
PROXY = ProxySpec(node_id="vm", workloads=(CART, WEB), inbound_address="127.0.0.1")
MESH = RequestAuthn("mesh", "istio-system", None, (JwtRule("z-issuer", jwks=JWKS),))
OWN = RequestAuthn(
    "cart",
    "shop",
    (("app", "cart"),),
    (JwtRule("a-issuer", ("cart",), jwks=JWKS), JwtRule("z-issuer", jwks=JWKS)),
)
REMOTE = RequestAuthn(
    "remote",
    "shop",
    (("app", "web"),),
    (
        JwtRule("r1", jwks_uri="https://keys.example.com/jwks.json", timeout_ms=1500),
        JwtRule("r2", jwks_uri="http://127.0.0.1:9999/jwks.json"),
    ),
)
ALLOW = AuthzPolicy("allow", "shop", rules=(AuthzRule(sources=(Source(namespaces=("shop",)),)),))


def _snapshot(*policies: RequestAuthn, authz: tuple[AuthzPolicy, ...] = ()) -> MeshSnapshot:
    return MeshSnapshot(
        version=1,
        request_authentications=frozen_map({f"{p.namespace}/{p.name}": p for p in policies}),
        authorization_policies=frozen_map({f"{p.namespace}/{p.name}": p for p in authz}),
    )


def _http_filters(snapshot: MeshSnapshot, port: int) -> list[hcm.HttpFilter]:
    resources = Translator().generate(snapshot, PROXY).of(typeurls.LISTENER)
    listener = Listener()
    listener.ParseFromString(resources[f"inbound_127.0.0.1_{port}"].body.value)
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return list(manager.http_filters)


def _jwt(snapshot: MeshSnapshot, port: int) -> jwt_config.JwtAuthentication | None:
    for item in _http_filters(snapshot, port):
        if item.name == JWT_AUTHN:
            config = jwt_config.JwtAuthentication()
            item.typed_config.Unpack(config)
            return config
    return None


def _clusters(snapshot: MeshSnapshot) -> dict[str, Cluster]:
    out = {}
    for name, resource in Translator().generate(snapshot, PROXY).of(typeurls.CLUSTER).items():
        cluster = Cluster()
        cluster.ParseFromString(resource.body.value)
        out[name] = cluster
    return out


def test_no_policy_no_filter() -> None:
    assert _jwt(_snapshot(), 9080) is None
    assert _jwt(_snapshot(OWN), 9081) is None  # OWN selects cart only


def test_rules_of_every_applicable_policy_merge_into_one_filter() -> None:
    # given a mesh-wide and a workload policy sharing one rule, the filter has each rule once
    config = _jwt(_snapshot(MESH, OWN), 9080)
    assert config is not None and config.bypass_cors_preflight
    providers = dict(config.providers)
    assert sorted(providers) == ["origins-0", "origins-1"]
    assert providers["origins-0"].issuer == "a-issuer"
    assert list(providers["origins-0"].audiences) == ["cart"]
    assert providers["origins-1"].issuer == "z-issuer"
    assert all(p.payload_in_metadata == "payload" for p in providers.values())
    assert providers["origins-0"].local_jwks.inline_string == JWKS
    # defaults: no location set, Envoy's own (Authorization: Bearer, access_token)
    assert not providers["origins-0"].from_headers and not providers["origins-0"].from_params


def test_missing_token_passes_and_any_provider_accepts() -> None:
    config = _jwt(_snapshot(OWN), 9080)
    assert config is not None
    (rule,) = config.rules
    assert rule.match.prefix == "/"
    either = rule.requires.requires_any.requirements
    assert [r.provider_name for r in either[:-1]] == ["origins-0", "origins-1"]
    assert either[-1].HasField("allow_missing")


def test_the_jwt_filter_comes_before_rbac_and_router() -> None:
    names = [f.name for f in _http_filters(_snapshot(OWN, authz=(ALLOW,)), 9080)]
    assert names == [JWT_AUTHN, "envoy.filters.http.rbac", "envoy.filters.http.router"]


def test_tcp_ports_get_no_jwt_filter() -> None:
    resources = Translator().generate(_snapshot(MESH), PROXY).of(typeurls.LISTENER)
    listener = Listener()
    listener.ParseFromString(resources["inbound_127.0.0.1_9306"].body.value)
    assert [f.name for f in listener.filter_chains[0].filters] == [
        "envoy.filters.network.tcp_proxy"
    ]


def test_remote_jwks_gets_a_cluster_per_host_and_port() -> None:
    snapshot = _snapshot(REMOTE)
    config = _jwt(snapshot, 9081)
    assert config is not None
    remote = config.providers["origins-0"].remote_jwks
    assert remote.http_uri.cluster == "jwks|keys.example.com|443"
    assert remote.http_uri.timeout.ToMilliseconds() == 1500 and remote.HasField("async_fetch")
    clusters = _clusters(snapshot)
    https = clusters["jwks|keys.example.com|443"]
    assert https.type == Cluster.LOGICAL_DNS
    tls = tls_pb2.UpstreamTlsContext()
    https.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "keys.example.com"
    assert tls.common_tls_context.validation_context.trusted_ca.filename.endswith(".crt")
    plain = clusters["jwks|127.0.0.1|9999"]
    assert plain.type == Cluster.STATIC and not plain.HasField("transport_socket")
    assert not any(n.startswith("jwks|") for n in _clusters(_snapshot(OWN)))


def test_translation_is_deterministic_and_cached() -> None:
    snapshot = _snapshot(MESH, OWN, REMOTE)
    translator = Translator()
    first = translator.generate(snapshot, PROXY)
    again = Translator().generate(snapshot, PROXY)
    for type_url in typeurls.PUSH_ORDER:
        assert {n: r.version for n, r in first.of(type_url).items()} == {
            n: r.version for n, r in again.of(type_url).items()
        }
    # a change of the policies alone changes the listeners and clusters, not the secrets
    changed = dataclasses.replace(snapshot, version=2, request_authentications=frozen_map({}))
    after = translator.generate(changed, PROXY)
    assert "jwks|keys.example.com|443" not in after.of(typeurls.CLUSTER)
    assert _jwt(changed, 9080) is None
