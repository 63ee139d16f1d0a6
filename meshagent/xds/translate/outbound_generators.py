"""The sidecar's outbound generators: one HTTP listener per port, TCP listeners, the route
configurations they name, and the client-side telemetry the listeners share. Incremental as
the generators of generators.py are: output is reused while its inputs are the same objects.
"""

from __future__ import annotations

from meshagent.errors import ConfigError
from meshagent.model import TcpRoute, VirtualService
from meshagent.model.gateway import MESH_GATEWAY, match_applies
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate.context import Context
from meshagent.xds.translate.encode import (
    WireVirtualHost,
    route_configuration_bytes,
    wire_virtual_host,
)
from meshagent.xds.translate.generators import Key, identical, keep_unchanged, same_key
from meshagent.xds.translate.listeners import build_http_listener, build_tcp_listener
from meshagent.xds.translate.route_action import RouteScope, destination_cluster
from meshagent.xds.translate.routes import (
    address_domains,
    catch_all_virtual_host,
    domains_for,
)
from meshagent.xds.translate.telemetry import (
    NO_TELEMETRY,
    ListenerTelemetry,
    client_telemetry,
    telemetry_inputs,
)


class ClientTelemetry:
    """The CLIENT side's access logs and tracing (telemetry.py), rebuilt only when the
    Telemetries or the providers' services change."""

    def __init__(self) -> None:
        self._key: Key = ()
        self.value: ListenerTelemetry = NO_TELEMETRY

    def update(self, ctx: Context) -> bool:
        """Recompute for ctx when its inputs changed (rare); whether it was recomputed.
        Listeners rebuilt with an equal value keep their objects (keep_unchanged)."""
        key = (ctx.proxy, *telemetry_inputs(ctx.snapshot, ctx.proxy))
        if identical(key, self._key):
            return False
        self._key = key
        self.value = client_telemetry(ctx.snapshot, ctx.proxy)
        return True


class HttpListenersGenerator:
    """One outbound HTTP listener per HTTP port number of any service."""

    name = "http-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], Resource] = {}
        self._none: list[Resource] = []  # one object: consumers compare lists by identity
        self._last: list[Resource] = []
        self._telemetry = ClientTelemetry()

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.proxy.capture:  # the ports are chains of virtualOutbound (transparent.py)
            return self._none
        if self._telemetry.update(ctx):
            self._cache.clear()
        out: list[Resource] = []
        proxy = ctx.proxy
        for port in ctx.index.http_ports:
            key = (proxy.outbound_bind(port), proxy.outbound_port(port), port)
            found = self._cache.get(key)
            if found is None:
                listener = build_http_listener(*key, self._telemetry.value)
                found = self._cache[key] = Resource.pack(listener.name, listener)
            out.append(found)
        self._last = keep_unchanged(self._last, out)
        return self._last


def tcp_route_for(vs: VirtualService | None, port: int) -> TcpRoute | None:
    """The first TCP route of vs that applies to port.

    Matches on subnets or source labels cannot hold for a loopback listener of a proxy
    without labels, so only port (or no condition at all) counts.
    """
    if vs is None:
        return None
    for route in vs.tcp:
        if not route.matches or any(
            (m.port is None or m.port == port)
            and not m.destination_subnets
            and not m.source_labels
            and match_applies(m.gateways, vs.namespace, MESH_GATEWAY)
            for m in route.matches
        ):
            return route
    return None


def tcp_clusters(ctx: Context, host: str, port: int) -> list[tuple[str, int]]:
    """Where TCP to host:port goes: (cluster, weight) of its VirtualService's TCP route, else
    the port's cluster of host."""
    route = tcp_route_for(ctx.index.routing.vs_for(host), port)
    if route is None or not route.route:
        return [(names.cluster_name(port, host), 100)]
    scope = RouteScope(port, ctx.snapshot.services, ctx.index.rules)
    return [(destination_cluster(w.destination, scope), w.weight) for w in route.route]


class TcpListenersGenerator:
    """A TCP listener for each TcpBinding of the proxy, to its cluster or weighted clusters."""

    name = "tcp-listeners"
    type_url = typeurls.LISTENER

    def __init__(self) -> None:
        self._last: list[Resource] = []
        self._telemetry = ClientTelemetry()

    def generate(self, ctx: Context) -> list[Resource]:
        self._telemetry.update(ctx)
        taken = {
            names.listener_name(ctx.proxy.outbound_bind(p), ctx.proxy.outbound_port(p))
            for p in ctx.index.http_ports
        }
        out: list[Resource] = []
        for binding in sorted(ctx.proxy.tcp_bindings, key=lambda b: (b.host, b.port)):
            name = names.listener_name(binding.listen_address, binding.listen_port)
            if name in taken:
                raise ConfigError(
                    f"TCP binding {binding.host}:{binding.port} listens on {name}, "
                    "which another outbound listener already uses",
                    field="tcp_bindings",
                )
            taken.add(name)
            listener = build_tcp_listener(
                binding.listen_address,
                binding.listen_port,
                names.tcp_stat_prefix(names.cluster_name(binding.port, binding.host)),
                tcp_clusters(ctx, binding.host, binding.port),
                self._telemetry.value,
            )
            out.append(Resource.pack(name, listener))
        # Few and cheap to build, but consumers compare by identity: keep unchanged objects.
        self._last = keep_unchanged(self._last, out)
        return self._last


class RoutesGenerator:
    """One RouteConfiguration per HTTP port, rebuilt only when one of its virtual hosts is."""

    name = "routes"
    type_url = typeurls.ROUTE

    def __init__(self) -> None:
        # Virtual hosts are kept serialized (encode/route.py): configurations join their bytes.
        self._vhosts: dict[tuple[str, int], tuple[Key, WireVirtualHost]] = {}
        self._vhosts_next: dict[tuple[str, int], tuple[Key, WireVirtualHost]] = {}
        self._configs: dict[int, tuple[Key, Resource]] = {}
        self._destinations: dict[int, tuple[VirtualService, tuple[str, ...]]] = {}
        self._last: list[Resource] = []
        self._catch_all_vhost: WireVirtualHost | None = None  # the proxy's; built once

    def _destination_hosts(self, vs: VirtualService) -> tuple[str, ...]:
        cached = self._destinations.get(id(vs))
        if cached is not None and cached[0] is vs:
            return cached[1]
        hosts = {w.destination.host for r in vs.http for w in r.route}
        hosts |= {m.destination.host for r in vs.http for m in r.mirrors}
        found = tuple(sorted(hosts))
        self._destinations[id(vs)] = (vs, found)
        return found

    def _vhost_key(self, ctx: Context, host: str, vs: VirtualService | None) -> Key:
        """Everything a virtual host is built from: routed and destination services, rules."""
        services = ctx.snapshot.services
        rules = ctx.index.rules
        if vs is None:  # the default route: to host's own port, hashed by host's own rule
            return (services.get(host), rules.rule_for(host))
        hosts = self._destination_hosts(vs)
        return (
            services.get(host),
            vs,
            *(services.get(h) for h in hosts),
            *(rules.rule_for(h) for h in hosts),
        )

    def _vhost(self, ctx: Context, scope: RouteScope, host: str, namespace: str) -> WireVirtualHost:
        vs = ctx.index.routing.vs_for(host)
        key = self._vhost_key(ctx, host, vs)
        at = (host, scope.port)
        cached = self._vhosts.get(at)
        if cached is not None and same_key(cached[0], key):
            self._vhosts_next[at] = cached
            return cached[1]
        domains = domains_for(
            host, scope.port, namespace=namespace, proxy_namespace=ctx.proxy.namespace
        )
        service = ctx.snapshot.services.get(host) if ctx.proxy.capture else None
        if service is not None:
            domains += address_domains(service, scope.port)
        built = wire_virtual_host(host, domains, vs, scope)
        self._vhosts_next[at] = (key, built)
        return built

    def _config(self, ctx: Context, port: int) -> Resource:
        routing = ctx.index.routing
        scope = RouteScope(port, ctx.snapshot.services, ctx.index.rules)
        vhost = self._vhost
        vhosts = [vhost(ctx, scope, s.host, s.namespace) for s in routing.http_ports.get(port, ())]
        extra = routing.extra_hosts.get(port, ())
        vhosts += [vhost(ctx, scope, h, vs.namespace) for h, vs in extra]
        key: Key = tuple(vhosts)
        cached = self._configs.get(port)
        if cached is not None and identical(cached[0], key):
            return cached[1]
        if ctx.proxy.capture:
            vhosts.append(self._catch_all(ctx))
        resource = Resource.from_value(
            names.route_name(port), typeurls.ROUTE, route_configuration_bytes(port, vhosts)
        )
        if cached is not None and cached[1].version == resource.version:
            resource = cached[1]
        self._configs[port] = (key, resource)
        return resource

    def _catch_all(self, ctx: Context) -> WireVirtualHost:
        """Under capture, the last virtual host of every port (transparent.py)."""
        if self._catch_all_vhost is None:
            message = catch_all_virtual_host(ctx.proxy)
            self._catch_all_vhost = WireVirtualHost.from_message(message)
        return self._catch_all_vhost

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.changes.routing:
            # Virtual hosts built or reused in this pass become the cache; the rest are gone.
            self._vhosts_next = {}
            self._last = [self._config(ctx, port) for port in ctx.index.http_ports]
            self._vhosts, self._vhosts_next = self._vhosts_next, {}
            self._forget_unused(ctx)
        return self._last

    def _forget_unused(self, ctx: Context) -> None:
        """Drop cached configs of ports that are gone and routing data of deleted VSs."""
        ports = set(ctx.index.http_ports)
        self._configs = {p: v for p, v in self._configs.items() if p in ports}
        live = {id(vs) for vs in ctx.snapshot.virtual_services.values()}
        self._destinations = {k: v for k, v in self._destinations.items() if k in live}
