"""Schemas of PeerAuthentication and AuthorizationPolicy (security.istio.io v1 and v1beta1),
with the cross-field rules of Istio's validation webhook."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshagent.normalize.schema.common import LABELS, is_cidr
from meshagent.normalize.schema.core import (
    Enum,
    F,
    Issues,
    ListOf,
    Obj,
    Str,
    Type,
    join,
    wrong_type,
)
from meshagent.normalize.schema.requestauthn import REQUEST_AUTHENTICATION
from meshagent.normalize.schema.targetref import TARGET_REF

MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
SELECTOR = Obj({"matchLabels": F(LABELS)})
MTLS = Obj({"mode": F(Enum(MTLS_MODES))})

# Keys of `when` conditions Istio documents; [..] keys need a non-empty name inside.
CONDITION_KEYS = (
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
)
_BRACKETED = re.compile(
    r"(request\.headers|request\.experimental\.inline\.headers|request\.auth\.claims"
    r"|experimental\.envoy\.filters\.[\w.]+)"
    r"(\[[^\[\]]+\])+"
)
_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")


def port_problem(key: Any) -> str:
    """Why a portLevelMtls key (YAML int or digit string) is not a port, or ""."""
    text = str(key)
    if not re.fullmatch(r"\d+", text):
        return f"type conversion error from {text!r}: not a port number"
    if not 1 <= int(text) <= 65535:
        return f"port must be between 1-65535, got {text}"
    return ""


class PortMtlsMap(Type):
    """portLevelMtls: port number (or its string) to an MTLS object; at least one entry."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, Mapping):
            wrong_type(issues, path, "mapping", value)
            return
        if not value:
            issues.error(path, "portLevelMtls must have at least 1 entry")
        for key, item in value.items():
            sub = join(path, str(key))
            problem = port_problem(key)
            if problem:
                issues.error(sub, problem)
            elif item is not None:
                MTLS.check(item, sub, issues)


def _peer_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    selector = value.get("selector") or {}
    if value.get("portLevelMtls") and not selector.get("matchLabels"):
        issues.error(join(path, "portLevelMtls"), "portLevelMtls requires selector")


PEER_AUTHENTICATION = Obj(
    {"selector": F(SELECTOR), "mtls": F(MTLS), "portLevelMtls": F(PortMtlsMap())},
    rules=[_peer_rule],
)


class PortString(Str):
    """A port given as a string ("8080"), as AuthorizationPolicy's ports are."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if isinstance(value, str) and port_problem(value):
            issues.error(path, f"{value!r} is not a valid port")


class Cidr(Str):
    """An IP address or CIDR block."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if isinstance(value, str) and not is_cidr(value):
            issues.error(path, f"{value!r} is not an IP address or CIDR block")


_NON_EMPTY = Str(non_empty=True)


def _strings(item: Type = _NON_EMPTY) -> F:
    return F(ListOf(item))


def _at_least_one(what: str) -> Any:
    def rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
        if not any(v for v in value.values()):
            issues.error(path, f"{what} must not be empty (set at least one field)")

    return rule


def _principals_xor_accounts(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    both = value.get("principals") and value.get("serviceAccounts")
    not_both = value.get("notPrincipals") and value.get("notServiceAccounts")
    if both or not_both:
        field = "serviceAccounts" if both else "notServiceAccounts"
        issues.error(join(path, field), "cannot be set together with principals")


def service_account_problem(values: Any) -> str:
    """Why serviceAccounts values break Istio's rules (CheckServiceAccount), or ""."""
    if not isinstance(values, list):
        return ""
    if len(values) > 16:
        return "may not have more than 16 values"
    for value in values:
        text = str(value)
        if "*" in text:
            return f"wildcard not allowed, found {text!r}"
        ns, slash, sa = text.partition("/")
        if text.count("/") > 1 or (slash and not (ns and sa)) or not text:
            return f"expected format 'serviceAccount' or 'namespace/serviceAccount', found {text!r}"
        if len(text) > 320:
            return f"value cannot exceed 320 characters, found {text[:40]!r}..."
    return ""


def _service_accounts(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    for field in ("serviceAccounts", "notServiceAccounts"):
        problem = service_account_problem(value.get(field))
        if problem:
            issues.error(join(path, field), problem)


SOURCE = Obj(
    {
        "principals": _strings(),
        "notPrincipals": _strings(),
        "requestPrincipals": _strings(),
        "notRequestPrincipals": _strings(),
        "namespaces": _strings(),
        "notNamespaces": _strings(),
        "serviceAccounts": _strings(),
        "notServiceAccounts": _strings(),
        "ipBlocks": _strings(Cidr()),
        "notIpBlocks": _strings(Cidr()),
        "remoteIpBlocks": _strings(Cidr()),
        "notRemoteIpBlocks": _strings(Cidr()),
        "trustDomains": _strings(),
        "notTrustDomains": _strings(),
    },
    rules=[_at_least_one("source"), _principals_xor_accounts, _service_accounts],
)

OPERATION = Obj(
    {
        "hosts": _strings(),
        "notHosts": _strings(),
        "ports": _strings(PortString()),
        "notPorts": _strings(PortString()),
        "methods": _strings(),
        "notMethods": _strings(),
        "paths": _strings(),
        "notPaths": _strings(),
    },
    rules=[_at_least_one("operation")],
)


def key_problem(key: str) -> str:
    """Why key is not a `when` key Istio supports, or ""."""
    if key in CONDITION_KEYS or _BRACKETED.fullmatch(key):
        return ""
    return f"unknown attribute {key!r}"


def _condition_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    key = str(value["key"])
    problem = key_problem(key)
    if problem:
        issues.error(join(path, "key"), problem)
        return
    if not value.get("values") and not value.get("notValues"):
        issues.error(path, "at least one of values or notValues must be set")
    for field in ("values", "notValues"):
        for i, item in enumerate(value.get(field) or ()):
            sub = f"{join(path, field)}[{i}]"
            if key in _IP_KEYS and not is_cidr(item):
                issues.error(sub, f"{item!r} is not an IP address or CIDR block")
            elif key == "destination.port" and port_problem(item):
                issues.error(sub, f"{item!r} is not a valid port")
    if key == "source.serviceAccount":
        for field in ("values", "notValues"):
            problem = service_account_problem(value.get(field))
            if problem:
                issues.error(join(path, field), problem)


CONDITION = Obj(
    {"key": F(Str(non_empty=True), required=True), "values": _strings(), "notValues": _strings()},
    rules=[_condition_rule],
)

RULE = Obj(
    {
        "from": F(ListOf(Obj({"source": F(SOURCE, required=True)}), non_empty=True)),
        "to": F(ListOf(Obj({"operation": F(OPERATION, required=True)}), non_empty=True)),
        "when": F(ListOf(CONDITION, non_empty=True)),
    }
)

_TARGET_REF = TARGET_REF  # validated as Istio does (schema/targetref.py)


def _authz_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    action = value.get("action") or "ALLOW"
    if action == "CUSTOM":
        if not (value.get("provider") or {}).get("name"):
            issues.error(join(path, "provider"), "CUSTOM action requires a provider name")
    elif value.get("provider"):
        issues.error(join(path, "provider"), "provider can only be used with the CUSTOM action")
    if value.get("selector") and (value.get("targetRef") or value.get("targetRefs")):
        issues.error(join(path, "targetRef"), "targetRef cannot be set together with selector")


AUTHORIZATION_POLICY = Obj(
    {
        "selector": F(SELECTOR),
        "targetRef": F(_TARGET_REF, todo="targetRef (gateways, waypoints)"),
        "targetRefs": F(ListOf(_TARGET_REF), todo="targetRefs (gateways, waypoints)"),
        "rules": F(ListOf(RULE)),
        "action": F(Enum(ACTIONS)),
        "provider": F(Obj({"name": F(Str())})),
    },
    rules=[_authz_rule],
)

SPECS: Mapping[str, Obj] = {
    "PeerAuthentication": PEER_AUTHENTICATION,
    "AuthorizationPolicy": AUTHORIZATION_POLICY,
    "RequestAuthentication": REQUEST_AUTHENTICATION,
}
