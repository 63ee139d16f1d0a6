"""A small evaluator of Envoy RBAC filters in their JSON form (protobuf JSON names), for tests.

It decides a request the way Envoy's RBAC filters do, for the matchers meshagent and Istio
generate. The only dynamic metadata is a validated JWT's payload (`Request.jwt`), which Envoy's
jwt_authn filter stores under "payload"; any other filter's metadata is absent.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

JWT_FILTER = "envoy.filters.http.jwt_authn"


@dataclass(frozen=True)
class Request:
    """What RBAC can see of a request. principal: the peer's URI SAN (None: no mTLS)."""

    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, with :authority
    principal: str | None = None
    direct_remote_ip: str = "127.0.0.1"
    remote_ip: str = "127.0.0.1"
    destination_ip: str = "10.0.0.1"
    destination_port: int = 80
    sni: str = ""
    jwt: dict[str, Any] | None = None  # the payload of a validated token; None: no token

    @property
    def path(self) -> str:
        return self.headers.get(":path", "/").split("?", 1)[0]


def string_matches(matcher: dict[str, Any], value: str | None) -> bool:
    """Envoy's StringMatcher (exact, prefix, suffix, contains, safeRegex; ignoreCase)."""
    if value is None:
        return False
    fold = matcher.get("ignoreCase", False)
    probe = value.lower() if fold else value
    for kind in ("exact", "prefix", "suffix", "contains"):
        if kind in matcher:
            want = matcher[kind].lower() if fold else matcher[kind]
            return {
                "exact": probe == want,
                "prefix": probe.startswith(want),
                "suffix": probe.endswith(want),
                "contains": want in probe,
            }[kind]
    if "safeRegex" in matcher:
        return re.fullmatch(matcher["safeRegex"]["regex"], value) is not None
    raise ValueError(f"unknown string matcher {matcher}")


def _header(matcher: dict[str, Any], request: Request) -> bool:
    value = request.headers.get(matcher["name"].lower())
    if "presentMatch" in matcher:
        result = (value is not None) == matcher["presentMatch"]
    elif "stringMatch" in matcher:
        result = string_matches(matcher["stringMatch"], value)
    elif "safeRegexMatch" in matcher:
        result = value is not None and string_matches(
            {"safeRegex": matcher["safeRegexMatch"]}, value
        )
    elif "exactMatch" in matcher:
        result = value == matcher["exactMatch"]
    else:
        raise ValueError(f"unknown header matcher {matcher}")
    return result != matcher.get("invertMatch", False)


def _value_matches(matcher: dict[str, Any], value: Any) -> bool:
    """Envoy's ValueMatcher, for the kinds RBAC metadata matchers use."""
    if "stringMatch" in matcher:
        return isinstance(value, str) and string_matches(matcher["stringMatch"], value)
    if "listMatch" in matcher:
        one = matcher["listMatch"]["oneOf"]
        return isinstance(value, list) and any(_value_matches(one, v) for v in value)
    if "orMatch" in matcher:
        return any(_value_matches(m, value) for m in matcher["orMatch"]["valueMatchers"])
    if "presentMatch" in matcher:
        return (value is not None) == bool(matcher["presentMatch"])
    raise ValueError(f"unknown value matcher {matcher}")


def _metadata(matcher: dict[str, Any], request: Request) -> bool:
    keys = [segment["key"] for segment in matcher["path"]]
    if matcher["filter"] != JWT_FILTER or keys[0] != "payload" or request.jwt is None:
        value: Any = None
    else:
        value = request.jwt
        for key in keys[1:]:
            value = value.get(key) if isinstance(value, dict) else None
    return _value_matches(matcher["value"], value) != bool(matcher.get("invert", False))


def _cidr(spec: dict[str, Any], address: str) -> bool:
    length = spec.get("prefixLen", 32)
    network = ipaddress.ip_network(f"{spec['addressPrefix']}/{length}", strict=False)
    return ipaddress.ip_address(address) in network


def _template(template: str, path: str) -> bool:
    parts = [
        ".*" if p == "**" else "[^/]+" if p == "*" else re.escape(p)
        for p in re.split(r"(\*\*|\*)", template)
    ]
    return re.fullmatch("".join(parts), path) is not None


def permission(rule: dict[str, Any], request: Request) -> bool:
    """Whether one Permission matches."""
    ((kind, value),) = rule.items()
    if kind == "any":
        return bool(value)
    if kind == "andRules":
        return all(permission(r, request) for r in value["rules"])
    if kind == "orRules":
        return any(permission(r, request) for r in value["rules"])
    if kind == "notRule":
        return not permission(value, request)
    if kind == "header":
        return _header(value, request)
    if kind == "urlPath":
        return string_matches(value["path"], request.path)
    if kind == "uriTemplate":
        return _template(value["typedConfig"]["pathTemplate"], request.path)
    if kind == "destinationPort":
        return request.destination_port == int(value)
    if kind == "destinationIp":
        return _cidr(value, request.destination_ip)
    if kind == "requestedServerName":
        return string_matches(value, request.sni)
    if kind == "metadata":  # Istio's (deprecated) form
        return _metadata(value, request)
    if kind == "sourcedMetadata":
        assert value.get("metadataSource", "DYNAMIC") == "DYNAMIC", value
        return _metadata(value["metadataMatcher"], request)
    raise ValueError(f"unknown permission {kind}")


def principal(rule: dict[str, Any], request: Request) -> bool:
    """Whether one Principal matches."""
    ((kind, value),) = rule.items()
    if kind == "any":
        return bool(value)
    if kind == "andIds":
        return all(principal(r, request) for r in value["ids"])
    if kind == "orIds":
        return any(principal(r, request) for r in value["ids"])
    if kind == "notId":
        return not principal(value, request)
    if kind == "authenticated":
        if request.principal is None:
            return False
        name = value.get("principalName")
        return name is None or string_matches(name, request.principal)
    if kind == "directRemoteIp":
        return _cidr(value, request.direct_remote_ip)
    if kind == "remoteIp":
        return _cidr(value, request.remote_ip)
    if kind == "header":
        return _header(value, request)
    if kind == "metadata":  # Istio's (deprecated) form
        return _metadata(value, request)
    if kind == "sourcedMetadata":
        assert value.get("metadataSource", "DYNAMIC") == "DYNAMIC", value
        return _metadata(value["metadataMatcher"], request)
    raise ValueError(f"unknown principal {kind}")


def policy_matches(policy: dict[str, Any], request: Request) -> bool:
    """A policy matches when some permission and some principal match."""
    return any(permission(p, request) for p in policy.get("permissions", [])) and any(
        principal(p, request) for p in policy.get("principals", [])
    )


def allowed(rbac_filters: list[dict[str, Any]], request: Request) -> bool:
    """The decision of RBAC filter configs (typed_config of each filter) applied in turn.

    A filter without `rules` enforces nothing (its shadow rules are only logged and counted,
    as Envoy does for dry-run policies)."""
    for config in rbac_filters:
        if "rules" not in config:
            continue
        rules = config["rules"]
        action = rules.get("action", "ALLOW")
        hit = any(policy_matches(p, request) for p in rules.get("policies", {}).values())
        if (action == "DENY" and hit) or (action == "ALLOW" and not hit):
            return False
    return True


def shadow_hits(rbac_filters: list[dict[str, Any]], request: Request) -> list[str]:
    """The names of the shadow-rule policies that match request (what Envoy logs and counts
    for dry-run policies: shadow_effective_policy_id)."""
    hits = []
    for config in rbac_filters:
        for name, policy in sorted(config.get("shadowRules", {}).get("policies", {}).items()):
            if policy_matches(policy, request):
                hits.append(name)
    return hits
