"""MeshSnapshot: the whole mesh at one moment, immutable.

The normalizer builds a new snapshot for every change, reusing every model object that did
not change, so consumers may cache by object identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from meshagent.model.routing import VirtualService
from meshagent.model.services import Endpoint, Service, Workload
from meshagent.model.traffic import DestinationRule



K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only view of a fresh copy of items."""
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """The mesh: every mapping is read-only and must not be altered.

    services: by host. endpoints: by host, the instances of that service (workload-selected
    ones resolved). destination_rules: by host (exact or wildcard), the one rule that applies.
    virtual_services: by "namespace/name". workloads: by "namespace/name".
    """

    version: int = 0
    services: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    virtual_services: Mapping[str, VirtualService] = field(
        default_factory=lambda: MappingProxyType({})
    )
    destination_rules: Mapping[str, DestinationRule] = field(
        default_factory=lambda: MappingProxyType({})
    )
    workloads: Mapping[str, Workload] = field(default_factory=lambda: MappingProxyType({}))

    def destination_rule_for(self, host: str) -> DestinationRule | None:
        """The rule for host: an exact match first, else the longest matching wildcard."""
        rule = self.destination_rules.get(host)
        if rule is not None:
            return rule
        best: DestinationRule | None = None
        for pattern, candidate in self.destination_rules.items():
            if pattern.startswith("*") and host.endswith(pattern[1:]):
                if best is None or len(pattern) > len(best.host):
                    best = candidate
        return best
