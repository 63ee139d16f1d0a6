"""RequestAuthentication: the inbound `envoy.filters.http.jwt_authn` filter and the clusters
its remote key sets (jwksUri) are fetched through.

Every RequestAuthentication that applies to a workload (its own selector policies, the
namespace's, the mesh-wide ones in the root namespace) contributes its jwtRules; they merge
into one filter with one provider per distinct rule, named `origins-<n>` in order of issuer.
Istio's semantics: a request without a token passes (authorization decides), a request with
a token that no provider accepts gets 401 (bad signature, expired, unknown issuer), or 403
for a wrong audience (Envoy's answer, as in Istio). A rule with `presence: REQUIRED` also
needs its own valid token: without it, 401.
A verified token's payload goes to the dynamic metadata of this filter under `payload`,
where the RBAC filters' request principal and request.auth.* matchers read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from urllib.parse import urlsplit

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_config
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import empty_pb2

from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec
from meshagent.model.security import JwtRule, RequestAuthn
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate import protos
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.generators import identical, keep_unchanged
from meshagent.xds.translate.selection import applicable, is_http

JWT_AUTHN = "envoy.filters.http.jwt_authn"
PAYLOAD_METADATA_KEY = "payload"  # what the RBAC matchers read: [payload, <claim>...]
DEFAULT_JWKS_TIMEOUT_MS = 5_000  # Istio's default for jwtRules[].timeout
# Claims whose space-separated value Envoy splits into a list in the payload metadata, so that
# request.auth.claims[scope] matches one scope; Istio always adds these two.
DEFAULT_SPACE_DELIMITED_CLAIMS = ("permission", "scope")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's; https JWKS servers
# A key set nobody holds the private key of: a rule with neither jwks nor jwksUri (whose keys
# would need OpenID discovery) rejects every token of its issuer instead of accepting any.
UNUSABLE_JWKS = (
    '{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"meshagent-unusable",'
    '"x":"9lGzF1dr1YXLXdT6ZOHCBdLmGBCExKDQYdOCQdvNQZg",'
    '"y":"QaNglmJCF7skxC8AQ3Baf0jKwQAy4YHwQlccHXz5M24"}]}'
)


def request_authns(
    snapshot: MeshSnapshot, proxy: ProxySpec, workload: LocalWorkload
) -> list[RequestAuthn]:
    """The RequestAuthentications that apply to workload, sorted by namespace and name."""
    return applicable(snapshot.request_authentications, proxy, workload)


def merged_rules(policies: Iterable[RequestAuthn]) -> list[JwtRule]:
    """Every distinct rule of policies, by issuer (then policy order): the providers' order."""
    seen: dict[JwtRule, None] = {}
    for policy in policies:
        for rule in policy.jwt_rules:
            seen.setdefault(rule, None)
    return sorted(seen, key=lambda rule: rule.issuer)


def _jwks_endpoint(uri: str) -> tuple[str, int, bool]:
    """host, port and whether TLS is used, of a validated jwksUri."""
    parts = urlsplit(uri)
    https = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if https else 80), https


def _key_source(provider: jwt_config.JwtProvider, rule: JwtRule) -> None:
    if rule.jwks_uri is None or rule.jwks is not None:
        provider.local_jwks.inline_string = rule.jwks or UNUSABLE_JWKS
        return
    host, port, _ = _jwks_endpoint(rule.jwks_uri)
    remote = provider.remote_jwks
    remote.http_uri.CopyFrom(
        http_uri_pb2.HttpUri(
            uri=rule.jwks_uri,
            cluster=names.jwks_cluster_name(host, port),
            timeout=protos.duration(rule.timeout_ms or DEFAULT_JWKS_TIMEOUT_MS),
        )
    )
    # Fetched when the listener is created, not by the first request that needs it.
    remote.async_fetch.CopyFrom(jwt_config.JwksAsyncFetch())


def build_provider(rule: JwtRule) -> jwt_config.JwtProvider:
    """The Envoy JwtProvider of one rule."""
    provider = jwt_config.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        forward=rule.forward_original_token,
        forward_payload_header=rule.output_payload_to_header,
        payload_in_metadata=PAYLOAD_METADATA_KEY,
        from_params=rule.from_params,
        from_cookies=rule.from_cookies,
    )
    # No location at all: Envoy's defaults (Authorization: Bearer, then access_token), Istio's.
    for name, prefix in rule.from_headers:
        provider.from_headers.add(name=name, value_prefix=prefix)
    for header, claim in rule.output_claim_to_headers:
        provider.claim_to_headers.add(header_name=header, claim_name=claim)
    claims = sorted({*DEFAULT_SPACE_DELIMITED_CLAIMS, *rule.space_delimited_claims})
    provider.normalize_payload_in_metadata.space_delimited_claims.extend(claims)
    _key_source(provider, rule)
    return provider


def build_jwt_filter(rules: list[JwtRule]) -> hcm.HttpFilter:
    """The jwt_authn filter for rules (non-empty): any provider's valid token, or no token.

    With a rule of presence REQUIRED, as Istio builds it: every rule at once, a REQUIRED one
    by its provider alone (its valid token is needed), an OPTIONAL one by its provider or a
    missing token."""
    config = jwt_config.JwtAuthentication(bypass_cors_preflight=True)
    for index, rule in enumerate(rules):
        config.providers[names.jwt_provider_name(index)].CopyFrom(build_provider(rule))
    if any(rule.required for rule in rules):
        requires = _all_rules_requirement(rules)
    else:
        either = jwt_config.JwtRequirementOrList()
        for index in range(len(rules)):
            either.requirements.add(provider_name=names.jwt_provider_name(index))
        either.requirements.add(allow_missing=empty_pb2.Empty())
        requires = jwt_config.JwtRequirement(requires_any=either)
    config.rules.add(match=rc.RouteMatch(prefix="/"), requires=requires)
    return hcm.HttpFilter(name=JWT_AUTHN, typed_config=protos.packed(config))


def _all_rules_requirement(rules: list[JwtRule]) -> jwt_config.JwtRequirement:
    each: list[jwt_config.JwtRequirement] = []
    for index, rule in enumerate(rules):
        name = names.jwt_provider_name(index)
        if rule.required:
            each.append(jwt_config.JwtRequirement(provider_name=name))
            continue
        either = jwt_config.JwtRequirementOrList()
        either.requirements.add(provider_name=name)
        either.requirements.add(allow_missing=empty_pb2.Empty())
        each.append(jwt_config.JwtRequirement(requires_any=either))
    if len(each) == 1:
        return each[0]
    return jwt_config.JwtRequirement(
        requires_all=jwt_config.JwtRequirementAndList(requirements=each)
    )


def jwt_filter_for(
    snapshot: MeshSnapshot, proxy: ProxySpec, workload: LocalWorkload
) -> hcm.HttpFilter | None:
    """The jwt_authn filter of workload's HTTP ports; None when no rule applies to it."""
    rules = merged_rules(request_authns(snapshot, proxy, workload))
    return build_jwt_filter(rules) if rules else None


def _upstream_tls(host: str) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext()
    validation = common.validation_context
    validation.trusted_ca.filename = SYSTEM_CA_BUNDLE
    is_ip = _is_ip(host)
    san = validation.match_typed_subject_alt_names.add(
        san_type=common_pb2.SubjectAltNameMatcher.IP_ADDRESS
        if is_ip
        else common_pb2.SubjectAltNameMatcher.DNS
    )
    san.matcher.CopyFrom(string_pb2.StringMatcher(exact=host))
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni="" if is_ip else host)
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def build_jwks_cluster(uri: str) -> Cluster:
    """The cluster to a jwksUri's server: STATIC for an IP literal, else LOGICAL_DNS; TLS
    checked against the system CA bundle (and the host name) for https."""
    host, port, https = _jwks_endpoint(uri)
    kind = Cluster.STATIC if _is_ip(host) else Cluster.LOGICAL_DNS
    cluster = Cluster(name=names.jwks_cluster_name(host, port), type=kind)
    cluster.connect_timeout.CopyFrom(protos.duration(protos.DEFAULT_CONNECT_TIMEOUT_MS))
    if kind == Cluster.LOGICAL_DNS:
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
    assignment = cluster.load_assignment
    assignment.cluster_name = cluster.name
    address = assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = host, port
    if https:
        cluster.transport_socket.CopyFrom(_upstream_tls(host))
    return cluster


def jwks_uris(snapshot: MeshSnapshot, proxy: ProxySpec) -> list[str]:
    """The jwksUris the proxy's HTTP inbound ports fetch, one per cluster name, sorted."""
    by_cluster: dict[str, str] = {}
    for workload in proxy.workloads:
        if not any(is_http(p) for p in workload.ports):
            continue
        for rule in merged_rules(request_authns(snapshot, proxy, workload)):
            if rule.jwks_uri is not None and rule.jwks is None:
                host, port, _ = _jwks_endpoint(rule.jwks_uri)
                by_cluster.setdefault(names.jwks_cluster_name(host, port), rule.jwks_uri)
    return [by_cluster[name] for name in sorted(by_cluster)]


class JwksClustersGenerator:
    """The `jwks|<host>|<port>` clusters of the remote key sets the inbound filters use."""

    name = "jwks-clusters"
    type_url = typeurls.CLUSTER

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        key = (ctx.proxy, ctx.snapshot.request_authentications)
        if identical(key, self._key):
            return self._last
        clusters = [build_jwks_cluster(uri) for uri in jwks_uris(ctx.snapshot, ctx.proxy)]
        self._key = key
        self._last = keep_unchanged(self._last, [Resource.pack(c.name, c) for c in clusters])
        return self._last
