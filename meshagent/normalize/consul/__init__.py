"""Consul resources (from adapters.consul) to the mesh model.

`convert_consul` is the normalizer's entry point for source "consul": ConsulService becomes
the same ConvertedServiceEntry a ServiceEntry does; service-router and service-splitter
become VirtualServices, service-resolver a DestinationRule, service-intentions an
AuthorizationPolicy (AuthzPolicy), ingress-gateway and terminating-gateway a Gateway with
its bound VirtualServices (and DestinationRules), as a tuple (see gateways.py). Other
config-entry kinds (service-defaults, ...) are reported as not supported yet.
"""

from __future__ import annotations

from typing import Any

from meshagent.model.source import Provenance, RawResource
from meshagent.normalize.consul.entries import convert_resolver, convert_router, convert_splitter
from meshagent.normalize.consul.gateways import (
    convert_ingress_gateway,
    convert_terminating_gateway,
)
from meshagent.normalize.consul.options import ConsulMapping
from meshagent.normalize.consul.services import convert_service
from meshagent.normalize.schema.core import Issues

SERVICE_KIND = "ConsulService"
CONFIG_KIND = "ConsulConfigEntry"
KINDS = (SERVICE_KIND, CONFIG_KIND)

_ENTRY_CONVERTERS: dict[str, Any] = {
    "service-router": convert_router,
    "service-splitter": convert_splitter,
    "service-resolver": convert_resolver,
    "ingress-gateway": convert_ingress_gateway,
    "terminating-gateway": convert_terminating_gateway,
}


def is_consul(raw: RawResource) -> bool:
    """True for the resources the Consul adapter emits."""
    return raw.kind in KINDS


def convert_consul(raw: RawResource, mapping: ConsulMapping) -> tuple[Any, Issues]:
    """The model objects for raw (None when it converts to nothing) and the issues met.

    Like the Istio converters, a converter that trips over odd input is reported as an error on
    the resource, never raised: one strange document from Consul must not stop the agent.
    """
    issues = Issues()
    body = raw.body
    provenance = Provenance(raw.source, raw.provenance.location, raw.kind, raw.namespace, raw.name)
    try:
        if raw.kind == SERVICE_KIND:
            return convert_service(body, mapping, provenance, issues), issues
        kind = str(body.get("Kind") or "")
        converter = _ENTRY_CONVERTERS.get(kind) or _extra_converter(kind)
        if converter is None:
            issues.warn("Kind", f"config entry kind not supported yet: {kind or '(none)'}, ignored")
            return None, issues
        if not body.get("Name"):
            issues.error("Name", "a config entry needs a Name")
            return None, issues
        return converter(body, mapping, provenance, issues), issues
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        issues.error("", f"cannot convert ({type(exc).__name__}: {exc})")
        return None, issues


def _extra_converter(kind: str) -> Any:
    if kind == "service-intentions":
        from meshagent.normalize.consul.intentions import convert_intentions

        return convert_intentions
    return None


__all__ = ["CONFIG_KIND", "KINDS", "SERVICE_KIND", "ConsulMapping", "convert_consul", "is_consul"]
