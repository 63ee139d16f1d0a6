"""The local Envoy the translator generates configuration for, as the agent config describes it."""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.identity import WorkloadCertificate
from meshagent.model.sidecar import EgressProxy, IngressTls
from meshagent.model.telemetry import TelemetryProvider

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
OUTBOUND_TRAFFIC_POLICIES = (ALLOW_ANY, REGISTRY_ONLY)

# The kind of proxy (Istio's node type): a sidecar in front of local workloads, or a router
# (an ingress/egress gateway, `pilot-agent proxy router`) that serves Gateway resources.
SIDECAR = "sidecar"
ROUTER = "router"
PROXY_TYPES = (SIDECAR, ROUTER)


@dataclass(frozen=True, slots=True)
class TcpBinding:
    """A TCP service exposed to local applications on an explicit local address.

    HTTP ports get a listener per port automatically; TCP ports cannot be routed by Host, so
    each needs its own local address.
    """

    host: str
    port: int
    listen_address: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class InboundPort:
    """A port of a local workload: mesh traffic arrives on `port` (on the inbound address) and
    is forwarded to the application on 127.0.0.1:`target_port`."""

    port: int
    target_port: int
    protocol: str = "HTTP"
    name: str = ""
    # From a Sidecar's ingress[] (xds/translate/scope.py): the listener's address ("" = the
    # proxy's inbound address), where the application is ("" = 127.0.0.1; an IP, or
    # `unix://path`), and TLS termination with files (SIMPLE/MUTUAL) instead of mesh mTLS.
    bind: str = ""
    target_address: str = ""
    tls: IngressTls | None = None


@dataclass(frozen=True, slots=True)
class LocalWorkload:
    """A workload on this host that receives mesh traffic through the local Envoy."""

    name: str
    namespace: str
    service_account: str
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[InboundPort, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestBody:
    """includeRequestBodyInCheck: buffer the request body (up to max_request_bytes) and send
    it with the check; allow_partial_message sends what fits instead of answering 413."""

    max_request_bytes: int = 0
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


@dataclass(frozen=True, slots=True)
class ExtAuthzProvider:
    """An external authorizer that AuthorizationPolicies with action CUSTOM name (Istio's
    meshConfig.extensionProviders envoyExtAuthzHttp / envoyExtAuthzGrpc).

    `service` is a mesh service host, or Istio's `<namespace>/<host>`; the checks go through
    its outbound cluster `outbound|<port>||<host>`, so it must be in the mesh snapshot.
    kind "http": Envoy sends the request's headers (those in include_headers, where `x-*`
    and `*-y` are prefix and suffix patterns; Envoy's default set when empty) to
    path_prefix + the request path, and a 2xx answer allows; kind "grpc": Envoy's
    envoy.service.auth.v3.Authorization/Check. status_on_error None: Envoy's default (403).
    problem: why the entry is unusable (an invalid config); the CUSTOM policies naming it
    then deny the requests their rules match, as Istio does.
    """

    name: str
    kind: str  # "http" or "grpc"; "" when the entry is unusable (see problem)
    service: str = ""
    port: int = 0
    timeout_ms: int = 600_000  # Istio's default: 600 s
    fail_open: bool = False
    status_on_error: int | None = None
    path_prefix: str = ""
    include_headers: tuple[str, ...] = ()
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    additional_headers: tuple[tuple[str, str], ...] = ()  # includeAdditionalHeadersInCheck
    request_body: RequestBody | None = None  # includeRequestBodyInCheck
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """What the translator needs to know about the Envoy it configures.

    Outbound HTTP listeners bind `outbound_address`, on each service port plus port_offset,
    unless port_overrides maps that service port to another local port.
    """

    node_id: str
    cluster: str = "meshagent"
    namespace: str = "default"
    outbound_address: str = "127.0.0.1"
    port_offset: int = 0
    port_overrides: tuple[tuple[int, int], ...] = ()
    tcp_bindings: tuple[TcpBinding, ...] = ()
    # Security (filled by the agent from its config and the CA; empty means plaintext only).
    trust_domain: str = "cluster.local"
    inbound_address: str = "0.0.0.0"
    workloads: tuple[LocalWorkload, ...] = ()
    certificates: tuple[WorkloadCertificate, ...] = ()
    # Security policies in this namespace without a selector apply mesh-wide.
    root_namespace: str = "istio-system"
    # Multi-network: this proxy's network, and each network's east-west gateways
    # ((network, ((address, port), ...)), ...); endpoints elsewhere go through them.
    network: str = ""
    network_gateways: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    # CUSTOM AuthorizationPolicy providers (agent config `extension_providers`).
    extension_providers: tuple[ExtAuthzProvider, ...] = ()
    # meshConfig.trustDomainAliases (agent config `trust_domain_aliases`): principals in
    # AuthorizationPolicies also match these trust domains (see xds/translate/trust.py).
    trust_domain_aliases: tuple[str, ...] = ()
    # This proxy's locality, "region/zone/subzone" ("" = unknown): locality load balancing.
    locality: str = ""
    # Transparent mode (agent config `capture.enabled`): netfilter redirects the host's
    # traffic to virtualOutbound and virtualInbound, which replace the per-port loopback
    # and inbound listeners. outbound_traffic_policy is Istio's meshConfig
    # outboundTrafficPolicy.mode: ALLOW_ANY passes unknown destinations through,
    # REGISTRY_ONLY refuses them.
    capture: bool = False
    virtual_outbound_port: int = 15001
    virtual_inbound_port: int = 15006
    outbound_traffic_policy: str = ALLOW_ANY
    # Agent config `node.type` and `node.labels`: a router serves the Gateways whose selector
    # matches labels (Istio's ISTIO_METAJSON_LABELS); Sidecars select by the same labels.
    proxy_type: str = SIDECAR
    labels: tuple[tuple[str, str], ...] = ()
    # From the Sidecar that applies (xds/translate/scope.py): where unknown destinations go
    # under ALLOW_ANY instead of PassthroughCluster, and the address an egress listener
    # binds its port to instead of outbound_address ((service port, address), ...).
    egress_proxy: EgressProxy | None = None
    outbound_binds: tuple[tuple[int, str], ...] = ()

    def outbound_bind(self, service_port: int) -> str:
        """The address the outbound listener of service_port binds."""
        for port, address in self.outbound_binds:
            if port == service_port:
                return address
        return self.outbound_address
    # Whether the Envoy in use has a Wasm runtime (probed by the agent at start): WasmPlugins
    # are translated only then (xds/envoyfilter/wasm.py).
    wasm_runtime: bool = False
    # Telemetry (agent config `extension_providers` of the access log and tracing kinds, and
    # `default_providers`): what Telemetry resources name (xds/translate/telemetry.py).
    telemetry_providers: tuple[TelemetryProvider, ...] = ()
    default_access_logging: tuple[str, ...] = ()
    default_tracing: tuple[str, ...] = ()

    def outbound_port(self, service_port: int) -> int:
        for port, local in self.port_overrides:
            if port == service_port:
                return local
        return service_port + self.port_offset
