"""Request principals and request.auth.* conditions: RBAC checks of the validated JWT's payload,
with Istio's reading of each value (see rbac._request_principal)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from meshagent.model.security import AuthzPolicy, AuthzRule, Condition, Source
from meshagent.xds.translate.rbac import rbac_by_action
from tests.unit.rbac_eval import Request, allowed


def _decide(rule: AuthzRule, payload: dict[str, Any] | None) -> bool:
    policy = AuthzPolicy("p", "foo", rules=(rule,))
    filters = [
        json_format.MessageToDict(f.http_config()) for f in rbac_by_action([policy], http=True)
    ]
    return allowed(filters, Request(jwt=payload))


def _token(iss: str, sub: str, **claims: Any) -> dict[str, Any]:
    return {"iss": iss, "sub": sub, **claims}


PRINCIPALS = [
    # (requestPrincipals value, iss, sub, allowed)
    ("*", "i", "s", True),
    ("*", "i", "", False),  # "*" needs both claims
    ("iss/sub", "iss", "sub", True),
    ("iss/sub", "iss", "other", False),
    ("https://a.example/b/sub", "https://a.example/b", "sub", True),  # the last "/" splits
    ("https://a.example/b/sub", "https://a.example", "b/sub", False),
    ("https://example.com/*", "https://example.com", "anyone", True),
    ("https://example.com/*", "https://example.com/x", "anyone", False),
    ("https://example.com/*", "https://example.com", "", False),
    ("https://example.com/u*", "https://example.com", "user", True),
    ("https://example.com/u*", "https://example.com", "admin", False),
    ("pre*", "prefix", "s", True),
    ("pre*", "prefix", "", False),
    ("pre*", "other", "s", False),
    ("*suf", "i", "endsuf", True),
    ("*suf", "endsuf", "s", False),
    ("*a/b", "xa", "b", True),
    ("*a/b", "xa", "bb", False),
    ("*/b", "anything", "b", True),
    ("*/b", "", "b", False),
    ("plain", "plain", "", True),  # no "/": the issuer, with an empty subject
    ("plain", "plain", "s", False),
]


@pytest.mark.parametrize(("value", "iss", "sub", "expected"), PRINCIPALS)
def test_request_principal_values_split_like_istio(
    value: str, iss: str, sub: str, expected: bool
) -> None:
    # given an ALLOW naming one request principal, when a token with iss/sub arrives,
    # then it is allowed exactly when Istio's split of the value matches both claims
    rule = AuthzRule(sources=(Source(request_principals=(value,)),))
    assert _decide(rule, _token(iss, sub)) is expected
    assert _decide(rule, None) is False  # no token: never a request principal


def test_not_request_principals_star_means_no_token() -> None:
    rule = AuthzRule(sources=(Source(not_request_principals=("*",)),))
    assert _decide(rule, None) is True
    assert _decide(rule, _token("i", "s")) is False


@pytest.mark.parametrize(
    ("key", "claims", "expected"),
    [
        ("request.auth.audiences", {"aud": "api"}, True),
        ("request.auth.audiences", {"aud": ["web", "api"]}, True),  # aud may be a list
        ("request.auth.audiences", {"aud": ["web"]}, False),
        ("request.auth.presenter", {"azp": "api"}, True),
        ("request.auth.presenter", {}, False),
        ("request.auth.claims[group]", {"group": ["dev", "api"]}, True),
        ("request.auth.claims[group]", {"group": "apix"}, False),
        ("request.auth.claims[org][team]", {"org": {"team": "api"}}, True),
        ("request.auth.claims[org][team]", {"org": "api"}, False),
        ("request.auth.principal", {}, False),  # value "api": iss "api" with an empty sub
    ],
)
def test_request_auth_conditions(key: str, claims: dict[str, Any], expected: bool) -> None:
    rule = AuthzRule(conditions=(Condition(key, values=("api",)),))
    assert _decide(rule, _token("i", "s", **claims)) is expected
    assert _decide(rule, None) is False
    negated = AuthzRule(conditions=(Condition(key, not_values=("api",)),))
    assert _decide(negated, _token("i", "s", **claims)) is not expected
