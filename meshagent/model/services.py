"""Services, their endpoints and the workloads behind them.

Built by the normalizer from ServiceEntry/WorkloadEntry (and later Consul and Kubernetes).
Endpoints live apart from their Service so that an endpoint change leaves the Service object,
and therefore its Envoy cluster, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshagent.model.labels import NO_LABELS, Labels
from meshagent.model.source import Provenance

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
# Istio's protocol names; a port with another (or none) has its protocol detected from the
# first bytes ("sniffed"), as Istio does for ports it cannot name a protocol for.
KNOWN_PROTOCOLS = HTTP_PROTOCOLS | {"HTTPS", "TCP", "TLS", "MONGO", "MYSQL", "REDIS", "UDP"}


class Resolution(StrEnum):
    """How Envoy finds a service's endpoints (Istio's ServiceEntry.resolution)."""

    STATIC = "STATIC"  # listed endpoints, served by EDS
    DNS = "DNS"  # Envoy resolves names (STRICT_DNS)
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"  # Envoy resolves names (LOGICAL_DNS)
    NONE = "NONE"  # pass-through to the original destination


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A port a service is reached on. protocol is Istio's upper-case name (HTTP, TCP, ...)."""

    number: int
    name: str
    protocol: str
    target_port: int | None = None

    @property
    def is_http(self) -> bool:
        return self.protocol.upper() in HTTP_PROTOCOLS

    @property
    def is_http2(self) -> bool:
        return self.protocol.upper() in ("HTTP2", "GRPC", "GRPC-WEB")


@dataclass(frozen=True, slots=True)
class Service:
    """A mesh host (FQDN or wildcard) and how it is reached.

    addresses are the VIPs (or CIDRs) the configuration gives; auto_addresses the VIPs the
    normalizer allocated when it gives none: () or (IPv4 VIP from 240.240.0.0/16, IPv6 VIP
    from 2001:2::/48), the same on every host (normalize/vips.py). The DNS proxy and the
    outbound listeners read these, so that both agree on a service's address.
    """

    host: str
    namespace: str
    ports: tuple[ServicePort, ...]
    resolution: Resolution
    mesh_external: bool = False
    addresses: tuple[str, ...] = ()
    workload_selector: Labels | None = None
    export_to: tuple[str, ...] = ()
    provenance: Provenance | None = None
    auto_addresses: tuple[str, ...] = ()

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.number == number:
                return p
        return None

    def client_addresses(self) -> tuple[str, ...]:
        """The addresses (IPs or CIDRs) clients reach this service on: the given ones, else
        the allocated VIPs."""
        return self.addresses or self.auto_addresses


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service.

    ports maps a service port *name* to the port on this endpoint; a name not listed means
    the service port's target_port, else its number (Istio's rule).
    weight is the relative load-balancing weight (>= 1).
    """

    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: Labels = NO_LABELS
    weight: int = 1
    locality: str = ""
    network: str = ""
    service_account: str = ""
    healthy: bool = True
    provenance: Provenance | None = None

    def port_for(self, port: ServicePort) -> int:
        for name, number in self.ports:
            if name == port.name:
                return number
        return port.target_port or port.number


@dataclass(frozen=True, slots=True)
class Workload:
    """A WorkloadEntry: a VM or bare-metal instance that serves traffic."""

    name: str
    namespace: str
    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: Labels = NO_LABELS
    weight: int = 1
    locality: str = ""
    network: str = ""
    service_account: str = ""
    provenance: Provenance | None = None
