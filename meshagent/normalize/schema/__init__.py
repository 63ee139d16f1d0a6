"""Schemas of the Istio kinds the normalizer understands, keyed by kind."""

from __future__ import annotations

from collections.abc import Mapping

from meshagent.normalize.schema import (
    destinationrule,
    extensions,
    gateway,
    security,
    serviceentry,
    virtualservice,
    workloadentry,
)
from meshagent.normalize.schema.core import Obj, Type

ISTIO_NETWORKING_GROUP = "networking.istio.io"
ISTIO_VERSIONS = frozenset({"v1", "v1beta1", "v1alpha3"})

SPECS: Mapping[str, Obj] = {
    "ServiceEntry": serviceentry.SPEC,
    "WorkloadEntry": workloadentry.SPEC,
    "VirtualService": virtualservice.SPEC,
    "DestinationRule": destinationrule.SPEC,
    **security.SPECS,
    **gateway.SPECS,  # Gateway, Sidecar, WorkloadGroup (see schema/gateway.py)
    **extensions.SPECS,  # EnvoyFilter, ProxyConfig, Telemetry, WasmPlugin
}

ISTIO_SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = frozenset({"v1", "v1beta1"})

# kind -> (API group, versions) for every kind in SPECS.
KIND_GROUPS: Mapping[str, tuple[str, frozenset[str]]] = {
    **{kind: (ISTIO_NETWORKING_GROUP, ISTIO_VERSIONS) for kind in SPECS},
    **{kind: (ISTIO_SECURITY_GROUP, SECURITY_VERSIONS) for kind in security.SPECS},
    **extensions.GROUPS,
}

# Kubernetes Gateway API groups: their kinds (Gateway, HTTPRoute, GRPCRoute, ReferenceGrant,
# ...) are accepted and not translated, never taken for Istio's Gateway.
GATEWAY_API_GROUPS = frozenset({"gateway.networking.k8s.io", "gateway.networking.x-k8s.io"})

__all__ = [
    "GATEWAY_API_GROUPS",
    "ISTIO_NETWORKING_GROUP",
    "ISTIO_SECURITY_GROUP",
    "ISTIO_VERSIONS",
    "KIND_GROUPS",
    "SECURITY_VERSIONS",
    "SPECS",
    "Obj",
    "Type",
]
