"""Conversion of validated raw resources to model objects, one raw resource at a time.

Each converter trusts that its input passed the schema (types are right), and returns the
model objects for one resource. Nothing here looks at other resources: merging (conflicts,
workload selection) is the Normalizer's job.
"""

from __future__ import annotations

from typing import Any

from meshagent.construct import slots_constructor
from meshagent.model.extensions import EnvoyFilter, WasmPlugin
from meshagent.model.gateway import Gateway
from meshagent.model.routing import VirtualService
from meshagent.model.security import AuthzPolicy, PeerAuthn, RequestAuthn
from meshagent.model.services import Workload
from meshagent.model.sidecar import Sidecar
from meshagent.model.source import Provenance, RawResource
from meshagent.model.telemetry import Telemetry
from meshagent.model.traffic import DestinationRule
from meshagent.normalize.convert.context import Context
from meshagent.normalize.convert.extensions import convert_envoy_filter, convert_wasm_plugin
from meshagent.normalize.convert.gateway import convert_gateway
from meshagent.normalize.convert.requestauthn import convert_request_authentication
from meshagent.normalize.convert.routing import convert_virtual_service
from meshagent.normalize.convert.security import (
    convert_authorization_policy,
    convert_peer_authentication,
    with_dry_run,
)
from meshagent.normalize.convert.services import (
    ConvertedServiceEntry,
    convert_service_entry,
    convert_workload_entry,
)
from meshagent.normalize.convert.sidecar import convert_sidecar, untranslated
from meshagent.normalize.convert.telemetry import convert_telemetry
from meshagent.normalize.convert.traffic import convert_destination_rule
from meshagent.normalize.schema.core import Issues

Converted = (
    ConvertedServiceEntry
    | Workload
    | VirtualService
    | DestinationRule
    | PeerAuthn
    | AuthzPolicy
    | RequestAuthn
    | Gateway
    | Sidecar
    | EnvoyFilter
    | WasmPlugin
    | Telemetry
)

_CONVERTERS: dict[str, Any] = {
    "ServiceEntry": convert_service_entry,
    "WorkloadEntry": convert_workload_entry,
    "VirtualService": convert_virtual_service,
    "DestinationRule": convert_destination_rule,
    "PeerAuthentication": convert_peer_authentication,
    "AuthorizationPolicy": convert_authorization_policy,
    "RequestAuthentication": convert_request_authentication,
    "Gateway": convert_gateway,
    "Sidecar": convert_sidecar,
}
# Converters that report problems of their own (they take the issues and the creation time).
_REPORTING_CONVERTERS: dict[str, Any] = {
    "EnvoyFilter": convert_envoy_filter,
    "WasmPlugin": convert_wasm_plugin,
    "Telemetry": lambda name, spec, ctx, issues, _created: convert_telemetry(
        name, spec, ctx, issues
    ),  # it warns (metrics, targetRefs)
}


# Kinds that validate but have no converter yet, and what the warning says about them.
NOT_TRANSLATED = {
    "WorkloadGroup": "WorkloadGroup is validated; only WorkloadEntry auto-registration reads it",
    "ProxyConfig": "ProxyConfig is validated but not translated yet: it has no effect",
}


_make_provenance = slots_constructor(Provenance, "source", "location", "kind", "namespace", "name")
_make_context = slots_constructor(Context, "namespace", "domain_suffix", "provenance")


def convert(
    raw: RawResource, *, domain_suffix: str, default_namespace: str
) -> tuple[Converted | None, Issues]:
    """The model objects for raw (None for a kind without a converter), and any problem met.

    raw must have passed `check_document` without errors. A converter that fails on such
    input is a bug; it is reported as an error on the resource rather than a traceback, so
    that one odd document cannot stop the agent.
    """
    issues = Issues()
    converter = _CONVERTERS.get(raw.kind)
    reporting = _REPORTING_CONVERTERS.get(raw.kind)
    if converter is None and reporting is None:
        if raw.kind in NOT_TRANSLATED:
            issues.warn("kind", NOT_TRANSLATED[raw.kind])
        return None, issues
    namespace = raw.namespace or default_namespace
    # Positional constructors: two objects for every resource of a large mesh (construct.py).
    provenance = _make_provenance(
        raw.source, raw.provenance.location, raw.kind, namespace, raw.name
    )
    ctx = _make_context(namespace, domain_suffix, provenance)
    spec = raw.body.get("spec") or {}
    try:
        if reporting is not None:
            created = str((raw.body.get("metadata") or {}).get("creationTimestamp") or "")
            result: Converted | None = reporting(raw.name, spec, ctx, issues, created)
        else:
            assert converter is not None
            result = converter(raw.name, spec, ctx)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        issues.error("spec", f"cannot convert ({type(exc).__name__}: {exc})")
        return None, issues
    if isinstance(result, AuthzPolicy):
        result = with_dry_run(result, raw.body, issues)
    elif isinstance(result, Sidecar):
        for path, reason in untranslated(raw.body.get("spec") or {}):
            issues.warn(path, reason)
    return result, issues


__all__ = ["Context", "Converted", "ConvertedServiceEntry", "convert"]
