"""Schemas of the Istio kinds the normalizer understands, keyed by kind."""

from __future__ import annotations

from collections.abc import Mapping

from meshagent.normalize.schema import (
    destinationrule,
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
    **gateway.SPECS,  # validated, not translated yet (see schema/gateway.py)
}

ISTIO_SECURITY_GROUP = "security.istio.io"
SECURITY_VERSIONS = frozenset({"v1", "v1beta1"})

# kind -> (API group, versions) for every kind in SPECS.
KIND_GROUPS: Mapping[str, tuple[str, frozenset[str]]] = {
    kind: (ISTIO_SECURITY_GROUP, SECURITY_VERSIONS)
    if kind in security.SPECS
    else (ISTIO_NETWORKING_GROUP, ISTIO_VERSIONS)
    for kind in SPECS
}

__all__ = [
    "ISTIO_NETWORKING_GROUP",
    "ISTIO_SECURITY_GROUP",
    "ISTIO_VERSIONS",
    "KIND_GROUPS",
    "SECURITY_VERSIONS",
    "SPECS",
    "Obj",
    "Type",
]
