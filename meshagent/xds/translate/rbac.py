"""AuthorizationPolicy to Envoy RBAC, with Istio's semantics.

Per workload: an AUDIT filter (action LOG), a DENY filter, then an ALLOW filter, each holding
one Envoy policy per rule of every policy of that action. DENY is checked before ALLOW; with no
ALLOW policy there is no ALLOW filter (everything is allowed); ALLOW policies whose rules all
fail to match deny. Principals come from the mTLS peer certificate: Istio's `principals`
omit the `spiffe://` prefix, and `*` may open or close a value (prefix or suffix match).
Request principals and request.auth.* conditions check the validated JWT's claims, which the
jwt_authn filter (from RequestAuthentication) leaves in its dynamic metadata under "payload".

TCP ports get network RBAC. There, HTTP-only fields (hosts, methods, paths, request
principals, request.* conditions) cannot be checked: like Istio, an ALLOW rule that uses one
is dropped (it never matches) and a DENY or AUDIT rule is kept without those fields, field by
field (its ports, principals, namespaces... still apply), so it matches more.

Principals follow the proxy's trust-domain bundle (trust.py); `trustDomains` match the trust
domain of the peer's SPIFFE URI. Policies annotated `istio.io/dry-run: "true"` go to the
filter's shadow rules (stat prefix istio_dry_run_allow_/istio_dry_run_deny_): Envoy evaluates,
logs and counts them, and never enforces them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.rbac.v3.rbac_pb2 import Permission, Principal
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, string_pb2, value_pb2

from meshagent.model.security import AuthzAction, AuthzPolicy, AuthzRule, Condition, Operation
from meshagent.model.security import Source as AuthzSource
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.trust import LOCAL_POINTER, expand_principals, expand_trust_domains

JWT_FILTER = "envoy.filters.http.jwt_authn"
SPIFFE = "spiffe://"
DEFAULT_BUNDLE = (LOCAL_POINTER,)
DRY_RUN_STAT_PREFIXES = {
    AuthzAction.ALLOW: "istio_dry_run_allow_",
    AuthzAction.DENY: "istio_dry_run_deny_",
}
_ANY_REGEX = ".+"
_ACTIONS = {
    AuthzAction.AUDIT: rbac_pb2.RBAC.LOG,
    AuthzAction.DENY: rbac_pb2.RBAC.DENY,
    AuthzAction.ALLOW: rbac_pb2.RBAC.ALLOW,
}


def string_match(
    value: str, *, prefix: str = "", ignore_case: bool = False
) -> string_pb2.StringMatcher:
    """Istio's value matching: `*` alone is "present", `x*` a prefix, `*x` a suffix."""
    if value == "*":
        return string_pb2.StringMatcher(safe_regex={"regex": _ANY_REGEX})
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    if value.startswith("*"):
        if prefix:  # a suffix under a fixed prefix needs a regex
            regex = re.escape(prefix) + ".*" + re.escape(value[1:])
            return string_pb2.StringMatcher(safe_regex={"regex": regex})
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _principal_name(matcher: string_pb2.StringMatcher) -> Principal:
    return Principal(authenticated=Principal.Authenticated(principal_name=matcher))


def _principal(value: str) -> Principal:
    return _principal_name(string_match(value, prefix=SPIFFE))


def _namespace(value: str) -> Principal:
    pattern = ".*".join(re.escape(p) for p in value.split("*"))
    return _principal_name(string_pb2.StringMatcher(safe_regex={"regex": f".*/ns/{pattern}/.*"}))


def _trust_domain(value: str) -> Principal:
    """The peer's trust domain (between `spiffe://` and the first `/`); `*` stays inside it."""
    pattern = "[^/]*".join(re.escape(p) for p in value.split("*"))
    return _principal_name(string_pb2.StringMatcher(safe_regex={"regex": f"spiffe://{pattern}/.*"}))


def _service_account(value: str, namespace: str) -> Principal:
    ns, _, sa = value.rpartition("/")
    regex = f"spiffe://.+/ns/{re.escape(ns or namespace)}/(.+/|)sa/{re.escape(sa)}(/.+)?"
    return _principal_name(string_pb2.StringMatcher(safe_regex={"regex": regex}))


def cidr(value: str) -> address_pb2.CidrRange:
    """An Envoy CidrRange for an address or CIDR block."""
    network = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address), prefix_len=protos.uint32(network.prefixlen)
    )


def _claim(path: Sequence[str], matcher: value_pb2.ValueMatcher) -> Principal:
    """A check of the validated JWT's payload, which the jwt_authn filter puts in its dynamic
    metadata under "payload"; without a valid token it is absent and nothing matches."""
    segments = [metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in ("payload", *path)]
    found = metadata_pb2.MetadataMatcher(filter=JWT_FILTER, path=segments, value=matcher)
    return Principal(sourced_metadata=_dynamic(found))


def _dynamic(matcher: metadata_pb2.MetadataMatcher) -> rbac_pb2.SourcedMetadata:
    # Envoy deprecates the plain `metadata` field for this (Istio still emits the old form).
    return rbac_pb2.SourcedMetadata(metadata_matcher=matcher, metadata_source=rbac_pb2.DYNAMIC)


def _claim_value(path: Sequence[str], value: str) -> Principal:
    """A claim that is value, or a list holding value (aud, and custom claims, may be both)."""
    one = value_pb2.ValueMatcher(string_match=string_match(value))
    either = value_pb2.OrMatcher(value_matchers=[_in_list(one), one])
    return _claim(path, value_pb2.ValueMatcher(or_match=either))


def _in_list(one: value_pb2.ValueMatcher) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=one))


def _request_principal(value: str) -> Principal:
    """Istio's request principal `<iss>/<sub>` as checks of both claims. The issuer may be a URL,
    so the last `/` splits; `*` stands for any non-empty claim; a leading or trailing `*`
    makes a suffix or prefix of the part it touches, and the other part must exist."""
    iss, slash, sub = value.rpartition("/")
    if not slash:
        iss, sub = value, ""
    any_ = string_pb2.StringMatcher(safe_regex={"regex": _ANY_REGEX})
    if value == "*":
        match_iss, match_sub = any_, any_
    elif value.startswith("*"):
        if slash:
            match_iss = any_ if iss == "*" else string_pb2.StringMatcher(suffix=iss[1:])
            match_sub = string_pb2.StringMatcher(exact=sub)
        else:
            match_iss, match_sub = any_, string_pb2.StringMatcher(suffix=value[1:])
    elif value.endswith("*"):
        if slash:
            match_iss = string_pb2.StringMatcher(exact=iss)
            match_sub = any_ if sub == "*" else string_pb2.StringMatcher(prefix=sub[:-1])
        else:
            match_iss, match_sub = string_pb2.StringMatcher(prefix=value[:-1]), any_
    else:
        match_iss, match_sub = (string_pb2.StringMatcher(exact=x) for x in (iss, sub))
    checks = [
        _claim([name], value_pb2.ValueMatcher(string_match=m))
        for name, m in (("iss", match_iss), ("sub", match_sub))
    ]
    return Principal(and_ids=rbac_pb2.Principal.Set(ids=checks))


def _header(
    name: str, value: str, *, ignore_case: bool = False
) -> route_components_pb2.HeaderMatcher:
    if value == "*":
        return route_components_pb2.HeaderMatcher(name=name, present_match=True)
    matcher = string_match(value, ignore_case=ignore_case)
    return route_components_pb2.HeaderMatcher(name=name, string_match=matcher)


def _path(value: str) -> Permission:
    if "{" in value:  # Istio's path templates: {*} one segment, {**} any number of them
        template = value.replace("{**}", "**").replace("{*}", "*")
        config = uri_template_match_pb2.UriTemplateMatchConfig(path_template=template)
        return Permission(
            uri_template=extension_pb2.TypedExtensionConfig(
                name="uri-template", typed_config=protos.packed(config)
            )
        )
    return Permission(url_path=path_pb2.PathMatcher(path=string_match(value)))


def _or_ids(ids: Sequence[Principal]) -> Principal:
    return Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _or_rules(rules: Sequence[Permission]) -> Permission:
    return Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))


def _id_pair(
    into: list[Principal], positive: Sequence[Principal], negative: Sequence[Principal]
) -> None:
    if positive:
        into.append(_or_ids(positive))
    if negative:
        into.append(Principal(not_id=_or_ids(negative)))


def _rule_pair(
    into: list[Permission], positive: Sequence[Permission], negative: Sequence[Permission]
) -> None:
    if positive:
        into.append(_or_rules(positive))
    if negative:
        into.append(Permission(not_rule=_or_rules(negative)))


def source_ids(
    source: AuthzSource, namespace: str, *, http: bool, bundle: Sequence[str] = DEFAULT_BUNDLE
) -> list[Principal]:
    """The AND-ed principal checks of one source. On TCP, request principals (HTTP only)
    are left out; rule_policy decides whether the rule may still be used."""
    ids: list[Principal] = []
    _id_pair(
        ids,
        [_principal(v) for v in expand_principals(source.principals, bundle)],
        [_principal(v) for v in expand_principals(source.not_principals, bundle)],
    )
    accounts = [_service_account(v, namespace) for v in source.service_accounts]
    not_accounts = [_service_account(v, namespace) for v in source.not_service_accounts]
    _id_pair(ids, accounts, not_accounts)
    _id_pair(
        ids,
        [_trust_domain(v) for v in expand_trust_domains(source.trust_domains, bundle)],
        [_trust_domain(v) for v in expand_trust_domains(source.not_trust_domains, bundle)],
    )
    if http:
        _id_pair(
            ids,
            [_request_principal(v) for v in source.request_principals],
            [_request_principal(v) for v in source.not_request_principals],
        )
    _id_pair(
        ids,
        [_namespace(v) for v in source.namespaces],
        [_namespace(v) for v in source.not_namespaces],
    )
    _id_pair(
        ids,
        [Principal(direct_remote_ip=cidr(v)) for v in source.ip_blocks],
        [Principal(direct_remote_ip=cidr(v)) for v in source.not_ip_blocks],
    )
    _id_pair(
        ids,
        [Principal(remote_ip=cidr(v)) for v in source.remote_ip_blocks],
        [Principal(remote_ip=cidr(v)) for v in source.not_remote_ip_blocks],
    )
    return ids


def _source_needs_http(source: AuthzSource) -> bool:
    return bool(source.request_principals or source.not_request_principals)


def _operation_needs_http(op: Operation) -> bool:
    return bool(
        op.hosts or op.not_hosts or op.methods or op.not_methods or op.paths or op.not_paths
    )


def operation_rules(op: Operation, *, http: bool) -> list[Permission]:
    """The AND-ed permission checks of one operation. On TCP, hosts, methods and paths (HTTP
    only) are left out; rule_policy decides whether the rule may still be used."""
    rules: list[Permission] = []
    if http:
        host = [Permission(header=_header(":authority", v, ignore_case=True)) for v in op.hosts]
        not_host = [
            Permission(header=_header(":authority", v, ignore_case=True)) for v in op.not_hosts
        ]
        _rule_pair(rules, host, not_host)
        _rule_pair(
            rules,
            [Permission(header=_header(":method", v)) for v in op.methods],
            [Permission(header=_header(":method", v)) for v in op.not_methods],
        )
        _rule_pair(rules, [_path(v) for v in op.paths], [_path(v) for v in op.not_paths])
    _rule_pair(
        rules,
        [Permission(destination_port=int(v)) for v in op.ports],
        [Permission(destination_port=int(v)) for v in op.not_ports],
    )
    return rules


def _condition_principal(key: str, value: str, namespace: str) -> Principal:
    """The principal check of a source-side condition (see _source_side)."""
    if key == "source.ip":
        return Principal(direct_remote_ip=cidr(value))
    if key == "remote.ip":
        return Principal(remote_ip=cidr(value))
    if key == "source.namespace":
        return _namespace(value)
    if key == "source.principal":
        return _principal(value)
    if key == "source.serviceAccount":
        return _service_account(value, namespace)
    if key == "source.trustDomain":
        return _trust_domain(value)
    for headers in ("request.headers[", "request.experimental.inline.headers["):
        if key.startswith(headers):
            return Principal(header=_header(key[len(headers) : -1], value))
    if key == "request.auth.principal":
        return _request_principal(value)
    if key == "request.auth.audiences":
        return _claim_value(["aud"], value)
    if key == "request.auth.presenter":
        return _claim_value(["azp"], value)
    # request.auth.claims[a][b]...: a nested claim, one bracket per level
    return _claim_value(key[len("request.auth.claims[") : -1].split("]["), value)


def _condition_permission(key: str, value: str) -> Permission:
    if key == "destination.ip":
        return Permission(destination_ip=cidr(value))
    if key == "destination.port":
        return Permission(destination_port=int(value))
    if key == "connection.sni":
        return Permission(requested_server_name=string_match(value))
    # experimental.envoy.filters.<filter>[<key>]: that filter's dynamic metadata, as Istio
    # reads it; `[v]` means a list holding v.
    name, _, rest = key[len("experimental.") :].partition("[")
    listed = value.startswith("[") and value.endswith("]")
    one = value_pb2.ValueMatcher(string_match=string_match(value.strip("[]") if listed else value))
    matcher = _in_list(one) if listed else one
    path = [metadata_pb2.MetadataMatcher.PathSegment(key=rest.rstrip("]"))]
    found = metadata_pb2.MetadataMatcher(filter=name, path=path, value=matcher)
    return Permission(sourced_metadata=_dynamic(found))


def http_only(condition: Condition) -> bool:
    """Whether a condition needs HTTP (a TCP filter cannot check it). The experimental
    envoy.filters metadata keys work on TCP too, as in Istio."""
    return condition.key.startswith("request.")


_SOURCE_KEYS = (
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
)


def _source_side(key: str) -> bool:
    return key in _SOURCE_KEYS or key.startswith("request.")


def _values(condition: Condition, bundle: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """A condition's values and notValues, with the trust-domain bundle applied."""
    if condition.key == "source.principal":
        return tuple(expand_principals(v, bundle) for v in (condition.values, condition.not_values))
    if condition.key == "source.trustDomain":
        pair = (condition.values, condition.not_values)
        return tuple(expand_trust_domains(v, bundle) for v in pair)
    return condition.values, condition.not_values


def _conditions(
    conditions: Iterable[Condition], namespace: str, bundle: Sequence[str]
) -> tuple[list[Principal], list[Permission]]:
    """Conditions as principal checks (about the caller) and permission checks (the rest)."""
    ids: list[Principal] = []
    rules: list[Permission] = []
    for c in conditions:
        values, not_values = _values(c, bundle)
        if _source_side(c.key):
            _id_pair(
                ids,
                [_condition_principal(c.key, v, namespace) for v in values],
                [_condition_principal(c.key, v, namespace) for v in not_values],
            )
        else:
            _rule_pair(
                rules,
                [_condition_permission(c.key, v) for v in values],
                [_condition_permission(c.key, v) for v in not_values],
            )
    return ids, rules


def _and_ids(ids: list[Principal]) -> Principal:
    return Principal(and_ids=rbac_pb2.Principal.Set(ids=ids or [Principal(any=True)]))


def _and_rules(rules: list[Permission]) -> Permission:
    return Permission(and_rules=rbac_pb2.Permission.Set(rules=rules or [Permission(any=True)]))


def _needs_http(rule: AuthzRule) -> bool:
    return (
        any(_source_needs_http(s) for s in rule.sources)
        or any(_operation_needs_http(o) for o in rule.operations)
        or any(http_only(c) for c in rule.conditions)
    )


def rule_policy(
    rule: AuthzRule,
    namespace: str,
    action: AuthzAction,
    *,
    http: bool,
    bundle: Sequence[str] = DEFAULT_BUNDLE,
) -> rbac_pb2.Policy | None:
    """The Envoy policy of one rule; None when an ALLOW rule cannot be checked on TCP.

    On TCP a DENY or AUDIT rule loses only its HTTP-only fields, each on its own (Istio's
    generators skip a field they cannot build for those actions)."""
    if not http and action is AuthzAction.ALLOW and _needs_http(rule):
        return None
    keep = [c for c in rule.conditions if http or not http_only(c)]
    cond_ids, cond_rules = _conditions(keep, namespace, bundle)
    src = [source_ids(s, namespace, http=http, bundle=bundle) for s in rule.sources] or [[]]
    ops = [operation_rules(o, http=http) for o in rule.operations] or [[]]
    return rbac_pb2.Policy(
        permissions=[_and_rules(o + cond_rules) for o in ops],
        principals=[_and_ids(s + cond_ids) for s in src],
    )


def rbac_rules(
    policies: Sequence[AuthzPolicy],
    action: AuthzAction,
    *,
    http: bool,
    bundle: Sequence[str] = DEFAULT_BUNDLE,
) -> rbac_pb2.RBAC:
    """One Envoy RBAC of every rule of policies (all of one action), in policy order."""
    out = rbac_pb2.RBAC(action=_ACTIONS[action])
    for policy in policies:
        for i, rule in enumerate(policy.rules):
            built = rule_policy(rule, policy.namespace, action, http=http, bundle=bundle)
            if built is not None:
                out.policies[names.rbac_policy_name(policy.namespace, policy.name, i)].CopyFrom(
                    built
                )
    return out


@dataclass(frozen=True, slots=True)
class RbacFilter:
    """One RBAC filter of a workload port: the enforced rules of an action's policies and the
    shadow rules of its dry-run policies (either None when there are none)."""

    action: AuthzAction
    rules: rbac_pb2.RBAC | None
    shadow: rbac_pb2.RBAC | None

    def _fill(self, config: http_rbac.RBAC | network_rbac.RBAC) -> None:
        if self.rules is not None:
            config.rules.CopyFrom(self.rules)
        if self.shadow is not None:
            config.shadow_rules.CopyFrom(self.shadow)
            config.shadow_rules_stat_prefix = DRY_RUN_STAT_PREFIXES.get(self.action, "")

    def http_config(self) -> http_rbac.RBAC:
        """The typed config of the HTTP RBAC filter."""
        config = http_rbac.RBAC()
        self._fill(config)
        return config

    def network_config(self, stat_prefix: str) -> network_rbac.RBAC:
        """The typed config of the network RBAC filter."""
        config = network_rbac.RBAC(stat_prefix=stat_prefix)
        self._fill(config)
        return config


def rbac_by_action(
    policies: Sequence[AuthzPolicy], *, http: bool, bundle: Sequence[str] = DEFAULT_BUNDLE
) -> list[RbacFilter]:
    """The RBAC filters a workload port needs, in checking order (AUDIT, DENY, ALLOW).

    An action without policies yields nothing: in particular no ALLOW filter (allow all).
    An action whose policies are all dry-run yields a filter that enforces nothing."""
    out = []
    for action in (AuthzAction.AUDIT, AuthzAction.DENY, AuthzAction.ALLOW):
        chosen = [p for p in policies if p.action is action]
        enforced = [p for p in chosen if not p.dry_run]
        dry = [p for p in chosen if p.dry_run]
        if chosen:
            out.append(
                RbacFilter(
                    action,
                    rbac_rules(enforced, action, http=http, bundle=bundle) if enforced else None,
                    rbac_rules(dry, action, http=http, bundle=bundle) if dry else None,
                )
            )
    return out
