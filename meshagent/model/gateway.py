"""Gateways: the servers (ports, protocols, hosts, TLS) a router proxy exposes.

The shape of Istio's networking Gateway, which other sources (Consul ingress and terminating
gateways) are converted to as well. A router proxy (ProxySpec.proxy_type ROUTER) serves the
Gateways whose selector matches its labels.

Server hosts are kept as Istio's "namespace/host" entries, normalized: a bare host means any
namespace ("*/host") and "./host" the Gateway's own namespace, so a consumer never needs the
Gateway to read them. The host part is as written (a DNS name, `*.example.com` or `*`); it is
never resolved against a domain suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.labels import NO_LABELS, Labels
from meshagent.model.source import Provenance

# Istio's ServerTLSSettings.TLSmode.
PASSTHROUGH = "PASSTHROUGH"
SIMPLE = "SIMPLE"
MUTUAL = "MUTUAL"
AUTO_PASSTHROUGH = "AUTO_PASSTHROUGH"
ISTIO_MUTUAL = "ISTIO_MUTUAL"
OPTIONAL_MUTUAL = "OPTIONAL_MUTUAL"
SERVER_TLS_MODES = (PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL)
# Modes in which the gateway terminates TLS (the others forward it by SNI).
TERMINATING_MODES = (SIMPLE, MUTUAL, ISTIO_MUTUAL, OPTIONAL_MUTUAL)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's TLS settings (Istio's ServerTLSSettings).

    credential_name names a Credential in the router's namespace (snapshot.credentials);
    credential_names is Istio's newer list form (a certificate per key type). The file
    fields (server_certificate, private_key, ca_certificates, ca_crl) are paths on the
    gateway's host, Istio's mounted-files form. Protocol versions are "" (Envoy's default)
    or Istio's names (TLSV1_2, ...). workload_certificate (not in Istio; Consul's ingress
    `TLS.Enabled`): a SIMPLE server presents the router's own workload certificate
    (`default`, from the mesh CA) instead of a credential or files.
    """

    mode: str = PASSTHROUGH
    https_redirect: bool = False
    credential_name: str = ""
    credential_names: tuple[str, ...] = ()
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    min_protocol_version: str = ""
    max_protocol_version: str = ""
    cipher_suites: tuple[str, ...] = ()
    workload_certificate: bool = False

    @property
    def terminates(self) -> bool:
        """Whether the gateway terminates TLS (else it forwards the stream by SNI)."""
        return self.mode in TERMINATING_MODES

    @property
    def credentials(self) -> tuple[str, ...]:
        """Every credential name the settings refer to, credential_name first."""
        first = (self.credential_name,) if self.credential_name else ()
        return first + tuple(n for n in self.credential_names if n != self.credential_name)


@dataclass(frozen=True, slots=True)
class GatewayServer:
    """One server of a Gateway: a port, the hosts it serves there, and its TLS.

    protocol is upper case (HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, MONGO, ...). hosts are
    normalized "namespace/host" entries (see the module docstring). bind: the address to
    listen on ("" = all addresses). target_port: Istio's deprecated port.targetPort
    (0 = unset). index: the server's position in its Gateway, for messages.
    """

    port: int
    protocol: str
    hosts: tuple[str, ...]
    port_name: str = ""
    target_port: int = 0
    bind: str = ""
    tls: ServerTls | None = None
    default_endpoint: str = ""
    name: str = ""
    index: int = 0

    @property
    def is_http(self) -> bool:
        """Whether the gateway speaks HTTP on this server's plain port."""
        return self.protocol in HTTP_PROTOCOLS

    @property
    def terminates_https(self) -> bool:
        """An HTTPS server whose TLS the gateway terminates: HTTP routing behind TLS."""
        return self.protocol == "HTTPS" and self.tls is not None and self.tls.terminates

    @property
    def terminates_tls(self) -> bool:
        """A TLS server whose TLS the gateway terminates: TCP routing behind TLS."""
        return self.protocol == "TLS" and self.tls is not None and self.tls.terminates


HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway: servers for the router proxies whose labels its selector matches.

    selector: sorted labels; empty selects every router (Istio's semantics for an empty
    selector). provenance says where it came from (an Istio document or a Consul entry).
    """

    namespace: str
    name: str
    servers: tuple[GatewayServer, ...]
    selector: Labels = NO_LABELS
    provenance: Provenance | None = None

    @property
    def key(self) -> str:
        """Its key in MeshSnapshot.gateways: "namespace/name"."""
        return f"{self.namespace}/{self.name}"


def server_host(entry: str, gateway_namespace: str) -> str:
    """A server host as Istio writes it, normalized to "namespace/host": a bare host is
    "*/host", "./host" is the gateway's namespace."""
    namespace, slash, host = entry.partition("/")
    if not slash:
        return f"*/{entry}"
    if namespace == ".":
        return f"{gateway_namespace}/{host}"
    return entry


def split_server_host(entry: str) -> tuple[str, str]:
    """(namespace, host) of a normalized server host ("*" namespace: any)."""
    namespace, _, host = entry.partition("/")
    return namespace, host


# The reserved gateway name that binds a VirtualService to sidecars.
MESH_GATEWAY = "mesh"


def gateway_key(reference: str, namespace: str) -> str:
    """A VirtualService's gateway reference as the "namespace/name" key of the Gateway, as
    Istio resolves it: "ns/name" as is ("./name" in namespace); a short "name" in namespace
    (the VirtualService's); the legacy "name.ns[.svc.<suffix>]" as "ns/name"."""
    if "/" in reference:
        ns, _, name = reference.partition("/")
        return f"{namespace}/{name}" if ns == "." else reference
    name, dot, rest = reference.partition(".")
    if not dot:
        return f"{namespace}/{reference}"
    return f"{rest.partition('.')[0]}/{name}"


def bound_gateways(gateways: tuple[str, ...], namespace: str) -> frozenset[str]:
    """The "namespace/name" keys of the Gateways a VirtualService's `gateways:` names (mesh
    excluded). No gateways at all means the mesh only: an empty set."""
    return frozenset(gateway_key(g, namespace) for g in gateways if g != MESH_GATEWAY)


def match_applies(match_gateways: tuple[str, ...], namespace: str, gateway: str) -> bool:
    """Whether a route match with `gateways:` match_gateways (of a VirtualService in
    namespace) holds on gateway: MESH_GATEWAY for sidecars, else a Gateway's
    "namespace/name" key. No match gateways: it holds wherever the VirtualService binds."""
    if not match_gateways:
        return True
    if gateway == MESH_GATEWAY:
        return MESH_GATEWAY in match_gateways
    return any(g != MESH_GATEWAY and gateway_key(g, namespace) == gateway for g in match_gateways)
