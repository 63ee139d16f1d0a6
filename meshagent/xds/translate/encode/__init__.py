"""Envoy resources serialized without building protobuf messages: the translator's fast path.

The protobuf builders of translate/ (clusters.build_cluster, endpoints.build_load_assignment
and build_prioritized_assignment, routes.build_virtual_host and build_route_configuration)
are the one definition of each resource's shape. The encoders here produce the very bytes
of those builders' deterministic serialization, from fragments cut out of the builders'
own messages (wire.split_around) and field numbers read from descriptors;
tests/unit/test_encode_equivalence.py proves the bytes equal. The rest of the translator
uses only the names below (tests/unit/test_import_edges.py keeps it so).
"""

from __future__ import annotations

from meshagent.xds.translate.encode.cluster import ClusterTemplates
from meshagent.xds.translate.encode.endpoint import EndpointEncoder
from meshagent.xds.translate.encode.route import (
    WireVirtualHost,
    route_configuration_bytes,
    wire_virtual_host,
)

__all__ = [
    "ClusterTemplates",
    "EndpointEncoder",
    "WireVirtualHost",
    "route_configuration_bytes",
    "wire_virtual_host",
]
