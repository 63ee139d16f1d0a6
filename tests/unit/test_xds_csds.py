"""CSDS answers from the cache's resources and status."""

from __future__ import annotations

from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2

from meshagent.xds.cache import SnapshotCache
from meshagent.xds.csds import client_status
from meshagent.xds.typeurls import CLUSTER, ENDPOINT
from tests.xds_builders import cla, eds_cluster, resource_set


def cache_with_states() -> SnapshotCache:
    cache = SnapshotCache()
    cache.set("vm-1", resource_set(clusters=[eds_cluster("a")], endpoints=[cla("a", 1)]))
    cache.set("vm-2", resource_set(clusters=[eds_cluster("b")]))
    cache.update_status("vm-1", lambda s: s.with_connected("delta"))
    cache.update_status("vm-1", lambda s: s.with_pushed(CLUSTER, "1", 1.0))
    cache.update_status("vm-1", lambda s: s.with_acked(CLUSTER, "1", 1.1))
    cache.update_status("vm-1", lambda s: s.with_pushed(ENDPOINT, "1", 1.0))
    cache.update_status("vm-1", lambda s: s.with_nacked(ENDPOINT, "1", "bad", 1.2))
    return cache


def test_every_node_and_resource_is_reported_with_its_types_state() -> None:
    reply = client_status(cache_with_states(), csds_pb2.ClientStatusRequest())

    assert [c.node.id for c in reply.config] == ["vm-1", "vm-2"]
    states = {(x.type_url, x.name): x.config_status for x in reply.config[0].generic_xds_configs}
    assert states == {(CLUSTER, "a"): csds_pb2.SYNCED, (ENDPOINT, "a"): csds_pb2.ERROR}
    [unsent] = reply.config[1].generic_xds_configs
    assert unsent.config_status == csds_pb2.NOT_SENT
    assert unsent.xds_config.type_url == CLUSTER


def test_node_matchers_and_excluded_contents() -> None:
    request = csds_pb2.ClientStatusRequest(
        node_matchers=[node_pb2.NodeMatcher(node_id={"exact": "vm-2"})],
        exclude_resource_contents=True,
    )
    reply = client_status(cache_with_states(), request)
    [client] = reply.config
    assert client.node.id == "vm-2"
    assert not client.generic_xds_configs[0].HasField("xds_config")
