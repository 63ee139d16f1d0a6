"""Inbound: a listener per local workload port that terminates mesh mTLS, checks RBAC and
forwards to the application on 127.0.0.1, plus the `inbound|<port>||` clusters behind them.

PeerAuthentication decides the filter chains: STRICT accepts only mTLS; PERMISSIVE sniffs the
first bytes (tls_inspector) and has a TLS chain and a plaintext chain; DISABLE is plaintext.
Precedence as in Istio: a policy selecting the workload, then the namespace's, then the
mesh-wide one (root namespace); portLevelMtls overrides per port (matched against the
application's port, target_port, then the listener port); UNSET inherits; the default is
PERMISSIVE. Without certificates, PERMISSIVE serves plaintext only (there is no TLS to offer);
STRICT still asks for its secrets, so the listener does not accept anything until they come.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from meshagent.errors import ConfigError
from meshagent.model import InboundPort, LocalWorkload, MeshSnapshot, ProxySpec
from meshagent.model.security import AuthzPolicy, MtlsMode, PeerAuthn
from meshagent.model.sidecar import UNIX_PREFIX
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate import ext_authz, protos
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.generators import identical, keep_unchanged
from meshagent.xds.translate.ingress_tls import ingress_transport_socket
from meshagent.xds.translate.jwt import jwt_filter_for
from meshagent.xds.translate.listeners import tcp_proxy
from meshagent.xds.translate.rbac import RbacFilter, rbac_by_action
from meshagent.xds.translate.secrets import certificate_secret_name, sds_config
from meshagent.xds.translate.selection import applicable, applies, is_http, is_sniffed
from meshagent.xds.translate.telemetry import (
    NO_TELEMETRY,
    ListenerTelemetry,
    server_telemetry,
    telemetry_inputs,
)
from meshagent.xds.translate.trust import trust_bundle

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
# What the http_inspector reports for plaintext HTTP (Istio's sniffing chains match these).
SNIFFED_HTTP = ("http/1.1", "h2c")
# What the inbound TLS side offers; mesh clients offer "istio" (no overlap: no ALPN, and the
# HTTP connection manager detects HTTP/1.1 or HTTP/2 from the first bytes).
INBOUND_ALPN = ("h2", "http/1.1")
# Where Envoy's connections to local applications come from under capture (Istio's choice;
# the capture rules let it through to the application without redirecting it again).
INBOUND_SOURCE_ADDRESS = "127.0.0.6"
INBOUND_SOURCE_ADDRESS_V6 = "::6"  # the same for IPv6 (capture puts it on lo with --dual-stack)


def _oldest_first(policies: Sequence[PeerAuthn]) -> list[PeerAuthn]:
    # Istio picks the oldest of several; files carry no creation time, so the name decides.
    return sorted(policies, key=lambda p: (p.namespace, p.name))


def mtls_mode(
    snapshot: MeshSnapshot, proxy: ProxySpec, w: LocalWorkload, p: InboundPort
) -> MtlsMode:
    """The effective mTLS mode of one workload port (see the module docstring)."""
    found = [
        pa for pa in snapshot.peer_authentications.values() if applies(pa, w, proxy.root_namespace)
    ]
    own = _oldest_first([pa for pa in found if pa.selector and pa.namespace == w.namespace])
    ns = _oldest_first([pa for pa in found if not pa.selector and pa.namespace == w.namespace])
    mesh = _oldest_first([pa for pa in found if not pa.selector and pa.namespace != w.namespace])
    layers: list[MtlsMode] = []
    if own:
        levels = dict(own[0].port_level)
        layers += [levels.get(p.target_port, levels.get(p.port, MtlsMode.UNSET)), own[0].mode]
    layers += [x[0].mode for x in (ns, mesh) if x]
    return next((MtlsMode(m) for m in layers if m != MtlsMode.UNSET), MtlsMode.PERMISSIVE)


def authz_policies(
    snapshot: MeshSnapshot, proxy: ProxySpec, workload: LocalWorkload
) -> list[AuthzPolicy]:
    """The AuthorizationPolicies that apply to workload, sorted by namespace and name."""
    return applicable(snapshot.authorization_policies, proxy, workload)


def _downstream_tls(secret: str) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds_config(secret)],
        alpn_protocols=INBOUND_ALPN,
    )
    combined = common.combined_validation_context
    combined.default_validation_context.CopyFrom(common_pb2.CertificateValidationContext())
    combined.validation_context_sds_secret_config.CopyFrom(sds_config(names.ROOTCA_SECRET))
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def _http_filters(
    rbacs: list[RbacFilter],
    authn: hcm.HttpFilter | None = None,
    custom: Sequence[hcm.HttpFilter] = (),
) -> list[hcm.HttpFilter]:
    # JWT authentication first: it puts the token's payload where RBAC's matchers read it.
    filters = [] if authn is None else [authn]
    filters += custom
    filters += [
        hcm.HttpFilter(name=HTTP_RBAC, typed_config=protos.packed(f.http_config())) for f in rbacs
    ]
    router = protos.packed(router_pb2.Router())
    return [*filters, hcm.HttpFilter(name=protos.ROUTER_FILTER, typed_config=router)]


def _inbound_route(port: InboundPort) -> route_pb2.RouteConfiguration:
    route = rc.Route(match=rc.RouteMatch(prefix="/"), name="default")
    route.route.cluster = names.inbound_cluster_name(port.port)
    route.route.timeout.CopyFrom(protos.duration(0))  # long requests: the app decides
    vhost = rc.VirtualHost(name=names.inbound_route_name(port.port), domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(
        name=names.inbound_route_name(port.port), virtual_hosts=[vhost]
    )


def _http_manager(
    port: InboundPort,
    rbacs: list[RbacFilter],
    authn: hcm.HttpFilter | None = None,
    custom: Sequence[hcm.HttpFilter] = (),
    telemetry: ListenerTelemetry = NO_TELEMETRY,
) -> lc.Filter:
    manager = hcm.HttpConnectionManager(
        stat_prefix=names.inbound_stat_prefix(port.port),
        route_config=_inbound_route(port),
        http_filters=_http_filters(rbacs, authn, custom),
        # The app learns who called: XFCC with the peer's SPIFFE URI, set by us alone.
        forward_client_cert_details=hcm.HttpConnectionManager.SANITIZE_SET,
        set_current_client_cert_details=hcm.HttpConnectionManager.SetCurrentClientCertDetails(
            uri=True
        ),
        upgrade_configs=[hcm.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )
    telemetry.apply_http(manager)
    return lc.Filter(name=protos.HTTP_CONNECTION_MANAGER, typed_config=protos.packed(manager))


def _tcp_filters(
    port: InboundPort, rbacs: list[RbacFilter], telemetry: ListenerTelemetry = NO_TELEMETRY
) -> list[lc.Filter]:
    prefix = names.inbound_stat_prefix(port.port)
    out = [
        lc.Filter(name=NETWORK_RBAC, typed_config=protos.packed(f.network_config(prefix)))
        for f in rbacs
    ]
    cluster = names.inbound_cluster_name(port.port)
    proxy = tcp_proxy(prefix, [(cluster, 100)], telemetry)
    return [*out, lc.Filter(name=protos.TCP_PROXY, typed_config=protos.packed(proxy))]


def _chain(filters: list[lc.Filter], tls_secret: str | None, match: str) -> lc.FilterChain:
    chain = lc.FilterChain(filters=filters)
    if match:
        chain.filter_chain_match.transport_protocol = match
    if tls_secret is not None:
        chain.transport_socket.CopyFrom(_downstream_tls(tls_secret))
    return chain


def inbound_chains(
    ctx: Context, workload: LocalWorkload, port: InboundPort
) -> list[lc.FilterChain]:
    """The filter chains of one workload port. A chain matching a transport protocol needs the
    tls_inspector listener filter, one matching application protocols the http_inspector
    (see listener_filters_for)."""
    proxy = ctx.proxy
    if port.tls is not None and port.tls.mode in ("SIMPLE", "MUTUAL"):
        # A Sidecar ingress port's own TLS replaces mesh mTLS on that port, as in Istio.
        chain = lc.FilterChain(filters=_port_filters(ctx, workload, port, http=is_http(port)))
        chain.transport_socket.CopyFrom(ingress_transport_socket(port.tls))
        return [chain]
    mode = mtls_mode(ctx.snapshot, proxy, workload, port)
    if mode is MtlsMode.PERMISSIVE and not proxy.certificates:
        mode = MtlsMode.DISABLE
    secret = certificate_secret_name(proxy, workload)
    if not is_sniffed(port):
        filters = _port_filters(ctx, workload, port, http=is_http(port))
        return mode_chains(mode, filters, secret)
    # A protocol Istio cannot name: plaintext HTTP (as the http_inspector sees the first
    # bytes) gets the HTTP chain, everything else, mTLS included, the TCP one.
    http = mode_chains(mode, _port_filters(ctx, workload, port, http=True), secret)
    sniffed = [c for c in http if not c.HasField("transport_socket")]
    for chain in sniffed:
        chain.filter_chain_match.application_protocols.extend(SNIFFED_HTTP)
    return sniffed + mode_chains(mode, _port_filters(ctx, workload, port, http=False), secret)


def _port_filters(
    ctx: Context, workload: LocalWorkload, port: InboundPort, *, http: bool
) -> list[lc.Filter]:
    """The network filters of one workload port, as HTTP or as TCP."""
    proxy = ctx.proxy
    policies = authz_policies(ctx.snapshot, proxy, workload)
    rbacs = rbac_by_action(policies, http=http, bundle=trust_bundle(proxy))
    telemetry = server_telemetry(ctx.snapshot, proxy, workload)
    if http:
        authn = jwt_filter_for(ctx.snapshot, proxy, workload)
        # CUSTOM (the external authorizer) decides before DENY and ALLOW, as in Istio.
        custom = ext_authz.http_filters(ctx.snapshot, proxy, policies)
        return [_http_manager(port, rbacs, authn, custom, telemetry)]
    prefix = names.inbound_stat_prefix(port.port)
    custom_tcp = ext_authz.network_filters(ctx.snapshot, proxy, policies, prefix)
    return custom_tcp + _tcp_filters(port, rbacs, telemetry)


def mode_chains(mode: MtlsMode, filters: list[lc.Filter], secret: str) -> list[lc.FilterChain]:
    """filters behind the TLS an mTLS mode asks for: mTLS only (STRICT), mTLS or plaintext
    told apart by the tls_inspector (PERMISSIVE), plaintext only (DISABLE)."""
    if mode is MtlsMode.STRICT:
        return [_chain(filters, secret, "")]
    if mode is MtlsMode.PERMISSIVE:
        return [_chain(filters, secret, "tls"), _chain(filters, None, "raw_buffer")]
    return [_chain(filters, None, "")]


def listener_filters_for(chains: Sequence[lc.FilterChain]) -> list[lc.ListenerFilter]:
    """The inspectors chains need: tls_inspector when one matches a transport protocol,
    http_inspector when one matches application protocols of plaintext (sniffing)."""
    out = []
    if any(c.filter_chain_match.transport_protocol for c in chains):
        out.append(listener_filter(TLS_INSPECTOR, tls_inspector_pb2.TlsInspector()))
    if any(c.filter_chain_match.application_protocols for c in chains):
        out.append(listener_filter(HTTP_INSPECTOR, http_inspector_pb2.HttpInspector()))
    return out


def listener_filter(name: str, config: Message) -> lc.ListenerFilter:
    """A listener filter named name with config."""
    return lc.ListenerFilter(name=name, typed_config=protos.packed(config))


def build_inbound_listener(ctx: Context, workload: LocalWorkload, port: InboundPort) -> Listener:
    """The inbound listener of one workload port."""
    proxy = ctx.proxy
    address = port.bind or proxy.inbound_address  # a Sidecar ingress listener's bind
    name = names.inbound_listener_name(address, port.port)
    out = Listener(name=name)
    out.address.socket_address.address = address
    out.address.socket_address.port_value = port.port
    chains = inbound_chains(ctx, workload, port)
    out.listener_filters.extend(listener_filters_for(chains))
    out.filter_chains.extend(chains)
    return out


def workload_ports(proxy: ProxySpec) -> list[tuple[LocalWorkload, InboundPort]]:
    seen: dict[int, str] = {}
    out = []
    for workload in proxy.workloads:
        for port in workload.ports:
            if port.port in seen:
                raise ConfigError(
                    f"inbound port {port.port} of workload {workload.namespace}/{workload.name}"
                    f" is already used by workload {seen[port.port]}",
                    field="workloads",
                )
            seen[port.port] = f"{workload.namespace}/{workload.name}"
            out.append((workload, port))
    return out


def build_inbound_cluster(port: InboundPort, proxy: ProxySpec) -> Cluster:
    """`inbound|<port>||`: the application on 127.0.0.1:target_port (or where a Sidecar
    ingress listener's defaultEndpoint says: another address, or a Unix socket).

    Under capture, Envoy connects from INBOUND_SOURCE_ADDRESS, which the capture rules
    never redirect (Istio's 127.0.0.6), so the application's answer is not captured again.
    """
    cluster = Cluster(name=names.inbound_cluster_name(port.port), type=Cluster.STATIC)
    cluster.connect_timeout.CopyFrom(protos.duration(protos.DEFAULT_CONNECT_TIMEOUT_MS))
    if proxy.capture:
        bind = cluster.upstream_bind_config.source_address
        bind.address, bind.port_value = INBOUND_SOURCE_ADDRESS, 0
    assignment = cluster.load_assignment
    assignment.cluster_name = cluster.name
    endpoint = assignment.endpoints.add().lb_endpoints.add().endpoint
    target = port.target_address  # a Sidecar ingress defaultEndpoint, else 127.0.0.1
    if target.startswith(UNIX_PREFIX):
        endpoint.address.pipe.path = target[len(UNIX_PREFIX) :]
        cluster.ClearField("upstream_bind_config")  # no source address on a Unix socket
        return cluster
    endpoint.address.socket_address.address = target or "127.0.0.1"
    endpoint.address.socket_address.port_value = port.target_port
    return cluster


class InboundListenersGenerator:
    """A listener per local workload port, rebuilt when security policy changes."""

    name = "inbound-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        snap = ctx.snapshot
        key = (
            ctx.proxy,
            snap.peer_authentications,
            snap.authorization_policies,
            snap.request_authentications,
            *ext_authz.provider_services(snap, ctx.proxy),  # CUSTOM resolves their service
            *telemetry_inputs(snap, ctx.proxy),  # access logs and tracing (telemetry.py)
        )
        if identical(key, self._key):
            return self._last
        if ctx.proxy.capture:  # every port is a chain of virtualInbound (transparent.py)
            self._key, self._last = key, []
            return self._last
        out = [
            Resource.pack(listener.name, listener)
            for listener in (
                build_inbound_listener(ctx, w, p) for w, p in workload_ports(ctx.proxy)
            )
        ]
        self._key = key
        self._last = keep_unchanged(self._last, out)
        return self._last


class InboundClustersGenerator:
    """The `inbound|<port>||` clusters of the local workloads."""

    name = "inbound-clusters"
    type_url = typeurls.CLUSTER

    def __init__(self) -> None:
        self._proxy: ProxySpec | None = None
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.proxy is not self._proxy:
            self._proxy = ctx.proxy
            clusters = [build_inbound_cluster(p, ctx.proxy) for _, p in workload_ports(ctx.proxy)]
            self._last = [Resource.pack(c.name, c) for c in clusters]
        return self._last
