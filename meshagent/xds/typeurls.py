"""Type URLs of the xDS resources meshagent serves, and the order it pushes them in."""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Make-before-break: a cluster exists (and warms with its endpoints) before a listener or
# route points at it; secrets come first so that clusters and listeners using them warm.
PUSH_ORDER: tuple[str, ...] = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)

# In state-of-the-world, a missing Listener or Cluster means "deleted"; endpoints, routes and
# secrets are only ever requested by name.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
    SECRET: "sds",
}
