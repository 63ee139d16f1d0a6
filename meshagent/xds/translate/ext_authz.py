"""AuthorizationPolicy action CUSTOM: delegate the decision to an external authorizer, as Istio
does.

The CUSTOM policies of a workload port become shadow rules of an RBAC filter: a request that
matches one gets that rule's name (prefixed `istio-ext-authz`) in the RBAC filter's dynamic
metadata, and only such requests go to the ext_authz filter after it. Its answer decides
before the DENY and ALLOW policies are checked.

As in Istio (without PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS), a workload takes one
provider. When the CUSTOM policies of a workload name several providers, or one the agent
config does not define, or one whose entry is invalid or whose `service` is not a mesh service,
their rules become DENY rules (named `<rule>-deny-due-to-bad-CUSTOM-action`): the requests they
would have sent to the authorizer are denied, every other request goes on. An HTTP provider on
a TCP port is ignored there (only the gRPC kind can check a connection). Dry-run CUSTOM
policies are left out: they never reach the authorizer and never deny.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_ext
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import metadata_pb2, string_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2

from meshagent.model import MeshSnapshot, ProxySpec
from meshagent.model.proxy import ExtAuthzProvider
from meshagent.model.security import AuthzAction, AuthzPolicy
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.rbac import rule_policy
from meshagent.xds.translate.trust import trust_bundle

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
POLICY_PREFIX = "istio-ext-authz"
SHADOW_STAT_PREFIX = "istio_ext_authz_"
BAD_CUSTOM_SUFFIX = "-deny-due-to-bad-CUSTOM-action"


@dataclass(frozen=True, slots=True)
class Authorizer:
    """A usable provider: its entry, and the host and outbound cluster its checks go to."""

    provider: ExtAuthzProvider
    host: str
    cluster: str


def _custom(policies: Sequence[AuthzPolicy]) -> list[AuthzPolicy]:
    return [p for p in policies if p.action is AuthzAction.CUSTOM and not p.dry_run]


def resolve(
    snapshot: MeshSnapshot, providers: Sequence[ExtAuthzProvider], name: str
) -> Authorizer | str:
    """The authorizer a provider name stands for, or why it cannot be used.

    `service` is `<host>` or Istio's `<namespace>/<host>`; it must be a service of the snapshot
    (in that namespace), and `port` one of its ports, so that the checks have a cluster."""
    found = [p for p in providers if p.name == name]
    if not found:
        known = ", ".join(sorted(p.name for p in providers)) or "none"
        return f"extension provider {name!r} is not defined (extension_providers: {known})"
    provider = found[-1]  # of several with one name, the last counts (it carries the problem)
    if provider.problem:
        return f"extension provider {name!r} is invalid: {provider.problem}"
    namespace, _, host = provider.service.rpartition("/")
    service = snapshot.services.get(host)
    if service is None or (namespace and service.namespace != namespace):
        return f"extension provider {name!r}: service {provider.service!r} is not in the mesh"
    if service.port(provider.port) is None:
        return (
            f"extension provider {name!r}: port {provider.port} is not a port of service {host!r}"
        )
    return Authorizer(provider, host, names.cluster_name(provider.port, host))


def provider_services(snapshot: MeshSnapshot, proxy: ProxySpec) -> tuple[object, ...]:
    """The services the proxy's providers name (None where absent): translation caches must
    rebuild when one of them comes or goes, as the CUSTOM filters depend on it."""
    return tuple(
        snapshot.services.get(p.service.rpartition("/")[2]) for p in proxy.extension_providers
    )


def authorizer_for(
    snapshot: MeshSnapshot, proxy: ProxySpec, policies: Sequence[AuthzPolicy]
) -> Authorizer | str | None:
    """The authorizer of the CUSTOM policies among policies (None: there are none), or why
    their rules deny instead (see the module docstring)."""
    wanted = sorted({p.provider for p in _custom(policies)})
    if not wanted:
        return None
    if len(wanted) > 1:
        return "only 1 provider can be used per workload, found multiple providers: " + ", ".join(
            wanted
        )
    return resolve(snapshot, proxy.extension_providers, wanted[0])


def provider_problem(
    snapshot: MeshSnapshot, proxy: ProxySpec, policies: Sequence[AuthzPolicy]
) -> str | None:
    """Why the CUSTOM policies among policies deny what they match, or None."""
    found = authorizer_for(snapshot, proxy, policies)
    return found if isinstance(found, str) else None


def _shadow(policies: Sequence[AuthzPolicy], *, http: bool, bundle: Sequence[str]) -> rbac_pb2.RBAC:
    """The rules of the CUSTOM policies, named for the ext_authz filter to find them."""
    shadow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for policy in _custom(policies):
        for i, rule in enumerate(policy.rules):
            # Like DENY: on TCP, fields it cannot check are dropped (the check covers more).
            built = rule_policy(rule, policy.namespace, AuthzAction.DENY, http=http, bundle=bundle)
            if built is not None:
                name = names.rbac_policy_name(policy.namespace, policy.name, i)
                shadow.policies[f"{POLICY_PREFIX}-{name}"].CopyFrom(built)
    return shadow


def _bad_custom(shadow: rbac_pb2.RBAC) -> rbac_pb2.RBAC:
    """The CUSTOM rules as DENY rules, for a provider that cannot be used."""
    deny = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    for name, policy in shadow.policies.items():
        deny.policies[name + BAD_CUSTOM_SUFFIX].CopyFrom(policy)
    return deny


def http_filters(
    snapshot: MeshSnapshot, proxy: ProxySpec, policies: Sequence[AuthzPolicy]
) -> list[hcm.HttpFilter]:
    """The HTTP filters of the CUSTOM policies among policies: [] when there are none."""
    found = authorizer_for(snapshot, proxy, policies)
    if found is None:
        return []
    shadow = _shadow(policies, http=True, bundle=trust_bundle(proxy))
    if isinstance(found, str):
        rbac = http_rbac.RBAC(rules=_bad_custom(shadow))
        return [hcm.HttpFilter(name=HTTP_RBAC, typed_config=protos.packed(rbac))]
    rbac = http_rbac.RBAC(shadow_rules=shadow, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX)
    return [
        hcm.HttpFilter(name=HTTP_RBAC, typed_config=protos.packed(rbac)),
        hcm.HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=protos.packed(_http_config(found))),
    ]


def network_filters(
    snapshot: MeshSnapshot, proxy: ProxySpec, policies: Sequence[AuthzPolicy], stat_prefix: str
) -> list[lc.Filter]:
    """The network filters of the CUSTOM policies among policies: [] when there are none, or
    when their provider is an HTTP one (it cannot check a connection: ignored, as in Istio)."""
    found = authorizer_for(snapshot, proxy, policies)
    if found is None:
        return []
    shadow = _shadow(policies, http=False, bundle=trust_bundle(proxy))
    if isinstance(found, str):
        rbac = network_rbac.RBAC(rules=_bad_custom(shadow), stat_prefix=stat_prefix)
        return [lc.Filter(name=NETWORK_RBAC, typed_config=protos.packed(rbac))]
    if found.provider.kind != "grpc":
        return []
    rbac = network_rbac.RBAC(
        stat_prefix=stat_prefix, shadow_rules=shadow, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX
    )
    return [
        lc.Filter(name=NETWORK_RBAC, typed_config=protos.packed(rbac)),
        lc.Filter(name=NETWORK_EXT_AUTHZ, typed_config=protos.packed(_network_config(found))),
    ]


def _enabled_when(rbac_filter: str) -> metadata_pb2.MetadataMatcher:
    """Only requests a shadow rule matched: Envoy's RBAC records the matched rule's name."""
    key = f"{SHADOW_STAT_PREFIX}shadow_effective_policy_id"
    return metadata_pb2.MetadataMatcher(
        filter=rbac_filter,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value={"string_match": string_pb2.StringMatcher(prefix=POLICY_PREFIX)},
    )


def _timeout(provider: ExtAuthzProvider) -> duration_pb2.Duration:
    return duration_pb2.Duration(
        seconds=provider.timeout_ms // 1000, nanos=provider.timeout_ms % 1000 * 1_000_000
    )


def _grpc_service(found: Authorizer) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=found.cluster, authority=found.host
        ),
        timeout=_timeout(found.provider),
    )


def _common(config: http_ext.ExtAuthz, provider: ExtAuthzProvider) -> None:
    """What both provider kinds set on the HTTP filter."""
    if provider.status_on_error is not None:
        config.status_on_error.CopyFrom(http_status_pb2.HttpStatus(code=provider.status_on_error))
    body = provider.request_body
    if body is not None:
        config.with_request_body.CopyFrom(
            http_ext.BufferSettings(
                max_request_bytes=body.max_request_bytes,
                allow_partial_message=body.allow_partial_message,
                pack_as_bytes=body.pack_as_bytes,
            )
        )
    if provider.include_headers:
        config.allowed_headers.CopyFrom(_matchers(provider.include_headers))


def _http_config(found: Authorizer) -> http_ext.ExtAuthz:
    provider = found.provider
    config = http_ext.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=provider.fail_open,
        filter_enabled_metadata=_enabled_when(HTTP_RBAC),
    )
    _common(config, provider)
    if provider.kind == "grpc":
        config.grpc_service.CopyFrom(_grpc_service(found))
        return config
    service = config.http_service
    service.server_uri.CopyFrom(
        http_uri_pb2.HttpUri(
            uri=f"http://{found.host}", cluster=found.cluster, timeout=_timeout(provider)
        )
    )
    service.path_prefix = provider.path_prefix
    for key, value in provider.additional_headers:
        service.authorization_request.headers_to_add.append(
            base_pb2.HeaderValue(key=key, value=value)
        )
    response = service.authorization_response
    for field, headers in (
        (response.allowed_upstream_headers, provider.headers_to_upstream_on_allow),
        (response.allowed_client_headers_on_success, provider.headers_to_downstream_on_allow),
        (response.allowed_client_headers, provider.headers_to_downstream_on_deny),
    ):
        if headers:
            field.CopyFrom(_matchers(headers))
    return config


def header_matcher(name: str) -> string_pb2.StringMatcher:
    """Istio's header-name patterns: `x-*` a prefix, `*-y` a suffix, else the exact name;
    always case-insensitive."""
    if name.startswith("*"):
        return string_pb2.StringMatcher(suffix=name[1:], ignore_case=True)
    if name.endswith("*"):
        return string_pb2.StringMatcher(prefix=name[:-1], ignore_case=True)
    return string_pb2.StringMatcher(exact=name, ignore_case=True)


def _matchers(headers: Sequence[str]) -> string_pb2.ListStringMatcher:
    return string_pb2.ListStringMatcher(patterns=[header_matcher(h) for h in headers])


def _network_config(found: Authorizer) -> net_ext.ExtAuthz:
    return net_ext.ExtAuthz(
        stat_prefix="ext_authz",
        grpc_service=_grpc_service(found),
        failure_mode_allow=found.provider.fail_open,
        transport_api_version=config_source_pb2.V3,
        filter_enabled_metadata=_enabled_when(NETWORK_RBAC),
    )
