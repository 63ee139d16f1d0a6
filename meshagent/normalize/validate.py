"""Validation of one raw resource into located diagnostics (also behind `meshagent validate`)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from meshagent.model.source import Diagnostic, RawResource
from meshagent.normalize.schema import GATEWAY_API_GROUPS, KIND_GROUPS, SPECS
from meshagent.normalize.schema.common import LABELS, STR_MAP
from meshagent.normalize.schema.core import F, Issue, Issues, Obj, Predicate, Str, Type

_LINE_SUFFIX = re.compile(r":\d+$")


class AnyValue(Type):
    """Anything: for fields meshagent carries but does not read (status, managedFields, ...)."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        return None

    def compile_predicate(self) -> Predicate:
        return lambda value: True


_ANY = F(AnyValue())
METADATA = Obj(
    {
        "name": F(Str(non_empty=True), required=True),
        "namespace": F(Str()),
        "labels": F(LABELS),
        "annotations": F(STR_MAP),
        **{
            k: _ANY
            for k in (
                "generateName",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "ownerReferences",
                "finalizers",
                "managedFields",
                "selfLink",
                "clusterName",
            )
        },
    }
)


# The kinds Istio defines in its API groups (istio/api). In these groups any other kind is a
# typo (`VirtualServise`): an error, so that the document is not silently ignored. A kind listed
# here that meshagent does not convert yet is a warning.
ISTIO_KINDS: dict[str, frozenset[str]] = {
    "networking.istio.io": frozenset(
        {
            "DestinationRule",
            "EnvoyFilter",
            "Gateway",
            "ProxyConfig",
            "ServiceEntry",
            "Sidecar",
            "VirtualService",
            "WorkloadEntry",
            "WorkloadGroup",
        }
    ),
    "security.istio.io": frozenset(
        {"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"}
    ),
    "telemetry.istio.io": frozenset({"Telemetry"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
}


def unknown_istio_kind(raw: RawResource) -> str | None:
    """The reason when raw's kind does not exist in its Istio API group, else None."""
    group = raw.api_version.rpartition("/")[0]
    kinds = ISTIO_KINDS.get(group)
    if kinds is None or raw.kind in kinds:
        return None
    close = difflib.get_close_matches(raw.kind, sorted(kinds), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown kind {raw.kind!r} in {group}{hint}; not applied"


def is_supported(raw: RawResource) -> bool:
    """True when raw is an Istio kind and version this normalizer converts."""
    group, _, version = raw.api_version.rpartition("/")
    want = KIND_GROUPS.get(raw.kind)
    return want is not None and group == want[0] and version in want[1]


_DOCUMENTS: dict[str, Obj] = {}


def _document(kind: str) -> Obj:
    """The whole-document schema of kind, built once (its compiled predicate is kept on it)."""
    found = _DOCUMENTS.get(kind)
    if found is None:
        found = _DOCUMENTS[kind] = Obj(
            {
                "apiVersion": F(Str()),
                "kind": F(Str()),
                "metadata": F(METADATA, required=True),
                "spec": F(SPECS[kind]),
                "status": _ANY,
            }
        )
    return found


def check_document(raw: RawResource) -> Issues:
    """Schema and rule issues of raw, or one warning when its kind is not supported.

    A kind this module knows under an apiVersion it does not (networking.istio.io/v2, or a
    foreign group) is an error on apiVersion: the author meant a mesh resource.
    """
    if not is_supported(raw):
        issues = Issues()
        if raw.api_version.rpartition("/")[0] in GATEWAY_API_GROUPS:
            issues.warn(
                "kind",
                f"{raw.kind} ({raw.api_version}) is accepted but not translated yet: Kubernetes "
                "Gateway API resources have no effect",
            )
        elif raw.kind in SPECS:
            group, known = KIND_GROUPS[raw.kind]
            versions = " or ".join(f"{group}/{v}" for v in sorted(known))
            reason = f"unsupported apiVersion {raw.api_version!r}: {raw.kind} needs {versions}"
            issues.error("apiVersion", reason)
        elif (unknown := unknown_istio_kind(raw)) is not None:
            issues.error("kind", unknown)
        else:
            issues.warn("kind", f"kind not supported yet: {raw.api_version} {raw.kind}, ignored")
        return issues
    document = _document(raw.kind)
    body = raw.body if raw.body.get("spec") is not None else {**raw.body, "spec": {}}
    issues = Issues()
    document.check(body, "", issues)
    if raw.kind == "Gateway" and not _GATEWAY_NAME.fullmatch(raw.name):
        # Istio's ValidateGateway: the name is a DNS-1123 label (no dots).
        issues.error("metadata.name", f"invalid gateway name: {raw.name!r}")
    return issues


_GATEWAY_NAME = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?")  # Istio's labels


def locate(raw: RawResource, path: str) -> str:
    """ "file:line" of the deepest part of path that raw.lines knows, else raw's own location."""
    location = raw.provenance.location
    if not raw.lines or not _LINE_SUFFIX.search(location):
        return location
    file = location.rsplit(":", 1)[0]
    probe = path
    while probe:
        line = raw.lines.get(probe)
        if line is not None:
            return f"{file}:{line}"
        probe = probe[: max(probe.rfind("."), probe.rfind("["), 0)]
    return location


def diagnostic(raw: RawResource, issue: Issue) -> Diagnostic:
    """issue, located in raw and named after it."""
    return Diagnostic(
        severity=issue.severity,
        source=raw.source,
        location=locate(raw, issue.path),
        kind=raw.kind,
        name=display_name(raw),
        field=issue.path,
        reason=issue.reason,
    )


def display_name(raw: RawResource) -> str:
    """ "namespace/name", or "name" when the document gave no namespace."""
    return f"{raw.namespace}/{raw.name}" if raw.namespace else raw.name


def validate_resource(
    raw: RawResource,
    *,
    domain_suffix: str = "cluster.local",
    default_namespace: str = "default",
) -> list[Diagnostic]:
    """Every problem with raw as located diagnostics; no error means the normalizer accepts it.

    The conversion runs too (when the schema passed), so that a document that validates here
    is one the normalizer will serve.
    """
    from meshagent.normalize.convert import convert  # the converters import this module

    issues = check_document(raw)
    out = [diagnostic(raw, i) for i in issues]
    if not issues.has_errors and is_supported(raw):
        _, problems = convert(raw, domain_suffix=domain_suffix, default_namespace=default_namespace)
        out.extend(diagnostic(raw, i) for i in problems)
    return out
