"""Schema of RequestAuthentication (security.istio.io v1 and v1beta1) with the checks of
Istio's validation webhook for JWT rules.

Beyond Istio's own checks, header names must be HTTP tokens (Envoy rejects other names, and a
rejected listener would stop the workload's whole inbound update), and `jwks` must be a JSON
Web Key Set (an object with a `keys` list), which is what Envoy's inline JWKS accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshagent.normalize.schema.common import ISTIO_HEADER_NAME, LABELS
from meshagent.normalize.schema.core import (
    Bool,
    Duration,
    Enum,
    F,
    Issues,
    ListOf,
    Obj,
    Str,
    join,
)
from meshagent.normalize.schema.targetref import (
    TARGET_REF,
    TARGET_REFS,
    one_of_selector_or_targets,
    workload_selector_rule,
)

# RFC 9110 token characters: what an HTTP header name may consist of.
HEADER_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEADER = Str(pattern=HEADER_NAME, non_empty=True, what="HTTP header name")
_NON_EMPTY = Str(non_empty=True)
# outputClaimToHeaders[].header: Istio's ValidateHTTPHeaderName (letters, digits, - and _).
_CLAIM_HEADER = Str(pattern=ISTIO_HEADER_NAME, non_empty=True, what="header name")
# jwtRules[].presence (istio/api JWTRule.presence): REQUIRED rejects a request without this
# rule's token (401), OPTIONAL (the default) lets it through to authorization.
PRESENCE = ("OPTIONAL", "REQUIRED")


def jwks_uri_problem(uri: str) -> str:
    """Why uri is not a JWKS URL Envoy can fetch (http or https, a host, a valid port), or ""."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"{uri!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{uri!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{uri!r}: the URL has no host"
    if port == 0:
        return f"{uri!r}: port 0 is not a valid port"
    return ""


def jwks_problem(text: str) -> str:
    """Why text is not a JSON Web Key Set (an object whose `keys` lists JWK objects), or ""."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"jwks parse error: not JSON ({exc})"
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        return 'jwks parse error: expected a JSON object with a "keys" list'
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            return f'jwks parse error: keys[{i}] is not a JSON Web Key (no "kty")'
    return ""


@dataclass(frozen=True, slots=True)
class _Checked(Str):
    """A non-empty string in which `problem` finds nothing wrong (it returns "" then)."""

    problem: Callable[[str], str] | None = None

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str(non_empty=True).check(value, path, issues)
        if isinstance(value, str) and value and self.problem is not None:
            problem = self.problem(value)
            if problem:
                issues.error(path, problem)


def _key_source(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("jwks") and value.get("jwksUri"):
        # Istio documents that jwksUri is ignored when both are set; it is not an error there.
        issues.warn(join(path, "jwksUri"), "jwks is also set: jwksUri is ignored")
    elif not value.get("jwks") and not value.get("jwksUri"):
        issues.warn(
            path,
            "neither jwks nor jwksUri is set and OpenID discovery of the issuer's keys is not "
            "supported: every token of this issuer will be rejected (401)",
        )


JWT_RULE = Obj(
    {
        "issuer": F(_NON_EMPTY, required=True),
        "audiences": F(ListOf(_NON_EMPTY)),
        "jwksUri": F(_Checked(problem=jwks_uri_problem)),
        "jwks": F(_Checked(problem=jwks_problem)),
        "fromHeaders": F(ListOf(Obj({"name": F(_HEADER, required=True), "prefix": F(Str())}))),
        "fromParams": F(ListOf(_NON_EMPTY)),
        "fromCookies": F(ListOf(_NON_EMPTY)),
        "outputPayloadToHeader": F(Str(pattern=HEADER_NAME, what="HTTP header name")),
        "forwardOriginalToken": F(Bool()),
        "outputClaimToHeaders": F(
            ListOf(
                Obj(
                    {
                        "header": F(_CLAIM_HEADER, required=True),
                        "claim": F(_NON_EMPTY, required=True),
                    }
                )
            )
        ),
        "timeout": F(Duration(min_ms=1)),
        "spaceDelimitedClaims": F(ListOf(_NON_EMPTY)),
        "presence": F(Enum(PRESENCE)),
    },
    rules=[_key_source],
)


# A policy bound to a gateway or waypoint has no workload here: it is ignored as a whole.
_TARGETED = "targetRef/targetRefs (gateways, waypoints); this policy applies to no workload here"

REQUEST_AUTHENTICATION = Obj(
    {
        "selector": F(Obj({"matchLabels": F(LABELS)})),
        "targetRef": F(TARGET_REF, todo=_TARGETED),
        "targetRefs": F(TARGET_REFS, todo=_TARGETED),
        "jwtRules": F(ListOf(JWT_RULE)),
    },
    rules=[one_of_selector_or_targets(), workload_selector_rule("selector", "matchLabels")],
)
