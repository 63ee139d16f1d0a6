"""The internal mesh model: frozen, slotted dataclasses. No I/O, no protobuf, no YAML.

Only the normalizer builds these objects; everything else reads them.
"""

from meshagent.model.labels import NO_LABELS, Labels, labels_of, selector_matches
from meshagent.model.identity import Identity, WorkloadCertificate
from meshagent.model.proxy import InboundPort, LocalWorkload, ProxySpec, TcpBinding
from meshagent.model.routing import (
    CorsPolicy,
    Destination,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderMatch,
    HeaderOps,
    HttpMatch,
    HttpRoute,
    L4Match,
    MatchKind,
    Mirror,
    Redirect,
    Retry,
    Rewrite,
    StringMatch,
    TcpRoute,
    VirtualService,
    WeightedDestination,
)
from meshagent.model.services import Endpoint, Resolution, Service, ServicePort, Workload
from meshagent.model.snapshot import MeshSnapshot, SnapshotChanges, frozen_map
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent
from meshagent.model.traffic import (
    ClientTls,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    LoadBalancer,
    LocalityDistribute,
    LocalityLb,
    OutlierDetection,
    PortTrafficPolicy,
    Subset,
    TrafficPolicy,
)

__all__ = [
    "NO_LABELS", "ClientTls", "ConnectionPool", "ConsistentHash", "CorsPolicy", "Destination",
    "DestinationRule", "Diagnostic", "DirectResponse", "Endpoint", "Fault", "FaultAbort",
    "FaultDelay", "HeaderMatch", "Identity", "InboundPort", "LocalWorkload",
    "WorkloadCertificate", "HeaderOps", "HttpMatch", "HttpRoute", "L4Match", "Labels",
    "LoadBalancer", "LocalityDistribute", "LocalityLb", "MatchKind", "MeshSnapshot", "Mirror",
    "OutlierDetection", "PortTrafficPolicy", "Provenance", "ProxySpec", "RawResource",
    "Redirect", "Resolution", "Retry", "Rewrite", "Service", "ServicePort", "SnapshotChanges",
    "SourceEvent", "StringMatch", "Subset", "TcpBinding", "TcpRoute", "TrafficPolicy",
    "VirtualService", "WeightedDestination", "Workload", "frozen_map", "labels_of",
    "selector_matches",
]
