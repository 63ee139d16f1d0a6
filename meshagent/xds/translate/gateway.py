"""The generators of a router proxy (a gateway): listeners on the Gateways' real ports, their
route configurations, and the SDS secrets of the credentials their servers present.

All three read one GatewayPlan (gateway_plan.py) per generate() call, made again only when
the Gateways, the credentials or the proxy change. A sidecar gets nothing from them; a router
gets none of the sidecar's listeners (see SIDECAR_ONLY in translate/__init__.py).

Servers left out of the plan (conflicts, missing credentials) are not errors of translation:
`gateway_diagnostics` turns them into located warnings that the agent reports.

Each kind of server (gateway_plan.server_kind) gets its filter chains from CHAIN_BUILDERS;
the plan leaves out, with a "not translated yet" warning, servers of a kind that has no
builder. A new kind (TCP, passthrough by SNI) is a builder registered there.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

from meshagent.model import Diagnostic, MeshSnapshot, Provenance, ProxySpec
from meshagent.model.gateway import AUTO_PASSTHROUGH, Gateway, GatewayServer
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate import protos
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.gateway_l4 import (
    auto_passthrough_targets,
    passthrough_chains,
    sni_dnat_cluster,
    tcp_chains,
)
from meshagent.xds.translate.gateway_plan import (
    EMPTY_PLAN,
    GatewayPlan,
    GatewayPort,
    PlacedServer,
    plan_gateways,
    server_kind,
)
from meshagent.xds.translate.gateway_routes import (
    bound_virtual_services,
    build_gateway_route_configuration,
)
from meshagent.xds.translate.gateway_tls import credential_secret, downstream_tls
from meshagent.xds.translate.generators import identical, keep_unchanged
from meshagent.xds.translate.inbound import TLS_INSPECTOR, listener_filter
from meshagent.xds.translate.listeners import http_connection_manager
from meshagent.xds.translate.policy import ClusterPlan, Discovery
from meshagent.xds.translate.telemetry import client_telemetry, telemetry_inputs

GATEWAY_SOURCE = "gateway"  # the source of diagnostics about servers left out


class GatewayPlanCache:
    """The plan of the last generate() call, reused while its inputs are the same objects."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._plan = EMPTY_PLAN

    def plan(self, ctx: Context) -> GatewayPlan:
        key = (ctx.snapshot.gateways, ctx.snapshot.credentials, ctx.proxy)
        if not identical(key, self._key):
            self._key, self._plan = key, plan_gateways(ctx.snapshot, ctx.proxy, CHAIN_BUILDERS)
        return self._plan


def _http_filter(placed: PlacedServer, ctx: Context) -> lc.Filter:
    server = placed.server
    address = server.bind or names.GATEWAY_WILDCARD_ADDRESS
    manager = http_connection_manager(address, server.port, server.port)
    manager.rds.route_config_name = placed.route_name
    # The gateway is the edge: the client's address is the downstream's, not a header's;
    # paths are normalized (RFC 3986) before routing, as Istio's default pathNormalization.
    manager.use_remote_address.value = True
    manager.normalize_path.value = True
    # Telemetry: a router is a client (Istio's gateways log and trace as CLIENT).
    client_telemetry(ctx.snapshot, ctx.proxy).apply_http(manager)
    return lc.Filter(name=protos.HTTP_CONNECTION_MANAGER, typed_config=protos.packed(manager))


def http_chain(placed: PlacedServer, ctx: Context) -> lc.FilterChain:
    """A plain HTTP server's chain: its route configuration over RDS."""
    return lc.FilterChain(filters=[_http_filter(placed, ctx)])


def https_chain(placed: PlacedServer, ctx: Context) -> lc.FilterChain:
    """An HTTPS server that terminates TLS: matched by SNI, then HTTP over its own routes."""
    assert placed.server.tls is not None  # the plan places only servers with TLS here
    chain = lc.FilterChain(filters=[_http_filter(placed, ctx)])
    chain.filter_chain_match.server_names.extend(placed.sni_hosts)
    chain.transport_socket.CopyFrom(downstream_tls(placed.server.tls))
    return chain


# The filter chain builder of each kind of server (gateway_plan.server_kind).
ChainBuilder = Callable[[PlacedServer, Context], list[lc.FilterChain]]
CHAIN_BUILDERS: dict[str, ChainBuilder] = {
    "http": lambda placed, ctx: [http_chain(placed, ctx)],
    "https": lambda placed, ctx: [https_chain(placed, ctx)],
    "tcp": tcp_chains,
    "tls": tcp_chains,
    "passthrough": passthrough_chains,
}


def _match_keys(match: lc.FilterChainMatch) -> list[tuple[str, bytes]]:
    """What a filter chain match claims: each SNI name with the rest of the match (a match
    without names claims "" with it)."""
    rest = lc.FilterChainMatch()
    rest.CopyFrom(match)
    rest.ClearField("server_names")
    others = rest.SerializeToString(deterministic=True)
    return [(name, others) for name in match.server_names] or [("", others)]


def build_gateway_listener(port: GatewayPort, ctx: Context) -> Listener:
    """The listener of one gateway port: one chain for its plain servers (merged), one per
    server with TLS."""
    out = Listener(name=port.listener_name)
    socket = out.address.socket_address
    socket.address, socket.port_value = port.bind or names.GATEWAY_WILDCARD_ADDRESS, port.port
    servers = port.servers[:1] if port.plaintext else port.servers
    claimed: set[tuple[str, bytes]] = set()
    for placed in servers:
        for chain in CHAIN_BUILDERS[server_kind(placed.server)](placed, ctx):
            # Envoy refuses chains whose matches overlap: a chain that claims an SNI name
            # an earlier one claims (with the same other conditions) is skipped, as Istio
            # skips the later VirtualService rule with a duplicate SNI host.
            keys = _match_keys(chain.filter_chain_match)
            if not claimed.intersection(keys):
                claimed.update(keys)
                out.filter_chains.append(chain)
    if not port.plaintext:
        inspector = listener_filter(TLS_INSPECTOR, tls_inspector_pb2.TlsInspector())
        out.listener_filters.append(inspector)
    return out


class GatewayListenersGenerator:
    """A listener per port of the Gateways a router serves."""

    name = "gateway-listeners"
    type_url = typeurls.LISTENER

    def __init__(self, plans: GatewayPlanCache) -> None:
        self._plans = plans
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        plan = self._plans.plan(ctx)
        snapshot = ctx.snapshot
        # TCP, TLS and passthrough chains follow the bound VirtualServices and the services.
        key = (
            plan,
            snapshot.virtual_services,
            snapshot.services,
            ctx.index.rules,
            *telemetry_inputs(snapshot, ctx.proxy),
        )
        if not identical(key, self._key):
            self._key = key
            built = [build_gateway_listener(p, ctx) for p in plan.ports]
            # A listener without chains (a TCP server nothing routes) is refused by Envoy.
            packed = [Resource.pack(x.name, x) for x in built if x.filter_chains]
            self._last = keep_unchanged(self._last, packed)
        return self._last


class GatewayRoutesGenerator:
    """A route configuration per RDS name of the plan: the VirtualServices bound to it."""

    name = "gateway-routes"
    type_url = typeurls.ROUTE

    def __init__(self, plans: GatewayPlanCache) -> None:
        self._plans = plans
        self._key: tuple[object, ...] = ()
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        plan = self._plans.plan(ctx)
        snapshot = ctx.snapshot
        key = (plan, snapshot.virtual_services, snapshot.services, ctx.index.rules, ctx.proxy)
        if identical(key, self._key):
            return self._last
        self._key = key
        out = []
        for route in plan.route_names():
            config = build_gateway_route_configuration(
                route, plan.servers_of_route(route), snapshot, ctx.proxy, ctx.index.rules
            )
            out.append(Resource.pack(route, config))
        self._last = keep_unchanged(self._last, out)
        return self._last


class GatewayClustersGenerator:
    """The SNI-DNAT clusters of AUTO_PASSTHROUGH servers (gateway_l4.py), once each.

    Which clusters exist follows the plan, the services and the rules; an endpoint change
    rebuilds only the clusters that carry their hosts inline (DNS), since EDS clusters take
    theirs from the ordinary cluster's assignment."""

    name = "gateway-clusters"
    type_url = typeurls.CLUSTER

    def __init__(self, plans: GatewayPlanCache) -> None:
        self._plans = plans
        self._key: tuple[object, ...] = ()
        self._endpoints: object = None
        self._targets: dict[str, ClusterPlan] = {}
        self._built: dict[str, Resource] = {}
        self._last: list[Resource] = []

    def _collect(self, plan: GatewayPlan, ctx: Context) -> dict[str, ClusterPlan]:
        found: dict[str, ClusterPlan] = {}
        for port in plan.ports:
            for placed in port.servers:
                tls = placed.server.tls
                if tls is None or tls.mode != AUTO_PASSTHROUGH:
                    continue
                targets = auto_passthrough_targets(placed, ctx.snapshot, ctx.proxy, ctx.index.rules)
                for name, cluster_plan in targets:
                    found.setdefault(name, cluster_plan)
        return found

    def generate(self, ctx: Context) -> list[Resource]:
        plan = self._plans.plan(ctx)
        snapshot = ctx.snapshot
        key = (plan, snapshot.services, ctx.index.rules)
        endpoints_changed = snapshot.endpoints is not self._endpoints
        if identical(key, self._key) and not endpoints_changed:
            return self._last
        if not identical(key, self._key):
            self._key, self._targets, self._built = key, self._collect(plan, ctx), {}
        self._endpoints = snapshot.endpoints
        out = []
        for name in sorted(self._targets):
            target = self._targets[name]
            built = self._built.get(name)
            if built is None or (endpoints_changed and target.discovery is not Discovery.EDS):
                built = Resource.pack(name, sni_dnat_cluster(name, target, snapshot))
                self._built[name] = built
            out.append(built)
        self._last = keep_unchanged(self._last, out)
        return self._last


class GatewaySecretsGenerator:
    """The SDS secrets of the credentials the plan's servers present (`kubernetes://...`)."""

    name = "gateway-secrets"
    type_url = typeurls.SECRET

    def __init__(self, plans: GatewayPlanCache) -> None:
        self._plans = plans
        self._plan: GatewayPlan | None = None
        self._last: list[Resource] = []

    def generate(self, ctx: Context) -> list[Resource]:
        plan = self._plans.plan(ctx)
        if plan is not self._plan:
            self._plan = plan
            out = [Resource.pack(n, credential_secret(n, c, ca)) for n, c, ca in plan.secrets]
            self._last = keep_unchanged(self._last, out)
        return self._last


def _server_field(gateway: Gateway, server: GatewayServer) -> str:
    """Where a server is written: Istio's `spec.servers[i]`; a Consul gateway entry's
    server names its own field path (`Listeners[0]`, ...) in name."""
    consul = gateway.provenance is not None and gateway.provenance.source == "consul"
    return server.name if consul and server.name else f"spec.servers[{server.index}]"


def gateway_diagnostics(plan: GatewayPlan) -> list[Diagnostic]:
    """A located warning for each server the plan leaves out, naming its Gateway."""
    out = []
    for problem in plan.problems:
        gateway, server = problem.gateway, problem.server
        provenance = gateway.provenance
        out.append(
            Diagnostic(
                severity="warning",
                source=GATEWAY_SOURCE,
                location=provenance.location if provenance is not None else "",
                kind=provenance.kind if provenance is not None and provenance.kind else "Gateway",
                name=gateway.key,
                field=_server_field(gateway, server),
                reason=f"server on port {server.port} left out: {problem.reason}",
            )
        )
    return out


def gateway_problems(snapshot: MeshSnapshot, proxy: ProxySpec) -> list[Diagnostic]:
    """gateway_diagnostics of the plan for proxy (none for a sidecar)."""
    return gateway_diagnostics(plan_gateways(snapshot, proxy, CHAIN_BUILDERS))


def gateway_origins(
    snapshot: MeshSnapshot, proxy: ProxySpec, type_url: str, name: str
) -> list[Provenance | None]:
    """The provenance of what a router's listener, route configuration or credential secret
    was built from: the Gateways of its servers, the VirtualServices bound to a route
    configuration, the credential of a secret ([] for a resource of no Gateway)."""
    plan = plan_gateways(snapshot, proxy, CHAIN_BUILDERS)
    if type_url == typeurls.LISTENER:
        servers = [p for port in plan.ports if port.listener_name == name for p in port.servers]
    elif type_url == typeurls.ROUTE:
        servers = plan.servers_of_route(name)
    else:
        found = [c for secret, c, _ in plan.secrets if secret == name]
        return [c.provenance for c in found]
    out: list[Provenance | None] = []
    for placed in servers:
        if placed.gateway.provenance not in out:
            out.append(placed.gateway.provenance)
        if type_url == typeurls.ROUTE:
            bound = bound_virtual_services(snapshot, placed.gateway.key, proxy)
            out += [vs.provenance for vs in bound if vs.provenance not in out]
    return out
