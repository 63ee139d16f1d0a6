"""Which Gateway servers a router proxy serves, merged per port as Istio merges them.

A router serves every Gateway (of any namespace) whose selector matches its labels. Servers
that share a port share a listener: plain HTTP servers merge into one route configuration
(`http.<port>`); servers with TLS settings become one filter chain each, told apart by SNI,
and must not claim a host another TLS server of the port already claims. A server that
cannot be served (a conflict, a credential that is missing) is left out, and the reason is
kept as a GatewayProblem naming its Gateway; the rest of the listener is served.

Pure functions of the snapshot and the proxy: no I/O, deterministic order (Gateways by
"namespace/name", servers in their order).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from meshagent.model import Credential, MeshSnapshot, ProxySpec
from meshagent.model.gateway import (
    AUTO_PASSTHROUGH,
    HTTP_PROTOCOLS,
    ISTIO_MUTUAL,
    MUTUAL,
    OPTIONAL_MUTUAL,
    PASSTHROUGH,
    SIMPLE,
    Gateway,
    GatewayServer,
    split_server_host,
)
from meshagent.model.labels import selector_matches
from meshagent.model.proxy import ROUTER
from meshagent.xds import names

# Credentials as Istio names them in credentialName may carry the SDS prefix.
_CREDENTIAL_PREFIX = names.CREDENTIAL_PREFIX
_WITH_CA = (MUTUAL, OPTIONAL_MUTUAL)


@dataclass(frozen=True, slots=True)
class PlacedServer:
    """A server as served: its Gateway, its RDS route name ("" when it routes no HTTP), and
    the SNI names its filter chain matches (empty: any)."""

    gateway: Gateway
    server: GatewayServer
    route_name: str = ""
    sni_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayPort:
    """One listener: a port (and bind address) and the servers on it, in order. plaintext:
    the first server has no TLS, so the listener has a single plain chain."""

    port: int
    bind: str
    plaintext: bool
    servers: tuple[PlacedServer, ...]

    @property
    def listener_name(self) -> str:
        return names.gateway_listener_name(self.bind, self.port)


@dataclass(frozen=True, slots=True)
class GatewayProblem:
    """A server left out, and why."""

    gateway: Gateway
    server: GatewayServer
    reason: str


@dataclass(frozen=True, slots=True)
class GatewayPlan:
    """What a router serves: listeners in order, the credentials their chains reference
    (by SDS name, with the snapshot key of the Credential), and the servers left out."""

    ports: tuple[GatewayPort, ...] = ()
    secrets: tuple[tuple[str, Credential, bool], ...] = ()  # (SDS name, credential, is CA)
    problems: tuple[GatewayProblem, ...] = ()

    def route_names(self) -> list[str]:
        """Every RDS route name of the plan, in listener order, once each."""
        out: list[str] = []
        for port in self.ports:
            for placed in port.servers:
                if placed.route_name and placed.route_name not in out:
                    out.append(placed.route_name)
        return out

    def servers_of_route(self, route_name: str) -> list[PlacedServer]:
        """The servers whose routes make up route_name's configuration."""
        return [p for port in self.ports for p in port.servers if p.route_name == route_name]


EMPTY_PLAN = GatewayPlan()


def selected_gateways(snapshot: MeshSnapshot, proxy: ProxySpec) -> list[Gateway]:
    """The Gateways proxy serves: all whose selector matches its labels, by "namespace/name"
    (none for a sidecar)."""
    if proxy.proxy_type != ROUTER:
        return []
    return [
        snapshot.gateways[key]
        for key in sorted(snapshot.gateways)
        if selector_matches(snapshot.gateways[key].selector, proxy.labels)
    ]


def is_tls_server(server: GatewayServer) -> bool:
    """Istio's IsTLSServer: TLS settings on an HTTPS or TLS port (not a plain port's
    httpsRedirect)."""
    return server.tls is not None and server.protocol in ("HTTPS", "TLS")


def is_passthrough(server: GatewayServer) -> bool:
    return server.tls is not None and server.tls.mode in (PASSTHROUGH, AUTO_PASSTHROUGH)


def is_http_server(server: GatewayServer) -> bool:
    """Istio's IsHTTPServer: plain HTTP, or HTTPS that the gateway terminates."""
    return server.protocol in HTTP_PROTOCOLS or (
        server.protocol == "HTTPS" and not is_passthrough(server)
    )


def server_kind(server: GatewayServer) -> str:
    """What kind of filter chain a server needs: "http" (plain HTTP), "https" (HTTPS that
    the gateway terminates), "tls" (TLS it terminates, then TCP), "passthrough" (TLS
    forwarded by SNI: PASSTHROUGH, AUTO_PASSTHROUGH), or "tcp" (any other protocol)."""
    if server.protocol in HTTP_PROTOCOLS:
        return "http"
    if is_passthrough(server):
        return "passthrough"
    if server.protocol == "HTTPS":
        return "https"
    return "tls" if server.protocol == "TLS" else "tcp"


def route_name(server: GatewayServer, gateway: Gateway) -> str:
    """The server's RDS route name, "" when it routes no HTTP (Istio's gatewayRDSRouteName)."""
    if server.protocol in HTTP_PROTOCOLS:
        return names.gateway_http_route_name(server.port, server.bind)
    if server.protocol == "HTTPS" and not is_passthrough(server):
        return names.gateway_https_route_name(
            server.port, server.port_name, gateway.name, gateway.namespace, server.bind
        )
    return ""


def sni_hosts(server: GatewayServer) -> tuple[str, ...]:
    """The SNI names of a TLS server's filter chain: its hosts without namespaces, sorted,
    none when one of them is `*` (any name, and connections without SNI)."""
    hosts = sorted({split_server_host(h)[1] for h in server.hosts})
    return () if "*" in hosts else tuple(hosts)


def credential_key(credential_name: str, proxy: ProxySpec) -> str:
    """The snapshot key of a credentialName: Istio looks the Secret up in the namespace of
    the proxy that uses it (a `kubernetes://` prefix is accepted)."""
    return f"{proxy.namespace}/{_bare(credential_name)}"


def _ca_of(
    credentials: Mapping[str, Credential], key: str, credential: Credential
) -> Credential | None:
    """The credential holding key's CA bundle, in Istio's order (its GetCaCert): a separate
    `<name>-cacert` credential when one exists (and only it, even without a CA), else the
    credential's own `ca.crt`/`cacert`."""
    separate = credentials.get(key + names.CA_CREDENTIAL_SUFFIX)
    if separate is not None:
        return separate if separate.ca_cert_pem else None
    return credential if credential.ca_cert_pem else None


def _tls_needs(
    server: GatewayServer, snapshot: MeshSnapshot, proxy: ProxySpec
) -> tuple[list[tuple[str, Credential, bool]], str]:
    """The secrets a terminating server references, or why it cannot be served."""
    tls = server.tls
    if tls is None or not is_tls_server(server) or is_passthrough(server):
        return [], ""
    if proxy.certificates and (tls.mode == ISTIO_MUTUAL or tls.workload_certificate):
        return [], ""
    if tls.mode == ISTIO_MUTUAL:
        return [], "ISTIO_MUTUAL needs workload certificates (ca:)"
    if tls.workload_certificate:
        return [], "TLS with the router's workload certificate needs one (ca: and a workload)"
    listed = tls.credentials
    if tls.mode not in (SIMPLE, *_WITH_CA) or not listed:
        return [], ""  # certificate files on the host (serverCertificate/privateKey)
    out: list[tuple[str, Credential, bool]] = []
    for written in listed:
        key = credential_key(written, proxy)
        credential = snapshot.credentials.get(key)
        if credential is None:
            return [], f"credential {key!r} (credentialName {written!r}) not found"
        if not credential.cert_chain_pem or not credential.private_key_pem:
            return [], f"credential {key!r} has no certificate and key"
        out.append((names.credential_secret_name(_bare(written)), credential, False))
    if tls.mode in _WITH_CA:  # the first credential's CA verifies clients, as in Istio
        key = credential_key(listed[0], proxy)
        ca = _ca_of(snapshot.credentials, key, snapshot.credentials[key])
        if ca is None:
            return [], f"{tls.mode} needs a CA bundle: credential {key!r} has none (ca.crt)"
        out.append((names.credential_ca_secret_name(_bare(listed[0])), ca, True))
    return out, ""


def _bare(credential_name: str) -> str:
    return credential_name.removeprefix(_CREDENTIAL_PREFIX)


def _can_merge(current: str, new: str) -> bool:
    """Istio's canMergeProtocols: plain HTTP servers share a port with plain HTTP ones."""
    return (current in HTTP_PROTOCOLS or current == new) and new in HTTP_PROTOCOLS


def _tls_names(server: GatewayServer) -> list[str]:
    """The names a server with TLS claims on its port: its hosts without namespace (two
    servers claiming one name would give Envoy two filter chains with one SNI match; Istio
    compares the hosts as written and lets Envoy reject that)."""
    return sorted({split_server_host(h)[1] for h in server.hosts})


@dataclass(slots=True)
class _Merge:
    """The state of merging servers port by port (Istio's mergeGateways)."""

    listeners: dict[tuple[int, str], list[PlacedServer]]
    plaintext: dict[int, tuple[str, str]]  # port -> (protocol, bind) of its first server
    tls_hosts: dict[int, dict[str, str]]  # port -> host -> bind, of servers with TLS
    tls_binds: dict[int, set[str]]
    routes: set[str]

    def place(self, gateway: Gateway, server: GatewayServer) -> str:
        """Add server; "" when placed, else why it was left out."""
        port, bind = server.port, server.bind
        name = route_name(server, gateway)
        if server.tls is not None:
            known = self.tls_hosts.setdefault(port, {})
            taken = [h for h in _tls_names(server) if known.get(h) == bind]
            if taken:
                return f"duplicate host names on port {port}: {', '.join(taken)}"
        placed = PlacedServer(gateway, server, name, sni_hosts(server) if server.tls else ())
        if not any(key[0] == port for key in self.listeners):
            if not is_tls_server(server):
                self.plaintext[port] = (server.protocol, bind)
            return self._add(port, bind, placed, name)
        if port in self.plaintext:
            protocol, current = self.plaintext[port]
            if current == bind and not _can_merge(protocol, server.protocol):
                return f"port {port} already serves {protocol}: {server.protocol} conflicts"
            if current == bind and not name:
                return f"port {port} is already used by another server"
            return self._add(port, bind, placed, name)
        if is_http_server(server) and (not name or name in self.routes):
            return f"route {name or '?'} is already served: HTTPS port names must be unique"
        binds = self.tls_binds.setdefault(port, set())
        if server.tls is None and bind in binds:
            return f"port {port} serves TLS: a server without TLS settings cannot share it"
        return self._add(port, bind, placed, name)

    def _add(self, port: int, bind: str, placed: PlacedServer, name: str) -> str:
        self.listeners.setdefault((port, bind), []).append(placed)
        if name:
            self.routes.add(name)
        if is_tls_server(placed.server):
            self.tls_binds.setdefault(port, set()).add(bind)
        if placed.server.tls is not None:
            known = self.tls_hosts.setdefault(port, {})
            known.update((h, bind) for h in _tls_names(placed.server))
        return ""


def plan_gateways(snapshot: MeshSnapshot, proxy: ProxySpec, kinds: Collection[str]) -> GatewayPlan:
    """The listeners, secrets and problems of proxy's Gateways; kinds: the server kinds
    (server_kind) the translator builds chains for, the others are left out."""
    gateways = selected_gateways(snapshot, proxy)
    if not gateways:
        return EMPTY_PLAN
    merge = _Merge({}, {}, {}, {}, set())
    secrets: dict[str, tuple[str, Credential, bool]] = {}
    problems: list[GatewayProblem] = []
    for gateway in gateways:
        for server in gateway.servers:
            kind = server_kind(server)
            if kind not in kinds:
                reason = f"{kind} servers ({server.protocol}) are not translated yet"
                problems.append(GatewayProblem(gateway, server, reason))
                continue
            needed, reason = _tls_needs(server, snapshot, proxy)
            reason = reason or merge.place(gateway, server)
            if reason:
                problems.append(GatewayProblem(gateway, server, reason))
                continue
            secrets.update((s[0], s) for s in needed)
    ports = tuple(
        GatewayPort(port, bind, not is_tls_server(placed[0].server), tuple(placed))
        for (port, bind), placed in merge.listeners.items()
    )
    return GatewayPlan(ports, tuple(secrets[k] for k in sorted(secrets)), tuple(problems))
