"""Every Envoy resource name meshagent generates, in one place.

Names follow Istio's conventions so that people who know `istioctl proxy-config` can read
`meshagent` config dumps without a glossary. Nothing else in the translator formats a name.
"""

from __future__ import annotations

OUTBOUND = "outbound"
INBOUND = "inbound"


def cluster_name(port: int, host: str, subset: str = "") -> str:
    """The outbound cluster for one port (and optionally one subset) of a host.

    `outbound|<port>|<subset>|<host>`; the subset part is empty for the whole service.
    """
    return f"{OUTBOUND}|{port}|{subset}|{host}"


def inbound_cluster_name(port: int) -> str:
    """The cluster that delivers inbound traffic to the local application on port."""
    return f"{INBOUND}|{port}||"


def listener_name(address: str, port: int) -> str:
    """A listener bound to address:port, `<address>_<port>` as Istio names them."""
    return f"{address}_{port}"


def route_name(port: int) -> str:
    """The RouteConfiguration for all HTTP services on a port: the port number, like Istio."""
    return str(port)


def virtual_host_name(host: str, port: int) -> str:
    """The virtual host of one service host within the route configuration of port."""
    return f"{host}:{port}"


def http_stat_prefix(address: str, port: int) -> str:
    """Stat prefix of the HTTP connection manager of an outbound listener."""
    return f"{OUTBOUND}_{address}_{port}"


def tcp_stat_prefix(cluster: str) -> str:
    """Stat prefix of a tcp_proxy filter: the cluster it proxies to, as Istio does."""
    return cluster


def default_route_name() -> str:
    """The name of the catch-all route of a virtual host that no VirtualService shapes."""
    return "default"


def http_route_name(route: str, match: str) -> str:
    """An Envoy route's name from a VirtualService HTTP route name and its match name."""
    if route and match:
        return f"{route}.{match}"
    return route or match


# -- transparent mode (capture): Istio's names ------------------------------------------

VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
PASSTHROUGH_FILTER_CHAIN = "PassthroughFilterChain"
ALLOW_ANY_VIRTUAL_HOST = "allow_any"
BLOCK_ALL_VIRTUAL_HOST = "block_all"


def outbound_chain_name(port: int) -> str:
    """virtualOutbound's chain for the HTTP services of a port, named like their listener
    in Istio (`0.0.0.0_<port>`)."""
    return listener_name("0.0.0.0", port)


# -- security (SDS, inbound, RBAC) -------------------------------------------------------

DEFAULT_SECRET = "default"
ROOTCA_SECRET = "ROOTCA"


def identity_secret_name(spiffe_id: str) -> str:
    """The key-and-chain secret of one identity when a proxy serves several: its SPIFFE URI."""
    return spiffe_id


def inbound_listener_name(address: str, port: int) -> str:
    """The inbound listener of a workload port: `inbound_<address>_<port>`."""
    return f"{INBOUND}_{address}_{port}"


def inbound_stat_prefix(port: int) -> str:
    """Stat prefix of an inbound HTTP connection manager or tcp_proxy (its cluster's name)."""
    return inbound_cluster_name(port)


def inbound_route_name(port: int) -> str:
    """The inline route configuration of an inbound HTTP listener."""
    return f"{INBOUND}|{port}"


def outbound_sni(port: int, subset: str, host: str) -> str:
    """The SNI of mesh mTLS toward a cluster, as Istio spells it."""
    return f"outbound_.{port}_.{subset}_.{host}"


def rbac_policy_name(namespace: str, policy: str, rule: int) -> str:
    """An Envoy RBAC policy for one rule of an AuthorizationPolicy, named like Istio's."""
    return f"ns[{namespace}]-policy[{policy}]-rule[{rule}]"


def jwks_cluster_name(host: str, port: int) -> str:
    """The cluster Envoy fetches a RequestAuthentication's remote JWKS (jwksUri) through."""
    return f"jwks|{host}|{port}"


def jwt_provider_name(index: int) -> str:
    """The n-th JWT provider of one inbound jwt_authn filter (Istio's `origins-<n>`)."""
    return f"origins-{index}"


CREDENTIAL_PREFIX = "kubernetes://"
CA_CREDENTIAL_SUFFIX = "-cacert"


def credential_secret_name(credential_name: str) -> str:
    """The SDS secret of a credentialName's certificate and key, as Istio names it."""
    return f"{CREDENTIAL_PREFIX}{credential_name}"


def credential_ca_secret_name(credential_name: str) -> str:
    """The SDS secret (a validation context) of a credentialName's CA bundle, as Istio names it."""
    return f"{CREDENTIAL_PREFIX}{credential_name}{CA_CREDENTIAL_SUFFIX}"


# -- gateways (a router proxy): Istio's names --------------------------------------------

GATEWAY_WILDCARD_ADDRESS = "0.0.0.0"


def gateway_listener_name(bind: str, port: int) -> str:
    """A gateway's listener on its real port: `0.0.0.0_<port>`, or `<bind>_<port>`."""
    return listener_name(bind or GATEWAY_WILDCARD_ADDRESS, port)


def gateway_http_route_name(port: int, bind: str = "") -> str:
    """The RouteConfiguration shared by a gateway port's plain HTTP servers: `http.<port>`
    (`http.<port>.<bind>` for a server with a bind address)."""
    return f"http.{port}.{bind}" if bind else f"http.{port}"


def gateway_https_route_name(
    port: int, port_name: str, gateway: str, namespace: str, bind: str = ""
) -> str:
    """The RouteConfiguration of one HTTPS server that terminates TLS:
    `https.<port>.<portName>.<gateway>.<namespace>` (then `.<bind>` with a bind address)."""
    name = f"https.{port}.{port_name}.{gateway}.{namespace}"
    return f"{name}.{bind}" if bind else name


def gateway_blackhole_virtual_host_name(port: int) -> str:
    """The virtual host of a gateway route configuration that no VirtualService binds: every
    request gets 404, as in Istio."""
    return virtual_host_name("blackhole", port)
