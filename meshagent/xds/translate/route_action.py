"""The action half of an Envoy route: where a request goes and how it gets there.

Covers cluster choice (single or weighted), consistent-hash policies taken from the
destination's DestinationRule, timeouts, retries, mirroring and rewrites. Redirects and direct
responses, the two other actions, are here as well.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2 as previous_priorities,
)
from envoy.type.matcher.v3 import regex_pb2

from meshagent.model import (
    ConsistentHash,
    Destination,
    DirectResponse,
    HttpMatch,
    HttpRoute,
    MatchKind,
    Mirror,
    Redirect,
    Retry,
    Rewrite,
    Service,
)
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.context import RuleIndex
from meshagent.xds.translate.policy import effective_policy
from meshagent.xds.translate.route_match import regex

# Istio's retry defaults: applied to every route unless a VirtualService says otherwise.
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIABLE_STATUS_CODES = (503,)
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


@dataclass(frozen=True, slots=True)
class RouteScope:
    """Where routes are being built: the listener port, and the mesh to resolve names in."""

    port: int
    services: Mapping[str, Service]
    rules: RuleIndex


def destination_port(dest: Destination, scope: RouteScope) -> int:
    """The service port a destination means: explicit, else the routed one, else the only one."""
    if dest.port is not None:
        return dest.port
    service = scope.services.get(dest.host)
    if service is None or service.port(scope.port) is not None or len(service.ports) != 1:
        return scope.port
    return service.ports[0].number


def destination_cluster(dest: Destination, scope: RouteScope) -> str:
    """The outbound cluster name a destination resolves to."""
    return names.cluster_name(destination_port(dest, scope), dest.host, dest.subset)


def hash_policies(hashing: ConsistentHash | None) -> list[rc.RouteAction.HashPolicy]:
    """What to hash on for a consistent-hash destination (empty for other balancers)."""
    if hashing is None:
        return []
    policy = rc.RouteAction.HashPolicy()
    if hashing.http_header_name:
        policy.header.header_name = hashing.http_header_name
    elif hashing.http_cookie_name:
        policy.cookie.name = hashing.http_cookie_name
        policy.cookie.path = hashing.http_cookie_path
        if hashing.http_cookie_ttl_ms is not None:
            policy.cookie.ttl.CopyFrom(protos.duration(hashing.http_cookie_ttl_ms))
    elif hashing.use_source_ip:
        policy.connection_properties.source_ip = True
    elif hashing.http_query_parameter_name:
        policy.query_parameter.name = hashing.http_query_parameter_name
    else:
        return []
    return [policy]


def destination_hash(dest: Destination, scope: RouteScope) -> ConsistentHash | None:
    """The consistent-hash setting of the cluster dest resolves to, if any."""
    rule = scope.rules.rule_for(dest.host)
    lb = effective_policy(rule, dest.subset, destination_port(dest, scope)).load_balancer
    return lb.consistent_hash if lb is not None else None


def route_hash(route: HttpRoute, scope: RouteScope) -> ConsistentHash | None:
    """The hash setting of a route: the first of its destinations that has one."""
    for weighted in route.route:
        found = destination_hash(weighted.destination, scope)
        if found is not None:
            return found
    return None


def _split_retry_on(retry_on: str) -> tuple[str, list[int]]:
    """Envoy retry_on conditions, with bare HTTP status codes moved to a list of their own."""
    conditions: list[str] = []
    codes: list[int] = []
    for part in (p.strip() for p in retry_on.split(",")):
        if part.isdigit() and int(part) in HTTPStatus._value2member_map_:
            codes.append(int(part))
        elif part:
            conditions.append(part)
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return ",".join(conditions), codes


def retry_policy(retry: Retry | None, *, hashing: bool) -> rc.RetryPolicy | None:
    """Istio's retry semantics: defaults when unset, none when attempts is 0.

    With consistent hashing, retries stay on the same host rather than avoid previous ones.
    The result may be shared between calls: copy it into place, never mutate it.
    """
    if retry is None:
        return _DEFAULT_RETRY_HASHING if hashing else _DEFAULT_RETRY
    return _retry_policy(retry, hashing=hashing)


def _retry_policy(retry: Retry | None, *, hashing: bool) -> rc.RetryPolicy | None:
    if retry is not None and retry.attempts <= 0:
        return None
    out = rc.RetryPolicy(
        num_retries=protos.uint32(retry.attempts if retry else DEFAULT_RETRY_ATTEMPTS),
        retry_on=DEFAULT_RETRY_ON,
        retriable_status_codes=DEFAULT_RETRIABLE_STATUS_CODES,
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    if not hashing:
        predicate = out.retry_host_predicate.add(name=protos.PREVIOUS_HOSTS)
        predicate.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
    if retry is None:
        return out
    if retry.retry_on:
        conditions, codes = _split_retry_on(retry.retry_on)
        out.retry_on = conditions
        del out.retriable_status_codes[:]
        out.retriable_status_codes.extend(codes)
    if retry.per_try_timeout_ms is not None:
        out.per_try_timeout.CopyFrom(protos.duration(retry.per_try_timeout_ms))
    if retry.retry_remote_localities:
        out.retry_priority.name = protos.PREVIOUS_PRIORITIES
        out.retry_priority.typed_config.Pack(
            previous_priorities.PreviousPrioritiesConfig(update_frequency=2)
        )
    return out


# Built once: every route without explicit retries carries one of these.
_DEFAULT_RETRY = _retry_policy(None, hashing=False)
_DEFAULT_RETRY_HASHING = _retry_policy(None, hashing=True)


def mirror_policy(mirror: Mirror, scope: RouteScope) -> rc.RouteAction.RequestMirrorPolicy:
    """Shadow a share of requests (all of them when no percentage is set) to a destination."""
    out = rc.RouteAction.RequestMirrorPolicy(cluster=destination_cluster(mirror.destination, scope))
    share = 100.0 if mirror.percent is None else mirror.percent
    out.runtime_fraction.default_value.CopyFrom(protos.fractional_percent(share))
    return out


def configure_rewrite(action: rc.RouteAction, rewrite: Rewrite, match: HttpMatch | None) -> None:
    """Path and authority rewrites."""
    if rewrite.uri_regex_match:
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex(rewrite.uri_regex_match), substitution=rewrite.uri_regex_rewrite
            )
        )
    elif rewrite.uri:
        uri = match.uri if match is not None else None
        if uri is not None and uri.kind is MatchKind.EXACT:
            # An exact match replaces the whole path; a prefix rewrite would keep any suffix.
            action.regex_rewrite.CopyFrom(
                regex_pb2.RegexMatchAndSubstitute(pattern=regex("^.*$"), substitution=rewrite.uri)
            )
        else:
            action.prefix_rewrite = rewrite.uri
    if rewrite.authority:
        action.host_rewrite_literal = rewrite.authority


def redirect_action(redirect: Redirect) -> rc.RedirectAction:
    """A redirect response; an unknown code falls back to 301, the Istio default."""
    out = rc.RedirectAction(
        response_code=_REDIRECT_CODES.get(redirect.code, rc.RedirectAction.MOVED_PERMANENTLY)
    )
    if redirect.uri:
        out.path_redirect = redirect.uri
    if redirect.authority:
        out.host_redirect = redirect.authority
    if redirect.scheme:
        out.scheme_redirect = redirect.scheme
    if redirect.port is not None:
        out.port_redirect = redirect.port
    elif redirect.derive_port == "FROM_PROTOCOL_DEFAULT":
        # Envoy has no "default port of the scheme" switch: name the port of the scheme.
        out.port_redirect = 443 if (redirect.scheme or "http").lower() == "https" else 80
    # FROM_REQUEST_PORT needs nothing: Envoy keeps the request's port unless told otherwise.
    return out


def direct_response_action(response: DirectResponse) -> rc.DirectResponseAction:
    """A fixed response, its body inline (bytes arrive base64-encoded in the model)."""
    out = rc.DirectResponseAction(status=response.status)
    if response.body is not None:
        if response.body_is_bytes:
            out.body.CopyFrom(base_pb2.DataSource(inline_bytes=base64.b64decode(response.body)))
        else:
            out.body.CopyFrom(base_pb2.DataSource(inline_string=response.body))
    return out


def _no_timeout() -> rc.RouteAction:
    action = rc.RouteAction()
    action.timeout.CopyFrom(protos.duration(0))
    action.max_stream_duration.grpc_timeout_header_max.CopyFrom(protos.duration(0))
    return action


_NO_TIMEOUT = _no_timeout()


def no_timeout() -> rc.RouteAction:
    """A RouteAction with Istio's timeout defaults: none, and honour gRPC's grpc-timeout."""
    action = rc.RouteAction()
    action.CopyFrom(_NO_TIMEOUT)
    return action
