"""Patching a Cluster: CLUSTER MERGE and REMOVE (ADD is handled by the stage), as Istio's
cluster_patch.go. Cluster names are read as xds/names.py writes them
(`outbound|<port>|<subset>|<host>`, `inbound|<port>||`)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from meshagent.model.proxy import ProxySpec
from meshagent.xds.envoyfilter.listeners import Touched, value_of
from meshagent.xds.envoyfilter.merge import merge_any, merge_value
from meshagent.xds.envoyfilter.select import Applied, Plan, context_matches


def cluster_matches(applied: Applied, name: str, context: str) -> bool:
    patch = applied.patch
    if not context_matches(patch, context):
        return False
    match = patch.cluster
    if match is None:
        return True
    if match.name:
        return match.name == name
    # Istio's ParseSubsetKey: `outbound|<port>|<subset>|<host>`, or the SNI form
    # `outbound_.<port>_.<subset>_.<host>` (a gateway's AUTO_PASSTHROUGH clusters).
    srv = name.startswith(("outbound_.", "inbound_."))
    parts = name.split("_.", 3) if srv else name.split("|")
    if len(parts) != 4:
        return not (match.subset or match.service or match.port_number)
    _, port, subset, host = parts
    if match.subset and match.subset != subset:
        return False
    if match.service and match.service != host:
        return False
    return not match.port_number or str(match.port_number) == port


def _merge_transport_socket(cluster: cluster_pb2.Cluster, value: cluster_pb2.Cluster) -> bool:
    """Istio's mergeTransportSocketCluster; whether it handled the merge."""
    if not value.HasField("transport_socket"):
        return False
    wanted = value.transport_socket.name
    if cluster.transport_socket_matches:
        for found in cluster.transport_socket_matches:
            if found.transport_socket.name == wanted:
                merge_any(found.transport_socket.typed_config, value.transport_socket.typed_config)
                return True
        return True  # both a socket and socket matches would be invalid: dropped, as Istio
    if cluster.HasField("transport_socket") and cluster.transport_socket.name == wanted:
        merge_any(cluster.transport_socket.typed_config, value.transport_socket.typed_config)
    else:
        cluster.transport_socket.CopyFrom(value.transport_socket)
    return True


def patch_cluster(
    cluster: cluster_pb2.Cluster, plan: Plan, proxy: ProxySpec, context: str, touched: Touched
) -> bool:
    """Apply CLUSTER patches to cluster (in place); False when it is removed."""
    del proxy  # the match reads only the name (inbound clusters carry no host here)
    for applied in plan.of("CLUSTER"):
        operation = applied.patch.operation
        if not cluster_matches(applied, cluster.name, context):
            continue
        if operation == "REMOVE":
            touched.add(applied)
            return False
        if operation in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            value = value_of(applied.patch, cluster_pb2.Cluster)
            if not _merge_transport_socket(cluster, value):
                merge_value(operation, cluster, value)
            touched.add(applied)
    return True
