"""MeshSnapshot: the whole mesh at one moment, immutable.

The normalizer builds a new snapshot for every change, reusing every model object that did
not change, so consumers may cache by object identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from meshagent.model.credentials import Credential
from meshagent.model.extensions import EnvoyFilter, WasmPlugin
from meshagent.model.gateway import Gateway
from meshagent.model.routing import VirtualService
from meshagent.model.security import AuthzPolicy, PeerAuthn, RequestAuthn
from meshagent.model.services import Endpoint, Service, Workload
from meshagent.model.sidecar import Sidecar
from meshagent.model.telemetry import Telemetry
from meshagent.model.traffic import DestinationRule

K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V]) -> Mapping[K, V]:
    """A read-only view of a fresh copy of items."""
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class SnapshotChanges:
    """What differs between the snapshot at base_version and the one at version.

    Each set names the keys (as in the MeshSnapshot maps) whose value was added, replaced by
    another object, or removed: services and endpoints by host, virtual_services, gateways
    and workloads by "namespace/name", destination_rules by host pattern. A key not named holds
    the very same object in both snapshots. Filled in by the normalizer; a consumer that last
    saw another version must ignore it and compare the snapshots itself.
    """

    base_version: int
    version: int
    services: frozenset[str] = frozenset()
    endpoints: frozenset[str] = frozenset()
    virtual_services: frozenset[str] = frozenset()
    destination_rules: frozenset[str] = frozenset()
    workloads: frozenset[str] = frozenset()
    gateways: frozenset[str] = frozenset()

    def applies(self, base: MeshSnapshot | None, snapshot: MeshSnapshot) -> bool:
        """Whether these changes lead from base to snapshot (as far as versions tell)."""
        return (
            base is not None
            and base.version == self.base_version
            and snapshot.version == self.version
        )


@dataclass(frozen=True, slots=True)
class MeshSnapshot:
    """The mesh: every mapping is read-only and must not be altered.

    services: by host. endpoints: by host, the instances of that service (workload-selected
    ones resolved). destination_rules: by host (exact or wildcard), the one rule that applies.
    virtual_services: by "namespace/name". workloads: by "namespace/name".
    workload_destination_rules: DestinationRules with a workloadSelector, by "namespace/name".
    changes: what differs from the previous snapshot, when its producer knows (None: unknown,
    compare the maps). Not part of equality. Whoever derives a snapshot from another (e.g.
    dataclasses.replace) must also give it a new version or reset changes to None.
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
    # DestinationRules with a workloadSelector, by "namespace/name": they apply only to the
    # proxies of the workloads they select (xds/translate/context.py), not mesh-wide.
    workload_destination_rules: Mapping[str, DestinationRule] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # Security policy by "namespace/name" (meshagent.model.security).
    peer_authentications: Mapping[str, PeerAuthn] = field(
        default_factory=lambda: MappingProxyType({})
    )
    authorization_policies: Mapping[str, AuthzPolicy] = field(
        default_factory=lambda: MappingProxyType({})
    )
    request_authentications: Mapping[str, RequestAuthn] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # TLS credentials named by credentialName, by "namespace/name" (model/credentials.py).
    credentials: Mapping[str, Credential] = field(default_factory=lambda: MappingProxyType({}))
    # Gateways (model/gateway.py) by "namespace/name": what router proxies serve.
    gateways: Mapping[str, Gateway] = field(default_factory=lambda: MappingProxyType({}))
    # Sidecar resources by "namespace/name" (model/sidecar.py; xds/translate/scope.py picks
    # the one that applies to a proxy).
    sidecars: Mapping[str, Sidecar] = field(default_factory=lambda: MappingProxyType({}))
    # EnvoyFilters and WasmPlugins by "namespace/name" (model/extensions.py): the patch stage
    # after translation applies them (meshagent.xds.envoyfilter).
    envoy_filters: Mapping[str, EnvoyFilter] = field(default_factory=lambda: MappingProxyType({}))
    wasm_plugins: Mapping[str, WasmPlugin] = field(default_factory=lambda: MappingProxyType({}))
    # Telemetry resources by "namespace/name" (model/telemetry.py).
    telemetries: Mapping[str, Telemetry] = field(default_factory=lambda: MappingProxyType({}))
    changes: SnapshotChanges | None = field(default=None, compare=False, repr=False)

    def destination_rule_for(self, host: str) -> DestinationRule | None:
        """The rule for host: an exact match first, else the longest matching wildcard."""
        rule = self.destination_rules.get(host)
        if rule is not None:
            return rule
        best: DestinationRule | None = None
        for pattern, candidate in self.destination_rules.items():
            wider = pattern.startswith("*") and host.endswith(pattern[1:])
            if wider and (best is None or len(pattern) > len(best.host)):
                best = candidate
        return best
