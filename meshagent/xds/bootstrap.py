"""The Envoy bootstrap that points the local Envoy at the agent's ADS server.

Everything else (clusters, listeners, routes, endpoints, secrets) comes over ADS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshagent.errors import ConfigError
from meshagent.model.limits import RE2_MAX_PROGRAM_SIZE
from meshagent.xds.stats_tags import host_suffixes, stats_config

XDS_CLUSTER = "meshagent-xds"
# How fast Envoy redials the agent after the ADS stream breaks. Envoy's default (jittered
# exponential from 0.5 s up to 30 s) leaves a proxy without updates for up to half a minute
# after a longer agent outage; the agent is local, so a redial every second at most is cheap.
ADS_RETRY_BASE = "0.1s"
ADS_RETRY_MAX = "1s"

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def build_bootstrap(
    *,
    node_id: str,
    cluster: str,
    xds_uds_path: str | None = None,
    xds_tcp: tuple[str, int] | None = None,
    admin_address: str = "127.0.0.1",
    admin_port: int = 15000,
    delta: bool = True,
    metadata: Mapping[str, str] | None = None,
    stats_host_suffixes: Sequence[str] | None = None,
    stats_matcher: Mapping[str, Any] | None = None,
    deferred_stats: bool = False,
) -> dict[str, Any]:
    """A JSON-able Envoy v3 bootstrap using ADS (delta by default) from the agent.

    Exactly one of `xds_uds_path` (the default deployment: a Unix socket) and `xds_tcp`
    (host, port) must be given. `stats_host_suffixes`: where mesh host names end, for the
    `cluster_name` stats tag (default: `svc.cluster.local`; see `xds/stats_tags.py`).
    `stats_matcher`: which statistics Envoy keeps (None: all; see `stats_tags.preset_matcher`).
    `deferred_stats`: Envoy makes a cluster's traffic statistics (upstream_rq_*, upstream_cx_*,
    ...) at the cluster's first use instead of with the cluster. Each statistic Envoy makes
    runs the `cluster_name` tag regex (std::regex, see stats_tags.py): with all kept, that was
    most of Envoy's time applying a first CDS response (issue 17: 4,000 clusters 7.2 s,
    2.4 s deferred).
    """
    if not node_id or not cluster:
        raise ConfigError("Envoy bootstrap needs a node id and a cluster", field="node")
    if (xds_uds_path is None) == (xds_tcp is None):
        raise ConfigError("give exactly one of xds_uds_path and xds_tcp", field="xds")
    node: dict[str, Any] = {"id": node_id, "cluster": cluster}
    if metadata:
        node["metadata"] = dict(metadata)
    bootstrap: dict[str, Any] = {
        "node": node,
        "dynamic_resources": _dynamic_resources(delta),
        "static_resources": {"clusters": [_xds_cluster(xds_uds_path, xds_tcp)]},
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}},
            "access_log": [_null_access_log()],
        },
        "layered_runtime": _layered_runtime(),
        "stats_config": stats_config(
            host_suffixes("cluster.local") if stats_host_suffixes is None else stats_host_suffixes,
            stats_matcher,
        ),
        # Envoy's periodic stats flush (every 5 s) snapshots every statistic on its main
        # thread, the one that applies xDS: at 40k clusters with every statistic kept, 0.6 s
        # of CPU each time, and an update arriving meanwhile waits for it. With no stats sink
        # to feed, flushing when the admin API is asked for statistics loses nothing but the
        # histograms' freshness (one query behind). A BOOTSTRAP patch that sets
        # stats_flush_interval or adds stats_sinks brings the timer back (envoyfilter/bootstrap).
        "stats_flush_on_admin": True,
    }
    if deferred_stats:
        bootstrap["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    return bootstrap


def _layered_runtime() -> dict[str, Any]:
    """Runtime as Istio's bootstrap sets it: regexes up to the RE2 program size validation
    allows (Envoy's default, 100, rejects e.g. `^/blobs/sha256:[0-9a-f]{64}$`), and an admin
    layer so that `/runtime_modify` works."""
    static = {"re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE}
    return {
        "layers": [
            {"name": "global config", "static_layer": static},
            {"name": "admin", "admin_layer": {}},
        ]
    }


def _dynamic_resources(delta: bool) -> dict[str, Any]:
    from_ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "ads_config": {
            "api_type": "DELTA_GRPC" if delta else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [
                {
                    "envoy_grpc": {
                        "cluster_name": XDS_CLUSTER,
                        # Read by Envoy for xDS streams only: the reconnection backoff.
                        "retry_policy": {
                            "retry_back_off": {
                                "base_interval": ADS_RETRY_BASE,
                                "max_interval": ADS_RETRY_MAX,
                            }
                        },
                    }
                }
            ],
            # The node never changes on a stream; sending it once keeps requests small.
            "set_node_on_first_message_only": True,
        },
        "cds_config": from_ads,
        "lds_config": dict(from_ads),
    }


def _xds_cluster(uds_path: str | None, tcp: tuple[str, int] | None) -> dict[str, Any]:
    if uds_path is not None:
        address: dict[str, Any] = {"pipe": {"path": uds_path}}
    else:
        assert tcp is not None  # checked by build_bootstrap
        address = {"socket_address": {"address": tcp[0], "port_value": tcp[1]}}
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # A dead agent is noticed within seconds, not at the next TCP timeout.
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        },
    }


def _null_access_log() -> dict[str, Any]:
    log_type = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": f"type.googleapis.com/{log_type}", "path": "/dev/null"},
    }
