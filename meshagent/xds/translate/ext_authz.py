"""AuthorizationPolicy action CUSTOM: delegate the decision to an external authorizer, as Istio
does.

The CUSTOM policies of a workload port become shadow rules of an RBAC filter: a request that
matches one gets that rule's name (prefixed `istio-ext-authz`) in the RBAC filter's dynamic
metadata, and only such requests go to the ext_authz filter after it. Its answer decides
before the DENY and ALLOW policies are checked. As in Istio, a workload takes one provider:
policies naming several providers, or one the agent config does not define, deny every
request on that port instead (fail closed). TCP ports use the network ext_authz filter, which
only the gRPC provider kind can serve; an HTTP provider on a TCP port also fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, http_uri_pb2
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

from meshagent.model.proxy import ExtAuthzProvider
from meshagent.model.security import AuthzAction, AuthzPolicy
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.rbac import rule_policy

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
POLICY_PREFIX = "istio-ext-authz"
SHADOW_STAT_PREFIX = "istio_ext_authz_"


def http_filters(
    policies: Sequence[AuthzPolicy], providers: Sequence[ExtAuthzProvider]
) -> list[hcm.HttpFilter]:
    """The HTTP filters of the CUSTOM policies among policies: [] when there are none."""
    shadow, provider = _shadow(policies, providers, http=True)
    if shadow is None:
        return []
    if provider is None:
        return [_http_rbac(_deny_all())]
    rbac = http_rbac.RBAC(shadow_rules=shadow, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX)
    return [
        hcm.HttpFilter(name=HTTP_RBAC, typed_config=protos.packed(rbac)),
        hcm.HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=protos.packed(_http_config(provider))),
    ]


def network_filters(
    policies: Sequence[AuthzPolicy], providers: Sequence[ExtAuthzProvider], stat_prefix: str
) -> list[lc.Filter]:
    """The network filters of the CUSTOM policies among policies: [] when there are none."""
    shadow, provider = _shadow(policies, providers, http=False)
    if shadow is None:
        return []
    if provider is None or provider.kind != "grpc":  # HTTP checks cannot serve raw TCP
        rbac = network_rbac.RBAC(rules=_deny_all(), stat_prefix=stat_prefix)
        return [lc.Filter(name=NETWORK_RBAC, typed_config=protos.packed(rbac))]
    rbac = network_rbac.RBAC(
        stat_prefix=stat_prefix, shadow_rules=shadow, shadow_rules_stat_prefix=SHADOW_STAT_PREFIX
    )
    return [
        lc.Filter(name=NETWORK_RBAC, typed_config=protos.packed(rbac)),
        lc.Filter(name=NETWORK_EXT_AUTHZ, typed_config=protos.packed(_network_config(provider))),
    ]


def provider_problem(
    policies: Sequence[AuthzPolicy], providers: Sequence[ExtAuthzProvider]
) -> str | None:
    """Why the CUSTOM policies among policies cannot be served (they then deny all), or None."""
    wanted = sorted({p.provider for p in policies if p.action is AuthzAction.CUSTOM})
    if len(wanted) > 1:
        return f"CUSTOM policies of one workload name several providers: {', '.join(wanted)}"
    known = {p.name for p in providers}
    if wanted and wanted[0] not in known:
        return f"extension provider {wanted[0]!r} is not defined (agent config extension_providers)"
    return None


def _shadow(
    policies: Sequence[AuthzPolicy], providers: Sequence[ExtAuthzProvider], *, http: bool
) -> tuple[rbac_pb2.RBAC | None, ExtAuthzProvider | None]:
    """The shadow rules of the CUSTOM policies (None: there are none) and their provider (None
    when it cannot be served: see provider_problem)."""
    custom = [p for p in policies if p.action is AuthzAction.CUSTOM]
    if not custom:
        return None, None
    shadow = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW)
    for policy in custom:
        for i, rule in enumerate(policy.rules):
            # Like DENY: on TCP, fields it cannot check are dropped (the check covers more).
            built = rule_policy(rule, policy.namespace, AuthzAction.DENY, http=http)
            if built is not None:
                name = names.rbac_policy_name(policy.namespace, policy.name, i)
                shadow.policies[f"{POLICY_PREFIX}-{name}"].CopyFrom(built)
    if provider_problem(custom, providers):
        return shadow, None
    return shadow, next(p for p in providers if p.name == custom[0].provider)


def _deny_all() -> rbac_pb2.RBAC:
    deny = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY)
    deny.policies[f"{POLICY_PREFIX}-deny-all"].CopyFrom(
        rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)],
            principals=[rbac_pb2.Principal(any=True)],
        )
    )
    return deny


def _http_rbac(rules: rbac_pb2.RBAC) -> hcm.HttpFilter:
    return hcm.HttpFilter(name=HTTP_RBAC, typed_config=protos.packed(http_rbac.RBAC(rules=rules)))


def _enabled_when(rbac_filter: str) -> metadata_pb2.MetadataMatcher:
    """Only requests a shadow rule matched: Envoy's RBAC records the matched rule's name."""
    key = f"{SHADOW_STAT_PREFIX}shadow_effective_policy_id"
    return metadata_pb2.MetadataMatcher(
        filter=rbac_filter,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value={"string_match": string_pb2.StringMatcher(prefix=POLICY_PREFIX)},
    )


def _cluster(provider: ExtAuthzProvider) -> str:
    return names.cluster_name(provider.port, provider.service)


def _timeout(provider: ExtAuthzProvider) -> duration_pb2.Duration:
    return duration_pb2.Duration(
        seconds=provider.timeout_ms // 1000, nanos=provider.timeout_ms % 1000 * 1_000_000
    )


def _grpc_service(provider: ExtAuthzProvider) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
            cluster_name=_cluster(provider), authority=provider.service
        ),
        timeout=_timeout(provider),
    )


def _http_config(provider: ExtAuthzProvider) -> http_ext.ExtAuthz:
    config = http_ext.ExtAuthz(
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=provider.fail_open,
        status_on_error=http_status_pb2.HttpStatus(code=provider.status_on_error),
        filter_enabled_metadata=_enabled_when(HTTP_RBAC),
    )
    if provider.include_headers:
        config.allowed_headers.CopyFrom(_matchers(provider.include_headers))
    if provider.kind == "grpc":
        config.grpc_service.CopyFrom(_grpc_service(provider))
        return config
    service = config.http_service
    service.server_uri.CopyFrom(
        http_uri_pb2.HttpUri(
            uri=f"http://{provider.service}:{provider.port}",
            cluster=_cluster(provider),
            timeout=_timeout(provider),
        )
    )
    service.path_prefix = provider.path_prefix
    response = service.authorization_response
    for field, headers in (
        (response.allowed_upstream_headers, provider.headers_to_upstream_on_allow),
        (response.allowed_client_headers_on_success, provider.headers_to_downstream_on_allow),
        (response.allowed_client_headers, provider.headers_to_downstream_on_deny),
    ):
        if headers:
            field.CopyFrom(_matchers(headers))
    return config


def _matchers(headers: Sequence[str]) -> string_pb2.ListStringMatcher:
    return string_pb2.ListStringMatcher(
        patterns=[string_pb2.StringMatcher(exact=h, ignore_case=True) for h in headers]
    )


def _network_config(provider: ExtAuthzProvider) -> net_ext.ExtAuthz:
    return net_ext.ExtAuthz(
        stat_prefix="ext_authz",
        grpc_service=_grpc_service(provider),
        failure_mode_allow=provider.fail_open,
        transport_api_version=config_source_pb2.V3,
        filter_enabled_metadata=_enabled_when(NETWORK_RBAC),
    )
