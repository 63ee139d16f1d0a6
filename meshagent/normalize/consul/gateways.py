"""ingress-gateway and terminating-gateway config entries to the model's Gateways.

A Consul gateway is the gateway service of the entry's Name: the router proxies whose
`node.labels` say `consul.gateway: <Name>` (GATEWAY_LABEL) serve it. Each entry converts to
the objects an Istio user would write for the same edge, so that one translator serves both:

- ingress-gateway → a Gateway `consul-ingress-<Name>` with a server per listener (port,
  protocol, TLS), and per exposed service a VirtualService bound to it: its Hosts (Consul's
  default `<service>.ingress.*`; a `:port` suffix dropped, ports are not matched) routed to
  the service's mesh host, with the service's RequestHeaders/ResponseHeaders, on that
  listener's port only. `TLS.Enabled` presents the router's workload certificate (Consul's
  ingress presents its Connect leaf certificate; clients verify it with the mesh roots);
  `TLS.SDS.CertResource` names a credential instead (the router's namespace, as
  credentialName). A service with TLS of its own gets an HTTPS server of its own, matched by
  SNI on its Hosts, as Consul does.
- terminating-gateway → a Gateway `consul-terminating-<Name>` with one server on the
  gateway's port (`sources.consul.terminating_gateway_port`) that terminates mesh mTLS
  (ISTIO_MUTUAL) for the linked services' hosts, told apart by SNI; per linked service a
  bound VirtualService to the service's host, and a DestinationRule that selects the gateway
  (its workloadSelector is GATEWAY_LABEL) and originates TLS as the entry says: CAFile →
  SIMPLE, with CertFile/KeyFile → MUTUAL, SNI sent and, as in Consul, checked against the
  certificate's SANs. Without CAFile the gateway speaks plaintext to the service. Every
  other proxy reaches a linked service through the gateway, as Consul's sidecars do: a
  mesh-wide DestinationRule redirects the service's host to the gateway service's instances
  (the gateway's registration in Consul), over mesh mTLS.

The linked services' protocol is the mapping's default_protocol (Consul's service-defaults
are not read): http-like protocols route HTTP, tcp routes TCP: the gateway's TLS server
matches each tcp service's host by SNI, and the sidecars' rule that sends them to the gateway
sets that SNI (see the note before convert_terminating_gateway). Wildcard services (`*`),
Defaults and the per-service limits are reported as not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.gateway import ISTIO_MUTUAL, SIMPLE, Gateway, GatewayServer, ServerTls
from meshagent.model.labels import labels_of
from meshagent.model.routing import (
    Destination,
    HttpMatch,
    HttpRoute,
    L4Match,
    TcpRoute,
    VirtualService,
    WeightedDestination,
)
from meshagent.model.source import Provenance
from meshagent.model.traffic import ClientTls, DestinationRule, ResolverTarget, TrafficPolicy
from meshagent.normalize.consul.entries import header_ops
from meshagent.normalize.consul.flags import flag
from meshagent.normalize.consul.options import ConsulMapping
from meshagent.normalize.schema.core import Issues

GATEWAY_LABEL = "consul.gateway"
INGRESS_PREFIX = "consul-ingress-"
TERMINATING_PREFIX = "consul-terminating-"
_HTTP = {"http": "HTTP", "http2": "HTTP2", "grpc": "GRPC"}
_VERSIONS = {"TLSv1_0": "TLSV1_0", "TLSv1_1": "TLSV1_1", "TLSv1_2": "TLSV1_2", "TLSv1_3": "TLSV1_3"}
_LIMITS = ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests", "PassiveHealthCheck")

Converted = tuple[Gateway | VirtualService | DestinationRule, ...]


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any, path: str, issues: Issues) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        issues.error(path, f"must be a list, not {type(value).__name__}")
        return []
    return value


def _port(value: Any, path: str, issues: Issues) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        issues.error(path, f"must be a port number (1-65535), not {value!r}")
        return 0
    return value


class _Gateway:
    """What every converted object of one gateway entry shares."""

    def __init__(
        self, entry: Mapping[str, Any], prefix: str, mapping: ConsulMapping, prov: Provenance
    ) -> None:
        self.service = str(entry.get("Name") or "")
        self.namespace = str(entry.get("Namespace") or "default")
        self.name = prefix + self.service
        self.key = f"{self.namespace}/{self.name}"
        self.selector = labels_of({GATEWAY_LABEL: self.service})
        self.mapping, self.prov = mapping, prov

    def host(self, service: Mapping[str, Any]) -> str:
        return self.mapping.host(
            str(service.get("Name")), str(service.get("Namespace") or self.namespace)
        )

    def bound(self, name: str, hosts: tuple[str, ...], **routes: Any) -> VirtualService:
        return VirtualService(
            name=name,
            namespace=self.namespace,
            hosts=hosts,
            gateways=(self.key,),
            provenance=self.prov,
            **routes,
        )

    def gateway(self, servers: list[GatewayServer]) -> Gateway:
        return Gateway(self.namespace, self.name, tuple(servers), self.selector, self.prov)


def _named(service: Any, path: str, issues: Issues) -> Mapping[str, Any] | None:
    """A Services[] item with a Name; None (reported) for a wildcard or a bad item."""
    spec = _map(service)
    name = spec.get("Name")
    if not name or not isinstance(name, str):
        issues.error(f"{path}.Name", "a service needs a Name")
        return None
    if name == "*":
        issues.warn(
            f"{path}.Name", "wildcard services (*) are not supported: name each service; ignored"
        )
        return None
    for key in ("Partition", "Peer"):
        if spec.get(key) and spec.get(key) != "default":
            issues.warn(f"{path}.{key}", f"{key} is not supported: {spec[key]!r} ignored")
    return spec


# -- TLS -----------------------------------------------------------------------------------


def _server_tls(spec: Any, path: str, issues: Issues) -> ServerTls | None:
    """A gateway's, listener's or service's TLS block as a terminating ServerTls; None when
    TLS is off (Enabled false and no SDS)."""
    tls = _map(spec)
    sds = _map(tls.get("SDS"))
    if not flag(tls.get("Enabled"), f"{path}.Enabled", issues) and not sds:
        return None
    credential = ""
    if sds:
        credential = str(sds.get("CertResource") or "")
        if not credential:
            issues.error(f"{path}.SDS.CertResource", "SDS needs a CertResource")
            return None
        if sds.get("ClusterName"):
            issues.warn(
                f"{path}.SDS.ClusterName",
                "certificates come from the credential named by CertResource, not from an "
                "SDS cluster: ClusterName ignored",
            )
    versions = [
        _version(tls.get(k), f"{path}.{k}", issues) for k in ("TLSMinVersion", "TLSMaxVersion")
    ]
    ciphers = _list(tls.get("CipherSuites"), f"{path}.CipherSuites", issues)
    return ServerTls(
        mode=SIMPLE,
        credential_name=credential,
        workload_certificate=not credential,
        min_protocol_version=versions[0],
        max_protocol_version=versions[1],
        cipher_suites=tuple(str(c) for c in ciphers),
    )


def _version(value: Any, path: str, issues: Issues) -> str:
    if value in (None, "", "TLS_AUTO"):
        return ""
    if value not in _VERSIONS:
        issues.error(path, f"unknown TLS version {value!r} (TLSv1_0 .. TLSv1_3, TLS_AUTO)")
        return ""
    return _VERSIONS[str(value)]


# -- ingress-gateway -----------------------------------------------------------------------


def _ingress_hosts(service: Mapping[str, Any], path: str, issues: Issues) -> tuple[str, ...]:
    """The Hosts of an exposed service (ports dropped), else Consul's `<name>.ingress.*`."""
    written = _list(service.get("Hosts"), f"{path}.Hosts", issues)
    hosts = []
    for i, host in enumerate(written):
        name = str(host).rpartition(":")[0] if ":" in str(host) else str(host)
        if not name or "*" in name[1:]:
            issues.error(f"{path}.Hosts[{i}]", f"invalid host {host!r}")
            continue
        if name not in hosts:
            hosts.append(name)
    return tuple(hosts) or (f"{service['Name']}.ingress.*",)


def _sni_hosts(hosts: tuple[str, ...], path: str, issues: Issues) -> bool:
    """Whether hosts can be SNI names (Consul's per-service certificates match by SNI)."""
    bad = [h for h in hosts if "*" in h[1:]]
    if bad:
        issues.error(f"{path}.Hosts", f"TLS of a service needs Hosts it can match by SNI: {bad}")
    return not bad


def _listener(
    gw: _Gateway,
    i: int,
    spec: Mapping[str, Any],
    default_tls: ServerTls | None,
    issues: Issues,
) -> tuple[list[GatewayServer], list[VirtualService]]:
    path = f"Listeners[{i}]"
    port = _port(spec.get("Port"), f"{path}.Port", issues)
    protocol = str(spec.get("Protocol") or "tcp").lower()
    if protocol not in (*_HTTP, "tcp"):
        issues.error(f"{path}.Protocol", f"unknown protocol {protocol!r} (tcp, http, http2, grpc)")
        return [], []
    # A listener's TLS (Consul omits it when unset, others may write null) replaces the
    # gateway's.
    written = spec.get("TLS")
    tls = default_tls if written is None else _server_tls(written, f"{path}.TLS", issues)
    services = [
        (j, found)
        for j, s in enumerate(_list(spec.get("Services"), f"{path}.Services", issues))
        if (found := _named(s, f"{path}.Services[{j}]", issues)) is not None
    ]
    if not port:
        return [], []
    if protocol == "tcp":
        return _tcp_listener(gw, path, port, [found for _, found in services], tls, issues)
    servers: list[GatewayServer] = []
    routes: list[VirtualService] = []
    shared: list[str] = []
    for j, service in services:
        hosts, own = _http_service(gw, f"{path}.Services[{j}]", port, service, routes, issues)
        if own is not None:
            servers.append(own)
        else:
            shared += [h for h in hosts if h not in shared]
    if shared or not servers:
        # Consul's listener certificate serves every name (no SNI match; `*.ingress.*` could
        # not be one), so a TLS listener's shared server takes any host.
        hosts = ("*",) if tls is not None or not shared else tuple(shared)
        proto = "HTTPS" if tls is not None else _HTTP[protocol]
        servers.insert(0, _server(gw, port, proto, hosts, tls, str(port), path))
    return servers, routes


def _http_service(
    gw: _Gateway,
    path: str,
    port: int,
    service: Mapping[str, Any],
    routes: list[VirtualService],
    issues: Issues,
) -> tuple[tuple[str, ...], GatewayServer | None]:
    """One service of an http listener: its VirtualService (appended to routes), its hosts,
    and the server of its own certificate if it has one."""
    hosts = _ingress_hosts(service, path, issues)
    for key in _LIMITS:
        if service.get(key) is not None:
            issues.warn(f"{path}.{key}", f"{key} is not supported yet; ignored")
    route = HttpRoute(
        name=str(service["Name"]),
        matches=(HttpMatch(port=port),),
        route=(WeightedDestination(Destination(gw.host(service))),),
        headers=header_ops(service.get("RequestHeaders"), service.get("ResponseHeaders")),
    )
    routes.append(gw.bound(f"{gw.name}-{port}-{service['Name']}", hosts, http=(route,)))
    tls = _server_tls(service.get("TLS"), f"{path}.TLS", issues)
    if tls is None or not _sni_hosts(hosts, path, issues):
        return hosts, None
    port_name = f"{port}-{service['Name']}"
    return hosts, _server(gw, port, "HTTPS", hosts, tls, port_name, f"{path}.TLS")


def _server(
    gw: _Gateway,
    port: int,
    protocol: str,
    hosts: tuple[str, ...],
    tls: ServerTls | None,
    port_name: str,
    path: str,
) -> GatewayServer:
    """A server; name carries the entry's field path, for messages about it."""
    return GatewayServer(
        port=port,
        protocol=protocol,
        hosts=tuple(f"*/{h}" for h in hosts),
        port_name=port_name,
        bind=gw.mapping.gateway_bind,
        tls=tls,
        name=path,
    )


def _tcp_listener(
    gw: _Gateway,
    path: str,
    port: int,
    services: list[Mapping[str, Any]],
    tls: ServerTls | None,
    issues: Issues,
) -> tuple[list[GatewayServer], list[VirtualService]]:
    """A tcp listener: exactly one service, all of the port's connections go to it."""
    if len(services) != 1:
        issues.error(f"{path}.Services", "a tcp listener exposes exactly one service")
        return [], []
    service = services[0]
    if service.get("Hosts"):
        issues.error(f"{path}.Services[0].Hosts", "Hosts apply to http listeners only")
    protocol = "TLS" if tls is not None else "TCP"
    server = _server(gw, port, protocol, ("*",), tls, str(port), path)
    route = TcpRoute(
        matches=(L4Match(port=port),),
        route=(WeightedDestination(Destination(gw.host(service))),),
    )
    return [server], [gw.bound(f"{gw.name}-{port}-{service['Name']}", ("*",), tcp=(route,))]


def convert_ingress_gateway(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> Converted:
    """An ingress-gateway entry as a Gateway and the VirtualServices bound to it."""
    gw = _Gateway(entry, INGRESS_PREFIX, mapping, prov)
    default_tls = _server_tls(entry.get("TLS"), "TLS", issues)
    if _map(entry.get("Defaults")):
        issues.warn("Defaults", "Defaults (upstream limits) are not supported yet; ignored")
    servers: list[GatewayServer] = []
    routes: list[VirtualService] = []
    ports: dict[int, int] = {}
    for i, listener in enumerate(_list(entry.get("Listeners"), "Listeners", issues)):
        spec = _map(listener)
        if spec.get("Port") in ports:
            issues.error(
                f"Listeners[{i}].Port",
                f"port {spec['Port']} is already Listeners[{ports[spec['Port']]}]'s",
            )
            continue
        if isinstance(spec.get("Port"), int):
            ports[spec["Port"]] = i
        found, bound = _listener(gw, i, spec, default_tls, issues)
        servers += found
        routes += bound
    return (gw.gateway(servers), *routes)


# -- terminating-gateway -------------------------------------------------------------------


def _origination(service: Mapping[str, Any], path: str, issues: Issues) -> ClientTls:
    """How the gateway reaches a linked service (Consul: CAFile enables TLS)."""
    ca, cert, key = (str(service.get(k) or "") for k in ("CAFile", "CertFile", "KeyFile"))
    sni = str(service.get("SNI") or "")
    if bool(cert) != bool(key):
        issues.error(f"{path}.CertFile", "CertFile and KeyFile go together")
    if (cert or sni) and not ca:
        issues.error(f"{path}.CAFile", "TLS to a service (CertFile, KeyFile, SNI) needs a CAFile")
    if not ca:
        return ClientTls(mode="DISABLE")
    return ClientTls(
        mode="MUTUAL" if cert and key else SIMPLE,
        client_certificate=cert,
        private_key=key,
        ca_certificates=ca,
        sni=sni,
        subject_alt_names=(sni,) if sni else (),
    )


# Why a sidecar sends the linked service's host as SNI rather than its usual mesh SNI
# `outbound_.<port>_._.<host>`: that port is the service's port as the sidecar's agent maps it
# (`sources.consul.service_port`, else the lowest instance port), which the gateway's agent
# need not share, so the gateway could not list the names to match. The host is the same
# everywhere; Istio's egress-gateway pattern does the same (a DestinationRule to the gateway
# with ISTIO_MUTUAL and `sni: <external host>`, a Gateway server matching that host), as
# Consul's sidecars send the one SNI per service that its terminating gateway matches.


def convert_terminating_gateway(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> Converted:
    """A terminating-gateway entry as a Gateway, a bound VirtualService per linked service
    and the DestinationRules that originate the gateway's TLS to them."""
    gw = _Gateway(entry, TERMINATING_PREFIX, mapping, prov)
    port = mapping.terminating_gateway_port
    http = _HTTP.get(mapping.default_protocol.lower())
    hosts: list[str] = []
    out: list[VirtualService | DestinationRule] = []
    via = ResolverTarget(mapping.host(gw.service, gw.namespace))
    for i, item in enumerate(_list(entry.get("Services"), "Services", issues)):
        path = f"Services[{i}]"
        service = _named(item, path, issues)
        if service is None:
            continue
        host = gw.host(service)
        if host in hosts:
            issues.error(f"{path}.Name", f"{service['Name']!r} is linked twice")
            continue
        hosts.append(host)
        name = f"{gw.name}-{service['Name']}"
        target = (WeightedDestination(Destination(host)),)
        if http:
            routes: dict[str, Any] = {"http": (HttpRoute(name=name, route=target),)}
        else:
            routes = {"tcp": (TcpRoute(route=target),)}
        out.append(gw.bound(name, (host,), **routes))
        policy = TrafficPolicy(tls=_origination(service, path, issues))
        rule = DestinationRule(
            name, gw.namespace, host, policy, workload_selector=gw.selector, provenance=prov
        )
        out.append(rule)
        # Everyone else reaches the service through the gateway's instances, over mesh mTLS;
        # a TCP stream names its service by SNI (see the note above).
        via_policy = None if http else TrafficPolicy(tls=ClientTls(ISTIO_MUTUAL, sni=host))
        out.append(
            DestinationRule(
                f"{name}-via", gw.namespace, host, via_policy, redirect=via, provenance=prov
            )
        )
    tls = ServerTls(mode=ISTIO_MUTUAL)
    # HTTP is routed by Host behind the gateway's mTLS; TCP can only be told apart by SNI,
    # the service's host, which the sidecars send (the via rule above).
    server_hosts = ("*",) if http else tuple(hosts)
    protocol = "HTTPS" if http else "TLS"
    servers = [_server(gw, port, protocol, server_hosts, tls, "mesh", "Services")] if hosts else []
    return (gw.gateway(servers), *out)
