"""Constructors for protobuf well-known types and Envoy extension names used by the generators.

Kept apart so that each builder reads as Envoy configuration, not as protobuf plumbing.
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

# Extension names Envoy looks up in typed_config / typed_per_filter_config.
HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
ROUTER_FILTER = "envoy.filters.http.router"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"

# Istio's default connect timeout for outbound clusters.
DEFAULT_CONNECT_TIMEOUT_MS = 10_000

MAX_UINT32 = 2**32 - 1


def duration(ms: int) -> duration_pb2.Duration:
    """A Duration of whole milliseconds."""
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def packed(message: Message) -> any_pb2.Any:
    """message packed into an Any (for typed_config fields)."""
    out = any_pb2.Any()
    out.Pack(message)
    return out


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    """A UInt32Value wrapper."""
    return wrappers_pb2.UInt32Value(value=value)


def fractional_percent(percent: float) -> percent_pb2.FractionalPercent:
    """percent (0..100, fractions allowed) as parts per million, the finest Envoy offers."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * 10_000),
        denominator=percent_pb2.FractionalPercent.MILLION,
    )


def _ads_config_source(*, wait_forever: bool) -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )
    if wait_forever:
        source.initial_fetch_timeout.SetInParent()  # 0s: no timeout
    return source


# "Over the same ADS stream, xDS v3, no initial fetch timeout", as Istio for EDS and RDS: a
# cluster (listener) waits for its endpoints (routes) however long Envoy takes to get to them.
# With Envoy's default of 15 s, a first load of tens of thousands of clusters, which Envoy
# alone needs longer than that to apply, left every cluster warm with no endpoints.
# Shared by every EDS cluster and RDS listener: copy it into place (CopyFrom), never mutate
# it. Built once because it is on the hot path.
ADS_CONFIG_SOURCE = _ads_config_source(wait_forever=True)
# Secrets keep Envoy's default timeout, as Istio's credentialName SDS: a listener or cluster
# whose secret does not come must not be held back for good.
SDS_CONFIG_SOURCE = _ads_config_source(wait_forever=False)
