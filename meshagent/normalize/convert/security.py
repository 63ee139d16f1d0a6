"""PeerAuthentication and AuthorizationPolicy (validated) to PeerAuthn and AuthzPolicy."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import Labels, labels_of
from meshagent.model.security import (
    AuthzAction,
    AuthzPolicy,
    AuthzRule,
    Condition,
    MtlsMode,
    Operation,
    PeerAuthn,
    Source,
)
from meshagent.normalize.convert.context import Context, items, sub
from meshagent.normalize.schema.core import Issues

DRY_RUN = "istio.io/dry-run"
# Go's strconv.ParseBool, which Istio reads the annotation with.
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _selector(spec: Mapping[str, Any]) -> Labels | None:
    # An empty selector (or matchLabels {}) selects every workload, like no selector.
    labels = labels_of(sub(sub(spec, "selector"), "matchLabels"))
    return labels or None


def _mode(mtls: Mapping[str, Any]) -> MtlsMode:
    return MtlsMode(str(mtls.get("mode") or "UNSET"))


def convert_peer_authentication(name: str, spec: Mapping[str, Any], ctx: Context) -> PeerAuthn:
    """A PeerAuthentication spec as a PeerAuthn."""
    levels = sub(spec, "portLevelMtls")
    return PeerAuthn(
        name=name,
        namespace=ctx.namespace,
        mode=_mode(sub(spec, "mtls")),
        selector=_selector(spec),
        port_level=tuple(sorted((int(k), _mode(v or {})) for k, v in levels.items())),
        provenance=ctx.provenance,
    )


def _strs(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(str(v) for v in items(obj, key))


def _source(spec: Mapping[str, Any]) -> Source:
    return Source(
        principals=_strs(spec, "principals"),
        not_principals=_strs(spec, "notPrincipals"),
        request_principals=_strs(spec, "requestPrincipals"),
        not_request_principals=_strs(spec, "notRequestPrincipals"),
        namespaces=_strs(spec, "namespaces"),
        not_namespaces=_strs(spec, "notNamespaces"),
        service_accounts=_strs(spec, "serviceAccounts"),
        not_service_accounts=_strs(spec, "notServiceAccounts"),
        ip_blocks=_strs(spec, "ipBlocks"),
        not_ip_blocks=_strs(spec, "notIpBlocks"),
        remote_ip_blocks=_strs(spec, "remoteIpBlocks"),
        not_remote_ip_blocks=_strs(spec, "notRemoteIpBlocks"),
        trust_domains=_strs(spec, "trustDomains"),
        not_trust_domains=_strs(spec, "notTrustDomains"),
    )


def _operation(spec: Mapping[str, Any]) -> Operation:
    return Operation(
        hosts=_strs(spec, "hosts"),
        not_hosts=_strs(spec, "notHosts"),
        ports=_strs(spec, "ports"),
        not_ports=_strs(spec, "notPorts"),
        methods=_strs(spec, "methods"),
        not_methods=_strs(spec, "notMethods"),
        paths=_strs(spec, "paths"),
        not_paths=_strs(spec, "notPaths"),
    )


def _rule(spec: Mapping[str, Any]) -> AuthzRule:
    return AuthzRule(
        sources=tuple(_source(sub(f, "source")) for f in items(spec, "from")),
        operations=tuple(_operation(sub(t, "operation")) for t in items(spec, "to")),
        conditions=tuple(
            Condition(str(c["key"]), _strs(c, "values"), _strs(c, "notValues"))
            for c in items(spec, "when")
        ),
    )


def convert_authorization_policy(name: str, spec: Mapping[str, Any], ctx: Context) -> AuthzPolicy:
    """An AuthorizationPolicy spec as an AuthzPolicy."""
    return AuthzPolicy(
        name=name,
        namespace=ctx.namespace,
        action=AuthzAction(str(spec.get("action") or "ALLOW")),
        selector=_selector(spec),
        rules=tuple(_rule(r or {}) for r in items(spec, "rules")),
        provenance=ctx.provenance,
        provider=str(sub(spec, "provider").get("name") or ""),
    )


def with_dry_run(policy: AuthzPolicy, body: Mapping[str, Any], issues: Issues) -> AuthzPolicy:
    """policy, marked dry-run when its `istio.io/dry-run` annotation says true. Another value
    is warned about and, as in Istio, the policy is enforced."""
    value = sub(sub(body, "metadata"), "annotations").get(DRY_RUN)
    if value is None:
        return policy
    text = str(value)
    if text in _TRUE:
        return dataclasses.replace(policy, dry_run=True)
    if text not in _FALSE:
        issues.warn(
            f"metadata.annotations.{DRY_RUN}",
            f"{text!r} is not a boolean (true or false): the policy is enforced",
        )
    return policy
