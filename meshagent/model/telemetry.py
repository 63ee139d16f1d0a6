"""Telemetry: Istio's Telemetry resources (telemetry.istio.io) and the providers they name
(the agent config's `extension_providers`, Istio's meshConfig.extensionProviders).

A field left unset in the resource is None here, so that precedence can tell "not set, inherit"
from "set to the default" (Istio's wrapper types).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshagent.model.labels import Labels
from meshagent.model.source import Provenance

CLIENT_AND_SERVER = "CLIENT_AND_SERVER"
CLIENT = "CLIENT"
SERVER = "SERVER"

# Istio's built-in provider, present in its default meshConfig: `providers: [{name: envoy}]`
# works without any extension_providers entry.
BUILTIN_FILE_PROVIDER = "envoy"
DEV_STDOUT = "/dev/stdout"


@dataclass(frozen=True, slots=True)
class CustomTag:
    """A tag tracing adds to every span: a literal, a request header or an environment
    variable of Envoy's process (kind), with a default for the last two."""

    name: str
    kind: str  # "literal", "header", "environment"
    value: str  # the literal, or the header / variable name
    default_value: str = ""


@dataclass(frozen=True, slots=True)
class AccessLogRule:
    """One entry of a Telemetry's accessLogging list."""

    mode: str = CLIENT_AND_SERVER
    providers: tuple[str, ...] = ()
    disabled: bool | None = None
    filter: str | None = None  # a CEL expression; None: no filter given


@dataclass(frozen=True, slots=True)
class TracingRule:
    """One entry of a Telemetry's tracing list (None: not set, inherited)."""

    mode: str = CLIENT_AND_SERVER
    providers: tuple[str, ...] = ()
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None
    custom_tags: tuple[CustomTag, ...] | None = None
    use_request_id_for_trace_sampling: bool | None = None
    enable_istio_tags: bool | None = None
    disable_context_propagation: bool | None = None


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A Telemetry resource. selector None: namespace-wide (mesh-wide in the root namespace);
    target_gateways: the names of the Gateways its targetRefs name (it then applies to the
    routers of those gateways only, never to a sidecar). `metrics` are validated only."""

    name: str
    namespace: str
    selector: Labels | None = None
    target_gateways: tuple[str, ...] = ()
    targeted: bool = False  # targetRef / targetRefs set (of any kind)
    access_logging: tuple[AccessLogRule, ...] = ()
    tracing: tuple[TracingRule, ...] = ()
    provenance: Provenance | None = None


@dataclass(frozen=True, slots=True)
class FileAccessLogProvider:
    """envoyFileAccessLog: Envoy's file access logger. text "" and labels None: Istio's default
    text format; labels (JSON keys to Envoy format strings, in order): the JSON format (empty:
    Istio's default JSON keys)."""

    name: str
    path: str = DEV_STDOUT
    text: str = ""
    labels: tuple[tuple[str, str], ...] | None = None
    omit_empty_values: bool = False


@dataclass(frozen=True, slots=True)
class OtelAccessLogProvider:
    """envoyOtelAls: access log records sent over OTLP/gRPC to a mesh service."""

    name: str
    service: str
    port: int
    log_name: str = ""
    text: str = ""
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TracingProvider:
    """zipkin (spans as Zipkin v2 JSON over HTTP to `path`) or opentelemetry (OTLP/gRPC)
    to a mesh service (host or namespace/host) and port: its outbound cluster, as Istio."""

    name: str
    kind: str  # "zipkin" or "opentelemetry"
    service: str
    port: int
    max_tag_length: int = 0
    path: str = "/api/v2/spans"  # zipkin only
    enable_64bit_trace_id: bool = False  # zipkin only
    timeout_ms: int = 0  # opentelemetry: the export's gRPC timeout (0: Envoy's)


TelemetryProvider = FileAccessLogProvider | OtelAccessLogProvider | TracingProvider
