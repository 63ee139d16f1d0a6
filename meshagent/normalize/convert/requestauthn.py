"""RequestAuthentication (validated) to RequestAuthn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.security import JwtRule, RequestAuthn
from meshagent.normalize.convert.context import Context, items, ms, sub


def _strs(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(v) for v in items(obj, key))


def _jwt_rule(spec: Mapping[str, Any]) -> JwtRule:
    jwks = spec.get("jwks") or None
    return JwtRule(
        issuer=str(spec["issuer"]),
        audiences=_strs(spec, "audiences"),
        jwks=jwks,
        # Istio: with both set, jwksUri is ignored (the schema warns).
        jwks_uri=None if jwks else (spec.get("jwksUri") or None),
        from_headers=tuple(
            (str(h["name"]), str(h.get("prefix") or "")) for h in items(spec, "fromHeaders")
        ),
        from_params=_strs(spec, "fromParams"),
        from_cookies=_strs(spec, "fromCookies"),
        forward_original_token=bool(spec.get("forwardOriginalToken")),
        output_payload_to_header=str(spec.get("outputPayloadToHeader") or ""),
        output_claim_to_headers=tuple(
            (str(c["header"]), str(c["claim"])) for c in items(spec, "outputClaimToHeaders")
        ),
        timeout_ms=ms(spec.get("timeout")),
        required=spec.get("presence") == "REQUIRED",
        space_delimited_claims=_strs(spec, "spaceDelimitedClaims"),
    )


def convert_request_authentication(
    name: str, spec: Mapping[str, Any], ctx: Context
) -> RequestAuthn:
    """A RequestAuthentication spec as a RequestAuthn. One that targets gateways or waypoints
    (targetRef/targetRefs) gets no rules: those have no workload here, and an empty policy
    (rather than none) replaces whatever an earlier version of it said."""
    targeted = spec.get("targetRef") or spec.get("targetRefs")
    labels = labels_of(sub(sub(spec, "selector"), "matchLabels"))
    return RequestAuthn(
        name=name,
        namespace=ctx.namespace,
        selector=labels or None,  # an empty selector selects every workload, like none
        jwt_rules=() if targeted else tuple(_jwt_rule(r) for r in items(spec, "jwtRules") if r),
        provenance=ctx.provenance,
    )
