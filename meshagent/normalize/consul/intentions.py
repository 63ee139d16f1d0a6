"""service-intentions to an AuthorizationPolicy (model.security.AuthzPolicy).

Consul checks a request against the entry's sources, most specific first, and the first match
decides; Istio checks DENY policies, then ALLOW ones. One entry becomes one policy:

- a `*` source that allows → a DENY policy of the exact sources that deny (and of the deny
  permissions of L7 sources): everything else is allowed, as in Consul;
- otherwise, any allow (an L4 allow source, or an L7 source with Permissions) → an ALLOW policy
  of those sources, the L7 ones with one rule per allowing permission. Sources that deny are
  left out, so they are denied, as is everything not listed: this follows Consul's recommended
  default-deny ACL policy;
- only denies → a DENY policy of those sources (`*` denies everyone).

Who is who: a source service `web` in namespace `ns` is the principal `*/ns/<ns>/sa/web` (the
mesh's workload identity for a service account named after the service). The destination
service `db` is selected by the workload label `app: db`; destination `*` selects every
workload of the namespace. Permission HTTP matches: PathExact, PathPrefix, Methods and
Header (Exact or Present); a deny permission before an allow one subtracts its paths. Peers,
sameness groups and regex matches have no counterpart yet (warnings); a permission that
needs a JWT is treated as a deny, with a warning, rather than allowed without the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.security import (
    AuthzAction,
    AuthzPolicy,
    AuthzRule,
    Condition,
    Operation,
    Source,
)
from meshagent.model.source import Provenance
from meshagent.normalize.consul.flags import flag
from meshagent.normalize.consul.options import ConsulMapping
from meshagent.normalize.schema.core import Issues


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _source(src: Mapping[str, Any], path: str, issues: Issues) -> Source:
    name = str(src.get("Name") or "")
    for key in ("Peer", "SamenessGroup"):
        if src.get(key):
            issues.warn(f"{path}.{key}", f"{key} is not supported yet; treated as a local source")
    if name == "*":
        return Source()
    namespace = str(src.get("Namespace") or "default")
    return Source(principals=(f"*/ns/{namespace}/sa/{name}",))


def _operation(http: Mapping[str, Any], denied: list[str], path: str, issues: Issues) -> Operation:
    paths = []
    if http.get("PathExact"):
        paths.append(str(http["PathExact"]))
    if http.get("PathPrefix"):
        paths.append(str(http["PathPrefix"]) + "*")
    if http.get("PathRegex"):
        issues.warn(f"{path}.PathRegex", "PathRegex is not supported yet; ignored")
    methods = tuple(str(m).upper() for m in _list(http.get("Methods")))
    return Operation(paths=tuple(paths), methods=methods, not_paths=tuple(denied))


def _conditions(http: Mapping[str, Any], path: str, issues: Issues) -> tuple[Condition, ...]:
    out = []
    for i, header in enumerate(_list(http.get("Header"))):
        header = _map(header)
        key = f"request.headers[{header.get('Name')}]"
        where = f"{path}.Header[{i}]"
        inverted = flag(header.get("Invert"), f"{where}.Invert", issues)
        if header.get("Exact") is not None and not inverted:
            out.append(Condition(key, values=(str(header["Exact"]),)))
        elif flag(header.get("Present"), f"{where}.Present", issues) and not inverted:
            out.append(Condition(key, values=("*",)))
        else:
            issues.warn(
                f"{path}.Header[{i}]", "only Exact and Present header matches are supported"
            )
    return tuple(out)


def _l7_rules(
    src: Mapping[str, Any], source: Source, path: str, issues: Issues, want: str
) -> list[AuthzRule]:
    """Rules for the permissions of one source whose Action is want ("allow" or "deny")."""
    rules: list[AuthzRule] = []
    denied: list[str] = []
    for i, perm in enumerate(_list(src.get("Permissions"))):
        perm, where = _map(perm), f"{path}.Permissions[{i}]"
        http = _map(perm.get("HTTP"))
        action = str(perm.get("Action") or "").lower()
        if perm.get("JWT") or action not in ("allow", "deny"):
            # Safer to refuse than to allow without the check: its paths count as denied.
            what = "JWT requirements are" if perm.get("JWT") else "a permission without Action is"
            issues.warn(where, f"{what} not supported yet; its paths are denied")
            action = "deny"
        if action == want:
            op = _operation(http, denied if want == "allow" else [], where, issues)
            rules.append(AuthzRule((source,), (op,), _conditions(http, where, issues)))
        elif action == "deny" and set(http) <= {"PathExact", "PathPrefix"}:
            denied += _operation(http, [], where, issues).paths
        elif action == "deny":
            issues.warn(where, "a deny permission with more than paths is not subtracted")
    return rules


def convert_intentions(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> AuthzPolicy | None:
    """A service-intentions entry as one AuthzPolicy (see the module docstring)."""
    name = str(entry.get("Name") or "")
    if entry.get("JWT"):
        issues.warn("JWT", "JWT requirements are not supported yet; ignored")
    sources = [(_map(s), f"Sources[{i}]") for i, s in enumerate(_list(entry.get("Sources")))]
    if not sources:
        issues.warn("Sources", "no sources: nothing to enforce")
        return None
    l4 = {(str(s.get("Name") or ""), str(s.get("Action") or "").lower()) for s, _ in sources}
    wildcard_allow = ("*", "allow") in l4
    any_allow = any(a == "allow" for _, a in l4) or any(s.get("Permissions") for s, _ in sources)
    if wildcard_allow or not any_allow:
        action, rules = AuthzAction.DENY, _deny_rules(sources, issues)
    else:
        action, rules = AuthzAction.ALLOW, _allow_rules(sources, issues)
    return AuthzPolicy(
        name=f"consul-intentions-{'all' if name == '*' else name}",
        namespace=str(entry.get("Namespace") or "default"),
        action=action,
        selector=None if name == "*" else labels_of({"app": name}),
        rules=tuple(rules),
        provenance=prov,
    )


def _deny_rules(sources: list[tuple[Mapping[str, Any], str]], issues: Issues) -> list[AuthzRule]:
    rules = []
    for src, path in sources:
        source = _source(src, path, issues)
        if src.get("Permissions"):
            rules += _l7_rules(src, source, path, issues, "deny")
        elif str(src.get("Action") or "").lower() == "deny":
            rules.append(AuthzRule(sources=() if src.get("Name") == "*" else (source,)))
    return rules


def _allow_rules(sources: list[tuple[Mapping[str, Any], str]], issues: Issues) -> list[AuthzRule]:
    rules = []
    for src, path in sources:
        source = _source(src, path, issues)
        if src.get("Permissions"):
            rules += _l7_rules(src, source, path, issues, "allow")
        elif str(src.get("Action") or "").lower() == "allow":
            rules.append(AuthzRule(sources=(source,)))
    return rules
