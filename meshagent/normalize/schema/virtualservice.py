"""The VirtualService schema (networking.istio.io v1, v1beta1, v1alpha3 share it)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from meshagent.model.regex import regex_problem
from meshagent.normalize.schema.common import (
    DESTINATION,
    INT32,
    LABELS,
    PERCENT,
    PORT,
    STRING_MATCH,
    UINT32,
    ExportTo,
    HeaderName,
    HeaderNameOrClaim,
    HostName,
    is_cidr,
    jwt_claim_path,
)
from meshagent.normalize.schema.core import (
    Bool,
    Duration,
    Enum,
    F,
    Int,
    Issues,
    ListOf,
    MapOf,
    Obj,
    Str,
    clean_when,
    join,
)

# Envoy's retry_on policies that Istio's validation accepts, besides HTTP status codes.
RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


class Cidr(Str):
    """An IP address or CIDR block."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if isinstance(value, str) and not is_cidr(value):
            issues.error(path, f"{value!r} is not an IP address or CIDR block")


def _weights_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio's weights are relative: negatives and an all-zero split are rejected."""
    route = value.get("route") or []
    weights = [d.get("weight") or 0 for d in route]
    for i, w in enumerate(weights):
        if w < 0:
            issues.error(f"{path}.route[{i}].weight", f"weight {w} must not be negative")
    if len(weights) > 1 and sum(weights) == 0:
        issues.error(join(path, "route"), "total destination weight must be greater than 0")
    elif len(weights) > 1 and sum(weights) != 100 and min(weights) >= 0:
        issues.warn(
            join(path, "route"),
            f"weights sum to {sum(weights)}, not 100; each destination gets weight/{sum(weights)}",
        )


HEADER_OPERATIONS = Obj(
    {
        "set": F(MapOf(Str(), key=HeaderName())),
        "add": F(MapOf(Str(), key=HeaderName())),
        "remove": F(ListOf(HeaderName())),
    }
)
HEADERS = Obj({"request": F(HEADER_OPERATIONS), "response": F(HEADER_OPERATIONS)})

HTTP_ROUTE_DESTINATION = Obj(
    {
        "destination": F(DESTINATION, required=True),
        "weight": F(INT32),
        "headers": F(HEADERS),
    }
)
ROUTE_DESTINATION = Obj({"destination": F(DESTINATION, required=True), "weight": F(INT32)})


HTTP_MATCH = Obj(
    {
        "name": F(Str()),
        "uri": F(STRING_MATCH),
        "scheme": F(STRING_MATCH, todo="scheme match"),
        "method": F(STRING_MATCH),
        "authority": F(STRING_MATCH),
        "headers": F(MapOf(STRING_MATCH, key=HeaderNameOrClaim())),
        "port": F(PORT),
        "sourceLabels": F(LABELS, todo="source label match"),
        "gateways": F(ListOf(Str())),
        "queryParams": F(MapOf(STRING_MATCH)),
        "ignoreUriCase": F(Bool()),
        "withoutHeaders": F(MapOf(STRING_MATCH, key=HeaderNameOrClaim())),
        "sourceNamespace": F(Str(), todo="source namespace match"),
        "statPrefix": F(Str(), todo="per-route stat prefix"),
    },
)


def _redirect_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if all(value.get(k) is None for k in ("uri", "authority", "port", "derivePort", "scheme")):
        issues.error(path, "redirect must set uri, authority, port, derivePort or scheme")
    code = value.get("redirectCode")
    if code and not 300 <= code <= 399:
        issues.error(join(path, "redirectCode"), f"{code} is not a redirect code (3xx)")


HTTP_REDIRECT = Obj(
    {
        "uri": F(Str()),
        "authority": F(Str()),
        "port": F(PORT),
        "derivePort": F(Enum(("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"))),
        "scheme": F(Str()),
        "redirectCode": F(UINT32),
    },
    oneof=[("port", "derivePort")],
    rules=[_redirect_rule],
)


def _bytes_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    data = value.get("bytes")
    if data is None:
        return
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        issues.error(join(path, "bytes"), "bytes must be base64")


HTTP_BODY = Obj(
    {"string": F(Str()), "bytes": F(Str())}, oneof=[("string", "bytes")], rules=[_bytes_rule]
)
HTTP_DIRECT_RESPONSE = Obj({"status": F(Int(200, 599), required=True), "body": F(HTTP_BODY)})


def _regex_rewrite_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    match = value.get("match")
    if not match:
        issues.error(join(path, "match"), "required field is missing")
    elif isinstance(match, str) and (problem := regex_problem(match)):
        issues.error(join(path, "match"), problem)


REGEX_REWRITE = Obj({"match": F(Str()), "rewrite": F(Str())}, rules=[_regex_rewrite_rule])


def _rewrite_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if not any(value.get(k) for k in ("uri", "authority", "uriRegexRewrite")):
        issues.error(path, "rewrite must set uri, authority or uriRegexRewrite")


HTTP_REWRITE = Obj(
    {"uri": F(Str()), "authority": F(Str()), "uriRegexRewrite": F(REGEX_REWRITE)},
    oneof=[("uri", "uriRegexRewrite")],
    rules=[_rewrite_rule],
)


def _retry_on_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    for policy in (value.get("retryOn") or "").split(","):
        policy = policy.strip()
        if not policy or policy in RETRY_ON:
            continue
        if not (policy.isdigit() and 100 <= int(policy) <= 599):
            issues.error(join(path, "retryOn"), f"{policy!r} is not a retry policy or status code")


HTTP_RETRY = Obj(
    {
        "attempts": F(Int(0, 2**31 - 1)),
        "perTryTimeout": F(Duration(min_ms=1)),
        "retryOn": F(Str()),
        "retryRemoteLocalities": F(Bool()),
        "retryIgnorePreviousHosts": F(Bool(), todo="retryIgnorePreviousHosts"),
        "backoff": F(Duration(min_ms=1), todo="retry backoff"),
    },
    rules=[_retry_on_rule],
)


def _delay_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("exponentialDelay") is not None:
        issues.error(join(path, "exponentialDelay"), "exponentialDelay not supported yet")
    elif value.get("fixedDelay") is None:
        # Istio accepts it and its translation drops the delay (only fixed delays exist).
        issues.warn(path, "delay without fixedDelay injects no delay: ignored")


def _abort_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("http2Error") is not None:
        issues.error(join(path, "http2Error"), "HTTP/2 abort fault injection not supported yet")
    elif value.get("httpStatus") is None and value.get("grpcStatus") is None:
        # Istio warns, and its translation drops the abort.
        issues.warn(path, "abort configured, but error type not set: ignored")


FAULT_DELAY = Obj(
    {
        "fixedDelay": F(Duration(min_ms=1)),
        "exponentialDelay": F(Duration(min_ms=1)),
        "percentage": F(PERCENT),
        "percent": F(Int(0, 100), deprecated="use percentage"),
    },
    oneof=[("fixedDelay", "exponentialDelay"), ("percentage", "percent")],
    rules=[_delay_rule],
)
FAULT_ABORT = Obj(
    {
        "httpStatus": F(Int(200, 599)),
        "grpcStatus": F(Str()),
        "http2Error": F(Str()),
        "percentage": F(PERCENT),
    },
    oneof=[("httpStatus", "grpcStatus", "http2Error")],
    rules=[_abort_rule],
)


def _fault_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("delay") is None and value.get("abort") is None:
        issues.error(path, "fault must set delay and/or abort")


HTTP_FAULT = Obj({"delay": F(FAULT_DELAY), "abort": F(FAULT_ABORT)}, rules=[_fault_rule])

MIRROR_POLICY = Obj({"destination": F(DESTINATION, required=True), "percentage": F(PERCENT)})

CORS_POLICY = Obj(
    {
        "allowOrigin": F(ListOf(Str()), deprecated="use allowOrigins"),
        "allowOrigins": F(ListOf(STRING_MATCH)),
        "allowMethods": F(ListOf(Str())),
        "allowHeaders": F(ListOf(Str())),
        "exposeHeaders": F(ListOf(Str())),
        "maxAge": F(Duration(min_ms=1)),
        "allowCredentials": F(Bool()),
        "unmatchedPreflights": F(Enum(("UNSPECIFIED", "FORWARD", "IGNORE"))),
    }
)


def _http_route_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """route, redirect, directResponse and delegate exclude each other; one is needed."""
    if value.get("delegate"):
        # A root route (Istio's validateRootHTTPRoute): only route and redirect conflict.
        for key in ("route", "redirect"):
            if value.get(key):
                issues.error(join(path, key), f"root HTTP route must not specify {key}")
        if value.get("directResponse"):
            issues.warn(
                join(path, "directResponse"), "ignored: the delegate's routes replace this route"
            )
        return
    actions = [k for k in ("route", "redirect", "directResponse", "delegate") if value.get(k)]
    if len(actions) > 1:
        issues.error(join(path, actions[1]), f"{' and '.join(actions)} cannot be set together")
    elif not actions:
        issues.error(
            join(path, "route"), "one of route, redirect, directResponse or delegate is required"
        )
    if value.get("redirect") and value.get("rewrite"):
        issues.error(join(path, "rewrite"), "rewrite and redirect cannot be set together")
    if value.get("mirrors") and value.get("mirror"):
        issues.error(join(path, "mirrors"), "mirror and mirrors cannot be set together")
    _weights_rule(value, path, issues)


HTTP_ROUTE = Obj(
    {
        "name": F(Str()),
        "match": F(ListOf(HTTP_MATCH)),
        "route": F(ListOf(HTTP_ROUTE_DESTINATION)),
        "redirect": F(HTTP_REDIRECT),
        "directResponse": F(HTTP_DIRECT_RESPONSE),
        "delegate": F(Obj({"name": F(Str(non_empty=True), required=True), "namespace": F(Str())})),
        "rewrite": F(HTTP_REWRITE),
        "timeout": F(Duration()),
        "retries": F(HTTP_RETRY),
        "fault": F(HTTP_FAULT),
        "mirror": F(DESTINATION),
        "mirrors": F(ListOf(MIRROR_POLICY)),
        "mirrorPercent": F(Int(0, 100), deprecated="use mirrorPercentage"),
        "mirror_percent": F(Int(0, 100), deprecated="use mirrorPercentage"),
        "mirrorPercentage": F(PERCENT),
        "corsPolicy": F(CORS_POLICY),
        "headers": F(HEADERS),
        "websocketUpgrade": F(Bool(), deprecated="ignored; WebSocket upgrades are always allowed"),
    },
    oneof=[("mirrorPercent", "mirror_percent", "mirrorPercentage")],
    rules=[_http_route_rule],
)

L4_MATCH = Obj(
    {
        "destinationSubnets": F(ListOf(Cidr())),
        "port": F(PORT),
        "sourceSubnet": F(Cidr(), todo="source subnet match"),
        "sourceLabels": F(LABELS, todo="source label match"),
        "gateways": F(ListOf(Str())),
        "sourceNamespace": F(Str(), todo="source namespace match"),
    },
)
TLS_MATCH = Obj(
    {
        "sniHosts": F(ListOf(HostName(), non_empty=True), required=True),
        "destinationSubnets": F(ListOf(Cidr())),
        "port": F(PORT),
        "sourceLabels": F(LABELS, todo="source label match"),
        "gateways": F(ListOf(Str())),
        "sourceNamespace": F(Str(), todo="source namespace match"),
    },
)


def _l4_route_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if not value.get("route"):
        issues.error(join(path, "route"), "route is required")
    _weights_rule(value, path, issues)


TCP_ROUTE = Obj(
    {"match": F(ListOf(L4_MATCH)), "route": F(ListOf(ROUTE_DESTINATION))}, rules=[_l4_route_rule]
)
TLS_ROUTE = Obj(
    {"match": F(ListOf(TLS_MATCH), required=True), "route": F(ListOf(ROUTE_DESTINATION))},
    rules=[_l4_route_rule],
)


def _plain_routes(value: Mapping[str, Any]) -> bool:
    """True for a VirtualService with hosts, no delegating route and no header match key that
    starts with '@': the delegation and claim rules have nothing to say about it."""
    if not value.get("hosts"):
        return False
    for route in value.get("http") or ():
        if "delegate" in route:
            return False
        for match in route.get("match") or ():
            for key in ("headers", "withoutHeaders"):
                for name in match.get(key) or ():
                    if name[:1] == "@":
                        return False
    return True


def _delegate_vs_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """A VirtualService without hosts is a delegate: what Istio forbids in one."""
    if value.get("hosts"):
        return
    for key, what in (("gateways", "gateways"), ("tls", "tls route"), ("tcp", "tcp route")):
        if value.get(key):
            issues.error(join(path, key), f"delegate virtual service must have no {what} specified")
    for i, route in enumerate(value.get("http") or ()):
        if route.get("delegate") is not None:
            issues.error(
                f"{path}.http[{i}].delegate", "delegate HTTP route cannot contain delegate"
            )


_STRING_MATCH_FIELDS = ("uri", "scheme", "method", "authority")
_MAP_MATCH_FIELDS = ("headers", "queryParams", "withoutHeaders")


def _delegating_match_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Routes of a delegate, and root routes (with `delegate`), cannot match by regex."""
    delegate_vs = not value.get("hosts")
    for i, route in enumerate(value.get("http") or ()):
        if not delegate_vs and route.get("delegate") is None:
            continue
        for j, match in enumerate(route.get("match") or ()):
            where = f"{path}.http[{i}].match[{j}]"
            for key in _STRING_MATCH_FIELDS:
                if (match.get(key) or {}).get("regex") is not None:
                    issues.error(
                        f"{where}.{key}", f"{key} match does not support regex match for delegating"
                    )
            for key in _MAP_MATCH_FIELDS:
                for name, string_match in (match.get(key) or {}).items():
                    if (string_match or {}).get("regex") is not None:
                        issues.error(
                            f"{where}.{key}.{name}",
                            f"{key} match {name} does not support regex match for delegating",
                        )


def _claim_routing_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio routes on JWT claims ("@request.auth.claims...") only on gateways."""
    gateways = value.get("gateways") or []
    if gateways and "mesh" not in gateways:
        return
    for i, route in enumerate(value.get("http") or ()):
        for j, match in enumerate(route.get("match") or ()):
            for key in ("headers", "withoutHeaders"):
                for name in match.get(key) or {}:
                    if jwt_claim_path(name) is not None:
                        issues.error(
                            f"{path}.http[{i}].match[{j}].{key}.{name}",
                            f"JWT claim based routing (key: {name}) is only supported for "
                            "gateway, found no gateways",
                        )


@clean_when(_plain_routes)
def _delegation_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Delegates, root routes and JWT claim header keys, as Istio validates them."""
    _delegate_vs_rule(value, path, issues)
    _delegating_match_rule(value, path, issues)
    _claim_routing_rule(value, path, issues)


def _spec_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    hosts = value.get("hosts") or []
    gateways = value.get("gateways") or []
    mesh = not gateways or "mesh" in gateways
    for i, host in enumerate(hosts):
        if host == "*" and mesh:
            issues.error(f"{path}.hosts[{i}]", "host '*' is not allowed for the mesh gateway")
    if value.get("tls") and mesh:
        # Gateways route them by SNI (xds/translate/gateway_l4.py); sidecars do not yet.
        issues.warn(join(path, "tls"), "not implemented yet on sidecars, ignored there: TLS routes")
    if not (value.get("http") or value.get("tcp") or value.get("tls")):
        issues.error(path, "at least one of http, tcp or tls routes is required")


SPEC = Obj(
    {
        "hosts": F(ListOf(HostName(ip_ok=True))),
        "gateways": F(ListOf(Str(non_empty=True))),
        "http": F(ListOf(HTTP_ROUTE)),
        "tls": F(ListOf(TLS_ROUTE)),
        "tcp": F(ListOf(TCP_ROUTE)),
        "exportTo": F(ExportTo()),
    },
    rules=[_spec_rule, _delegation_rule],
)

__all__ = ["SPEC"]
