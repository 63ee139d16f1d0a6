"""Schemas of the Istio kinds the normalizer understands, keyed by kind."""

from __future__ import annotations

from collections.abc import Mapping

from meshagent.normalize.schema import destinationrule, serviceentry, virtualservice, workloadentry
from meshagent.normalize.schema.core import Obj, Type

ISTIO_NETWORKING_GROUP = "networking.istio.io"
ISTIO_VERSIONS = frozenset({"v1", "v1beta1", "v1alpha3"})

SPECS: Mapping[str, Obj] = {
    "ServiceEntry": serviceentry.SPEC,
    "WorkloadEntry": workloadentry.SPEC,
    "VirtualService": virtualservice.SPEC,
    "DestinationRule": destinationrule.SPEC,
}

__all__ = ["ISTIO_NETWORKING_GROUP", "ISTIO_VERSIONS", "SPECS", "Obj", "Type"]
