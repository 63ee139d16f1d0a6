"""Sidecar (networking.istio.io): what one proxy imports from the mesh, and its own listeners.

Built by the normalizer from a validated Sidecar; read by xds/translate/scope.py, which picks
the Sidecar that applies to the proxy and filters the snapshot the proxy is translated from.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.labels import Labels
from meshagent.model.source import Provenance

# Namespace parts of an egress host (Istio's): any namespace, the proxy's own, none at all.
ANY_NAMESPACE = "*"
CURRENT_NAMESPACE = "."
NO_NAMESPACE = "~"
UNIX_PREFIX = "unix://"


@dataclass(frozen=True, slots=True)
class EgressHost:
    """`namespace/host` of egress[].hosts: host is an FQDN, `*.suffix` or `*`."""

    namespace: str
    host: str


@dataclass(frozen=True, slots=True)
class SidecarPort:
    """The port of a Sidecar listener; protocol is Istio's upper-case name ("" = unset)."""

    number: int
    protocol: str = ""
    name: str = ""
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class EgressListener:
    """One egress[] entry. port None: the catch-all (the hosts scope every port); else the
    hosts are imported on that port only, on a listener bound to bind ("" = the proxy's
    outbound address)."""

    hosts: tuple[EgressHost, ...]
    port: SidecarPort | None = None
    bind: str = ""
    capture_mode: str = ""


@dataclass(frozen=True, slots=True)
class IngressTls:
    """ingress[].tls: SIMPLE or MUTUAL termination with certificates from files."""

    mode: str
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    min_protocol_version: str = ""
    max_protocol_version: str = ""
    cipher_suites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngressListener:
    """One ingress[] entry: mesh traffic on port (bound to bind, "" = the proxy's inbound
    address) goes to default_endpoint (`127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`,
    `unix://path`; "" = the port's targetPort, else its number, on 127.0.0.1)."""

    port: SidecarPort
    bind: str = ""
    default_endpoint: str = ""
    capture_mode: str = ""
    tls: IngressTls | None = None


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """outboundTrafficPolicy.egressProxy: where unknown destinations go under ALLOW_ANY."""

    host: str
    port: int
    subset: str = ""


@dataclass(frozen=True, slots=True)
class Sidecar:
    """A Sidecar resource. workload_selector None: it applies to its whole namespace (or, in
    the root namespace, to the whole mesh). outbound_traffic_policy "" = the mesh's."""

    name: str
    namespace: str
    workload_selector: Labels | None = None
    egress: tuple[EgressListener, ...] = ()
    ingress: tuple[IngressListener, ...] = ()
    outbound_traffic_policy: str = ""
    egress_proxy: EgressProxy | None = None
    provenance: Provenance | None = None

    @property
    def key(self) -> str:
        """Its key in MeshSnapshot.sidecars."""
        return f"{self.namespace}/{self.name}"
