"""HTTP and TCP routing, as VirtualService declares it, with names resolved to FQDNs.

Durations are whole milliseconds; percentages are floats in [0, 100].
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from meshagent.model.labels import NO_LABELS, Labels
from meshagent.model.source import Provenance


class MatchKind(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: MatchKind
    value: str


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A header (or query parameter) condition. match None means "present with any value"."""

    name: str
    match: StringMatch | None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One HTTPMatchRequest: all of its conditions must hold."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()
    without_headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[HeaderMatch, ...] = ()
    ignore_uri_case: bool = False
    port: int | None = None
    source_labels: Labels = NO_LABELS
    # Istio's match.gateways as written ("mesh", "name", "ns/name"): when set, the match
    # applies only there, whatever the VirtualService's own gateways say.
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Destination:
    """A service (FQDN), optionally a subset of it and a port of it."""

    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOps:
    request_set: tuple[tuple[str, str], ...] = ()
    request_add: tuple[tuple[str, str], ...] = ()
    request_remove: tuple[str, ...] = ()
    response_set: tuple[tuple[str, str], ...] = ()
    response_add: tuple[tuple[str, str], ...] = ()
    response_remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(
            (
                self.request_set,
                self.request_add,
                self.request_remove,
                self.response_set,
                self.response_add,
                self.response_remove,
            )
        )


NO_HEADER_OPS = HeaderOps()


@dataclass(frozen=True, slots=True)
class WeightedDestination:
    destination: Destination
    weight: int = 100
    headers: HeaderOps = NO_HEADER_OPS


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int
    per_try_timeout_ms: int | None = None
    retry_on: str = ""
    retry_remote_localities: bool = False


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed_delay_ms: int
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class FaultAbort:
    http_status: int | None = None
    grpc_status: str | None = None
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str = ""
    authority: str = ""
    port: int | None = None
    derive_port: str = ""  # "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT" | ""
    scheme: str = ""
    code: int = 301


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str = ""
    authority: str = ""
    uri_regex_match: str = ""
    uri_regex_rewrite: str = ""


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str | None = None
    body_is_bytes: bool = False  # body holds base64 when True


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_ms: int | None = None
    allow_credentials: bool | None = None
    unmatched_preflights_forward: bool = True


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: Destination
    percent: float | None = None  # None: every request


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTPRoute. Exactly one of route / redirect / direct_response applies.

    delegate: (namespace, name) of the delegate VirtualService whose routes replace this one;
    only the normalizer sees such routes (it merges the delegate's in, as Istio does).
    """

    name: str = ""
    matches: tuple[HttpMatch, ...] = ()
    route: tuple[WeightedDestination, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    timeout_ms: int | None = None
    retries: Retry | None = None
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    headers: HeaderOps = NO_HEADER_OPS
    cors: CorsPolicy | None = None
    delegate: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class L4Match:
    """TCP/TLS route match: destination port, subnets, SNI (TLS only), source labels, and
    the gateways it holds on (as written; empty: all the VirtualService's)."""

    port: int | None = None
    destination_subnets: tuple[str, ...] = ()
    sni_hosts: tuple[str, ...] = ()
    source_labels: Labels = NO_LABELS
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TcpRoute:
    matches: tuple[L4Match, ...] = ()
    route: tuple[WeightedDestination, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualService:
    """Routing for a set of hosts. Hosts and destinations are FQDNs (short names resolved)."""

    name: str
    namespace: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()
    tls: tuple[TcpRoute, ...] = ()
    export_to: tuple[str, ...] = ()
    provenance: Provenance | None = None

    @property
    def applies_to_sidecars(self) -> bool:
        """Istio: no gateways, or the reserved `mesh` gateway, means the rule binds sidecars."""
        return not self.gateways or "mesh" in self.gateways
