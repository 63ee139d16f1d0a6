"""Small Envoy resources for xDS tests: just enough to exercise CDS, EDS, LDS and RDS."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from meshagent.xds import typeurls
from meshagent.xds.resources import Resource, ResourceSet


def eds_cluster(name: str, *, timeout_ms: int = 1000, service_name: str = "") -> Resource:
    """An EDS cluster fed over ADS. A negative timeout makes a cluster Envoy rejects."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.connect_timeout.FromMilliseconds(timeout_ms)
    cluster.eds_cluster_config.eds_config.ads.SetInParent()
    cluster.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    if service_name:
        cluster.eds_cluster_config.service_name = service_name
    return Resource.pack(name, cluster)


def cla(name: str, port: int, host: str = "127.0.0.1") -> Resource:
    """A ClusterLoadAssignment with one endpoint."""
    endpoint = endpoint_components_pb2.LbEndpoint()
    socket = endpoint.endpoint.address.socket_address
    socket.address, socket.port_value = host, port
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
    )
    return Resource.pack(name, assignment)


def http_listener(name: str, port: int, route_name: str, host: str = "127.0.0.1") -> Resource:
    """An HTTP listener whose routes come over RDS (ADS) as `route_name`."""
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = config_source_pb2.V3
    hcm.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    packed = any_pb2.Any()
    packed.Pack(hcm)
    chain = listener_components_pb2.FilterChain()
    chain.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=packed)
    listener = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
        ),
        filter_chains=[chain],
    )
    return Resource.pack(name, listener)


def route_config(name: str, body: str = "hello", upstream: str = "") -> Resource:
    """Routes: "/up" to the `upstream` cluster (when given), anything else a direct 200 `body`."""
    host = route_components_pb2.VirtualHost(name="all", domains=["*"])
    if upstream:
        up = host.routes.add()
        up.match.prefix = "/up"
        up.route.cluster = upstream
    direct = host.routes.add()
    direct.match.prefix = "/"
    direct.direct_response.status = 200
    direct.direct_response.body.inline_string = body
    return Resource.pack(name, route_pb2.RouteConfiguration(name=name, virtual_hosts=[host]))


def resource_set(
    clusters: list[Resource] | None = None,
    endpoints: list[Resource] | None = None,
    listeners: list[Resource] | None = None,
    routes: list[Resource] | None = None,
) -> ResourceSet:
    """A ResourceSet from lists of resources per type."""
    return ResourceSet.build(
        {
            typeurls.CLUSTER: clusters or [],
            typeurls.ENDPOINT: endpoints or [],
            typeurls.LISTENER: listeners or [],
            typeurls.ROUTE: routes or [],
        }
    )
