"""Extensions of the generated configuration: EnvoyFilter (networking.istio.io/v1alpha3) and
WasmPlugin (extensions.istio.io/v1alpha1).

Built by the normalizer; the translator's patch stage (meshagent.xds.envoyfilter) applies
them to the assembled resources. Patch values are kept as the deterministic serialization of
the Envoy message they were validated as (`value_type` names it), so the model stays free
of protobuf and an unchanged EnvoyFilter compares equal without decoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.labels import Labels
from meshagent.model.source import Provenance

# Match contexts (EnvoyFilter.PatchContext).
ANY = "ANY"
SIDECAR_INBOUND = "SIDECAR_INBOUND"
SIDECAR_OUTBOUND = "SIDECAR_OUTBOUND"
GATEWAY = "GATEWAY"

# Deprecated Envoy filter names Istio still matches on (with a validation warning), and the
# names Envoy has now.
DEPRECATED_FILTER_NAMES = {
    "envoy.http_connection_manager": "envoy.filters.network.http_connection_manager",
    "envoy.router": "envoy.filters.http.router",
    "envoy.cors": "envoy.filters.http.cors",
    "envoy.fault": "envoy.filters.http.fault",
    "envoy.lua": "envoy.filters.http.lua",
    "envoy.tcp_proxy": "envoy.filters.network.tcp_proxy",
}


@dataclass(frozen=True, slots=True)
class FilterChainMatch:
    """EnvoyFilter.ListenerMatch.FilterChainMatch; "" / 0: not matched on."""

    name: str = ""
    sni: str = ""
    transport_protocol: str = ""
    application_protocols: str = ""  # comma-separated, all must be present
    destination_port: int = 0
    filter: str = ""  # the network filter's name
    sub_filter: str = ""  # the HTTP filter's name (within the HCM)


@dataclass(frozen=True, slots=True)
class ListenerMatch:
    port_number: int = 0
    name: str = ""
    filter_chain: FilterChainMatch | None = None
    listener_filter: str = ""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """routeConfiguration: the route configuration, then vhost, then route."""

    port_number: int = 0
    port_name: str = ""
    gateway: str = ""
    name: str = ""
    vhost: str | None = None  # None: no vhost match; "": any virtual host
    vhost_domain: str = ""
    route: str | None = None  # None: no route match; "": any route
    route_action: str = "ANY"  # ANY, ROUTE, REDIRECT, DIRECT_RESPONSE


@dataclass(frozen=True, slots=True)
class ClusterMatch:
    port_number: int = 0
    service: str = ""
    subset: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    """One configPatches entry. `index` is its position in the EnvoyFilter (for errors)."""

    index: int
    apply_to: str
    operation: str
    context: str = ANY
    proxy_version: str = ""  # a regex, "" when not matched on
    proxy_metadata: tuple[tuple[str, str], ...] = ()
    listener: ListenerMatch | None = None
    route: RouteMatch | None = None
    cluster: ClusterMatch | None = None
    value_type: str = ""  # full name of the Envoy message of value; "" when no value
    value: bytes = b""  # its deterministic serialization


@dataclass(frozen=True, slots=True)
class TargetRef:
    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class EnvoyFilter:
    """One EnvoyFilter. selector None and no targets: every proxy of the namespace (every
    proxy of the mesh in the root namespace). created: metadata.creationTimestamp as written
    ("" when absent), which orders filters of equal priority."""

    name: str
    namespace: str
    patches: tuple[ConfigPatch, ...] = ()
    priority: int = 0
    selector: Labels | None = None
    target_refs: tuple[TargetRef, ...] = ()
    created: str = ""
    provenance: Provenance | None = None


@dataclass(frozen=True, slots=True)
class WasmPlugin:
    """One WasmPlugin, translated to an Envoy Wasm HTTP filter.

    module: a local file path (file:// URLs and scheme-less paths); remote is set instead for
    http(s)/oci URLs, which the agent does not fetch. config_json: pluginConfig as JSON.
    match: (mode, ports) traffic selectors; () matches all traffic.
    """

    name: str
    namespace: str
    module: str = ""
    remote: str = ""
    sha256: str = ""
    plugin_name: str = ""
    config_json: str = ""
    phase: str = "UNSPECIFIED_PHASE"
    priority: int = 0
    fail_open: bool = False
    env: tuple[tuple[str, str], ...] = ()  # INLINE environment variables
    host_env: tuple[str, ...] = ()  # HOST environment variables (names)
    match: tuple[tuple[str, tuple[int, ...]], ...] = ()
    plugin_type: str = "HTTP"
    selector: Labels | None = None
    target_refs: tuple[TargetRef, ...] = ()
    created: str = ""
    provenance: Provenance | None = None
