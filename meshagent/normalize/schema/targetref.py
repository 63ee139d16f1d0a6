"""Policy target references (`targetRef`, `targetRefs`) and the selector-or-targets rule,
as Istio validates them for RequestAuthentication, AuthorizationPolicy, Telemetry,
WasmPlugin and EnvoyFilter (istio/api type.v1beta1.PolicyTargetReference and its CRD rules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from meshagent.normalize.schema.core import F, Issues, ListOf, Obj, Str, join

# The CRD's patterns for group (a DNS subdomain, or "" for the core group) and kind.
_GROUP = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
_KIND = r"[a-zA-Z](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"

# What a policy may target (Istio's allowedTargetRefs): (group, kind), "" is the core group.
ALLOWED_TARGETS = frozenset(
    {
        ("", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
    }
)
_ALLOWED_TEXT = ", ".join(f"{g or 'core'}/{k}" for g, k in sorted(ALLOWED_TARGETS))


def _target_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    group, kind = value.get("group") or "", value.get("kind") or ""
    if len(group) > 253:
        issues.error(join(path, "group"), "must be at most 253 characters")
    if len(kind) > 63:
        issues.error(join(path, "kind"), "must be at most 63 characters")
    if len(str(value.get("name") or "")) > 253:
        issues.error(join(path, "name"), "must be at most 253 characters")
    if value.get("namespace"):
        issues.error(
            join(path, "namespace"),
            "cross namespace referencing is not currently supported: namespace must not be set",
        )
    if ("" if group == "core" else group, kind) not in ALLOWED_TARGETS:
        issues.error(
            join(path, "kind"),
            f"targetRef must be to one of {_ALLOWED_TEXT} but was {group or 'core'}/{kind}",
        )


TARGET_REF = Obj(
    {
        "group": F(Str(pattern=_GROUP, what="API group")),
        "kind": F(Str(pattern=_KIND, non_empty=True, what="kind"), required=True),
        "name": F(Str(non_empty=True), required=True),
        "namespace": F(Str()),
    },
    rules=[_target_rule],
)


class _TargetRefs(ListOf):
    """targetRefs: at most 16 references (the CRD's maxItems)."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        ListOf.check(self, value, path, issues)
        if isinstance(value, list) and len(value) > 16:
            issues.error(path, f"must have at most 16 items, has {len(value)}")


TARGET_REFS = _TargetRefs(TARGET_REF)


def one_of_selector_or_targets(selector: str = "selector") -> Callable[..., None]:
    """A rule: at most one of selector, targetRef and targetRefs is set (Istio counts an
    empty selector `{}` as set, and an empty targetRefs list as not set)."""

    def rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
        present = [
            key
            for key in (selector, "targetRef", "targetRefs")
            if value.get(key) is not None and (key != "targetRefs" or value[key])
        ]
        if len(present) > 1:
            issues.error(
                join(path, present[1]),
                f"only one of targetRefs or {selector} can be set (found {', '.join(present)})",
            )

    return rule


def workload_selector_rule(key: str, labels: str) -> Callable[..., None]:
    """A rule: the selector at key has labels (Istio warns "workload selector specified
    without labels": the policy then applies to the whole namespace)."""

    def rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
        selector = value.get(key)
        if isinstance(selector, Mapping) and not selector.get(labels):
            issues.warn(
                join(path, key),
                "workload selector specified without labels: applies to the whole namespace",
            )

    return rule


__all__ = [
    "ALLOWED_TARGETS",
    "TARGET_REF",
    "TARGET_REFS",
    "one_of_selector_or_targets",
    "workload_selector_rule",
]
