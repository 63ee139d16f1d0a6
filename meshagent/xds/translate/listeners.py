"""Outbound listeners on the proxy's loopback address.

HTTP: one listener per service port number, routing by Host through RDS. Every HTTP listener
carries the fault, CORS and router filters whether or not a route uses them (as Istio's), so
that adding a fault or CORS policy only changes routes and never drains a listener. Unlike
Istio's, fault and CORS are disabled by default: a route's typed_per_filter_config (its fault
or CORS policy) enables them for that route, and the requests of other routes never enter them
(running them cost 1-2 µs of Envoy CPU per request, 3-6% of a minimal proxy's; README "What the
generated config costs per request").
TCP: only where the agent config binds a (host, port) to a local address (TcpBinding), since a
TCP stream carries no host name to route on.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.telemetry import NO_TELEMETRY, ListenerTelemetry


def _listener(name: str, address: str, port: int) -> Listener:
    out = Listener(name=name)
    socket = out.address.socket_address
    socket.address = address
    # A negative port (service port + a negative outbound.port_offset) cannot be encoded: it
    # stays 0, which the consistency check (xds/consistency.py) reports with the listener.
    socket.port_value = max(port, 0)
    return out


def _http_filters() -> list[hcm.HttpFilter]:
    # The router must come last: it ends the filter chain by forwarding the request.
    fault, cors = protos.packed(fault_pb2.HTTPFault()), protos.packed(cors_pb2.Cors())
    return [
        hcm.HttpFilter(name=protos.FAULT_FILTER, typed_config=fault, disabled=True),
        hcm.HttpFilter(name=protos.CORS_FILTER, typed_config=cors, disabled=True),
        hcm.HttpFilter(name=protos.ROUTER_FILTER, typed_config=protos.packed(router_pb2.Router())),
    ]


def http_connection_manager(
    address: str, local_port: int, port: int, telemetry: ListenerTelemetry = NO_TELEMETRY
) -> hcm.HttpConnectionManager:
    """The HCM of an outbound HTTP listener: routes for port over RDS, websockets allowed,
    with telemetry's access logs and tracing."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=names.http_stat_prefix(address, local_port),
        http_filters=_http_filters(),
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    manager.rds.route_config_name = names.route_name(port)
    manager.rds.config_source.CopyFrom(protos.ADS_CONFIG_SOURCE)
    telemetry.apply_http(manager)
    return manager


def build_http_listener(
    address: str, local_port: int, port: int, telemetry: ListenerTelemetry = NO_TELEMETRY
) -> Listener:
    """An outbound HTTP listener on address:local_port for the services on port."""
    out = _listener(names.listener_name(address, local_port), address, local_port)
    chain = out.filter_chains.add()
    chain.filters.append(
        listener_components_pb2.Filter(
            name=protos.HTTP_CONNECTION_MANAGER,
            typed_config=protos.packed(
                http_connection_manager(address, local_port, port, telemetry)
            ),
        )
    )
    return out


def tcp_proxy(
    stat_prefix: str,
    clusters: list[tuple[str, int]],
    telemetry: ListenerTelemetry = NO_TELEMETRY,
) -> tcp_proxy_pb2.TcpProxy:
    """A tcp_proxy to one cluster, or split by weight across several, with telemetry's
    access logs."""
    out = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    telemetry.apply_tcp(out)
    if len(clusters) == 1:
        out.cluster = clusters[0][0]
        return out
    for name, weight in clusters:
        out.weighted_clusters.clusters.add(name=name, weight=weight)
    return out


def build_tcp_listener(
    address: str,
    port: int,
    stat_prefix: str,
    clusters: list[tuple[str, int]],
    telemetry: ListenerTelemetry = NO_TELEMETRY,
) -> Listener:
    """A listener on address:port that proxies TCP to clusters (name, weight)."""
    out = _listener(names.listener_name(address, port), address, port)
    chain = out.filter_chains.add()
    chain.filters.append(
        listener_components_pb2.Filter(
            name=protos.TCP_PROXY,
            typed_config=protos.packed(tcp_proxy(stat_prefix, clusters, telemetry)),
        )
    )
    return out
