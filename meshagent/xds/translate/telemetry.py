"""Telemetry resources as Envoy access logs and tracing, with Istio's precedence and merging
(pilot/pkg/model/telemetry.go, telemetry_logging.go, networking/core/tracing.go).

Which Telemetries apply to a proxy side: the mesh-wide one (root namespace, no selector), then
the namespace's (no selector), then the first (by name) of the namespace whose selector
matches; later ones override earlier ones. Sides: CLIENT (outbound listeners; gateways) and
SERVER (a local workload's inbound listeners). The client side of a proxy is in
`node.namespace`, and a selector there matches when it matches `node.labels` or, when the
proxy has exactly one local workload in that namespace (Istio's sidecar case), that
workload's labels: with several, one workload's Telemetry does not decide for the outbound
listeners they share. A Telemetry with
targetRefs applies only to the router of a Gateway it names (label
`gateway.networking.k8s.io/gateway-name`).

Every HCM or tcp_proxy builder takes a ListenerTelemetry and calls `apply_http` /
`apply_tcp`: the one place access logs and tracing are put on a listener.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2, substitution_format_string_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.request_id.uuid.v3 import uuid_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2
from opentelemetry.proto.common.v1 import common_pb2

from meshagent.model import LocalWorkload, MeshSnapshot, ProxySpec, selector_matches
from meshagent.model.labels import Labels
from meshagent.model.proxy import ROUTER
from meshagent.model.telemetry import (
    BUILTIN_FILE_PROVIDER,
    CLIENT,
    CLIENT_AND_SERVER,
    SERVER,
    CustomTag,
    FileAccessLogProvider,
    OtelAccessLogProvider,
    Telemetry,
    TelemetryProvider,
    TracingProvider,
    TracingRule,
)
from meshagent.xds import names
from meshagent.xds.translate import protos

FILE_ACCESS_LOG = "envoy.access_loggers.file"
OTEL_ACCESS_LOG = "envoy.access_loggers.open_telemetry"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
OTEL_TRACER = "envoy.tracers.opentelemetry"
UUID_REQUEST_ID = "envoy.request_id.uuid"
T = TypeVar("T")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
OTEL_LOG_NAME = "otel_envoy_accesslog"
# PILOT_TRACE_SAMPLING's default: the sampling percentage when no Telemetry sets one.
DEFAULT_SAMPLING = 1.0
ZIPKIN_TIMEOUT_MS = 5_000  # Istio's default for the collector request

# Istio's default access log format (EnvoyTextLogFormat) and JSON keys
# (EnvoyJSONLogFormatIstio), so that tools reading Istio's sidecar logs read these.
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
ISTIO_JSON_FORMAT: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
)


@dataclass(frozen=True, slots=True)
class ListenerTelemetry:
    """What one listener side logs and traces. The messages are shared: copied into place
    (apply_http, apply_tcp), never mutated."""

    access_logs: tuple[accesslog_pb2.AccessLog, ...] = ()
    tracing: hcm.HttpConnectionManager.Tracing | None = field(default=None, compare=False)
    request_id: hcm.RequestIDExtension | None = field(default=None, compare=False)

    def apply_http(self, manager: hcm.HttpConnectionManager) -> None:
        """Access logs and tracing on an HTTP connection manager."""
        manager.access_log.extend(self.access_logs)
        if self.tracing is not None:
            manager.tracing.CopyFrom(self.tracing)
        if self.request_id is not None:
            manager.request_id_extension.CopyFrom(self.request_id)

    def apply_tcp(self, proxy: tcp_proxy_pb2.TcpProxy) -> None:
        """Access logs on a tcp_proxy (tracing is HTTP only)."""
        proxy.access_log.extend(self.access_logs)


NO_TELEMETRY = ListenerTelemetry()


# -- which Telemetries apply ---------------------------------------------------------------


def _in(telemetries: Mapping[str, Telemetry], namespace: str) -> list[Telemetry]:
    # Istio takes the oldest; files carry no creation time, so the name decides.
    return sorted(
        (t for t in telemetries.values() if t.namespace == namespace),
        key=lambda t: t.name,
    )


def _namespace_wide(telemetries: Mapping[str, Telemetry], namespace: str) -> Telemetry | None:
    for t in _in(telemetries, namespace):
        if t.selector is None and not t.targeted:
            return t
    return None


def applicable(
    telemetries: Mapping[str, Telemetry],
    root: str,
    namespace: str,
    labels: Sequence[Labels],
    gateway: str = "",
) -> list[Telemetry]:
    """The Telemetries for a proxy side in namespace whose labels are any of labels, least
    specific first: mesh-wide, namespace-wide, then the workload's own (gateway: the name of
    the Gateway a router serves, for targetRefs)."""
    out = []
    mesh = _namespace_wide(telemetries, root) if root else None
    if mesh is not None:
        out.append(mesh)
    if namespace != root:
        ns = _namespace_wide(telemetries, namespace)
        if ns is not None:
            out.append(ns)
    for t in _in(telemetries, namespace):
        if t.selector is not None and any(selector_matches(t.selector, x) for x in labels):
            out.append(t)
            break
        if gateway and gateway in t.target_gateways:
            out.append(t)
            break
    return out


def _mode_matches(rule_mode: str, mode: str) -> bool:
    return rule_mode in (CLIENT_AND_SERVER, "") or rule_mode == mode


def merge_access_logging(
    telemetries: Sequence[Telemetry], defaults: Sequence[str], mode: str
) -> dict[str, str | None] | None:
    """Provider name -> CEL filter (None: no filter) of the access logs for one side, as
    Istio's mergeLogs; None when neither a Telemetry nor default_providers asks for logs."""
    levels = [t.access_logging for t in telemetries if t.access_logging]
    if not levels:
        return {name: None for name in defaults} if defaults else None
    names: Sequence[str] = defaults
    filters: dict[str, str | None] = {}
    for level in levels:
        found: list[str] = []
        for rule in level:
            found += rule.providers
            for name in rule.providers:
                filters[name] = rule.filter
        if found:
            names = found
    in_scope = set(names)
    out: dict[str, str | None] = {}
    parent: Sequence[str] = defaults
    for level in levels:
        for rule in level:
            rule_names = rule.providers or parent
            parent = rule_names
            for name in rule_names:
                if name not in in_scope or not _mode_matches(rule.mode, mode):
                    continue
                if rule.disabled:
                    out.pop(name, None)
                else:
                    out[name] = filters.get(name)
    return out


@dataclass(frozen=True, slots=True)
class TracingSpec:
    """The merged tracing of one side (Istio's TracingSpec)."""

    provider: str = ""
    disabled: bool = False
    sampling: float | None = None
    custom_tags: tuple[CustomTag, ...] = ()
    use_request_id_for_trace_sampling: bool = True
    enable_istio_tags: bool = True


def merge_tracing(
    telemetries: Sequence[Telemetry], defaults: Sequence[str], mode: str
) -> TracingSpec | None:
    """The tracing of one side, as Istio's Telemetries.Tracing: None when neither a
    Telemetry nor default_providers sets tracing up."""
    rules: list[TracingRule] = [r for t in telemetries for r in t.tracing]
    if not rules and not defaults:
        return None
    spec = TracingSpec(provider=defaults[0] if defaults else "")
    for rule in rules:
        if not _mode_matches(rule.mode, mode):
            continue
        spec = _merged(spec, rule)
    if not spec.provider:
        return TracingSpec(disabled=True)
    return spec


def _merged(spec: TracingSpec, rule: TracingRule) -> TracingSpec:
    return TracingSpec(
        provider=rule.providers[0] if rule.providers else spec.provider,
        disabled=_pick(rule.disable_span_reporting, spec.disabled),
        sampling=_pick(rule.random_sampling_percentage, spec.sampling),
        custom_tags=_pick(rule.custom_tags, spec.custom_tags),
        use_request_id_for_trace_sampling=_pick(
            rule.use_request_id_for_trace_sampling, spec.use_request_id_for_trace_sampling
        ),
        enable_istio_tags=_pick(rule.enable_istio_tags, spec.enable_istio_tags),
    )


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value


# -- building Envoy's configuration -----------------------------------------------------


def find_provider(proxy: ProxySpec, name: str) -> TelemetryProvider | None:
    """The provider named name (case-insensitive, as Istio's fetchProvider); `envoy` is
    Istio's built-in file logger on /dev/stdout unless the config defines it."""
    for p in proxy.telemetry_providers:
        if p.name.lower() == name.lower():
            return p
    if name.lower() == BUILTIN_FILE_PROVIDER:
        return FileAccessLogProvider(name=BUILTIN_FILE_PROVIDER)
    return None


def _cluster_of(snapshot: MeshSnapshot, service: str, port: int) -> tuple[str, str] | None:
    """(host, outbound cluster) of a provider's service (host or namespace/host), as Istio's
    LookupCluster; None when it is not a mesh service with that port."""
    namespace, _, host = service.rpartition("/")
    found = snapshot.services.get(host)
    if found is None or (namespace and found.namespace != namespace):
        return None
    if found.port(port) is None:
        return None
    return host, names.cluster_name(port, host)


def _text_format(
    text: str, omit_empty: bool = False
) -> substitution_format_string_pb2.SubstitutionFormatString:
    if text and not text.endswith("\n"):
        text += "\n"  # Istio adds the newline a format lacks
    out = substitution_format_string_pb2.SubstitutionFormatString(omit_empty_values=omit_empty)
    out.text_format_source.inline_string = text or ISTIO_TEXT_FORMAT
    return out


def _json_format(
    labels: Iterable[tuple[str, str]], omit_empty: bool
) -> substitution_format_string_pb2.SubstitutionFormatString:
    out = substitution_format_string_pb2.SubstitutionFormatString(omit_empty_values=omit_empty)
    out.json_format.update(dict(labels) or dict(ISTIO_JSON_FORMAT))
    out.json_format_options.sort_properties = False
    return out


def _file_log(provider: FileAccessLogProvider) -> file_pb2.FileAccessLog:
    out = file_pb2.FileAccessLog(path=provider.path)
    if provider.labels is not None:
        out.log_format.CopyFrom(_json_format(provider.labels, provider.omit_empty_values))
    else:
        out.log_format.CopyFrom(_text_format(provider.text, provider.omit_empty_values))
    return out


def _otel_log(
    snapshot: MeshSnapshot, provider: OtelAccessLogProvider
) -> logs_service_pb2.OpenTelemetryAccessLogConfig | None:
    target = _cluster_of(snapshot, provider.service, provider.port)
    if target is None:
        return None
    common = als_pb2.CommonGrpcAccessLogConfig(
        log_name=provider.log_name or OTEL_LOG_NAME,
        transport_api_version=config_source_pb2.V3,
    )
    common.grpc_service.envoy_grpc.cluster_name = target[1]
    common.grpc_service.envoy_grpc.authority = target[0]
    out = logs_service_pb2.OpenTelemetryAccessLogConfig(
        common_config=common, disable_builtin_labels=True
    )
    out.body.string_value = provider.text or ISTIO_TEXT_FORMAT
    for key, value in sorted(provider.labels):
        out.attributes.values.append(
            common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
        )
    return out


def access_log(
    snapshot: MeshSnapshot, provider: TelemetryProvider, expression: str | None
) -> accesslog_pb2.AccessLog | None:
    """One provider's AccessLog, with its CEL filter; None for a provider that logs nothing
    (a tracer) or whose collector is not in the mesh."""
    if isinstance(provider, FileAccessLogProvider):
        out = accesslog_pb2.AccessLog(name=FILE_ACCESS_LOG)
        out.typed_config.Pack(_file_log(provider))
    elif isinstance(provider, OtelAccessLogProvider):
        config = _otel_log(snapshot, provider)
        if config is None:
            return None
        out = accesslog_pb2.AccessLog(name=OTEL_ACCESS_LOG)
        out.typed_config.Pack(config)
    else:
        return None
    if expression:
        extension = out.filter.extension_filter
        extension.name = CEL_FILTER
        extension.typed_config.Pack(cel_pb2.ExpressionFilter(expression=expression))
    return out


def _percent(value: float) -> percent_pb2.Percent:
    return percent_pb2.Percent(value=value)


def _tracer(
    snapshot: MeshSnapshot, proxy: ProxySpec, provider: TracingProvider
) -> http_tracer_pb2.Tracing.Http | None:
    target = _cluster_of(snapshot, provider.service, provider.port)
    if target is None:
        return None
    host, cluster = target
    if provider.kind == "zipkin":
        zipkin = zipkin_pb2.ZipkinConfig(
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            trace_id_128bit=not provider.enable_64bit_trace_id,
            shared_span_context=wrappers_pb2.BoolValue(value=False),
        )
        uri = zipkin.collector_service.http_uri
        uri.uri, uri.cluster = f"http://{host}{provider.path}", cluster
        uri.timeout.CopyFrom(protos.duration(ZIPKIN_TIMEOUT_MS))
        out = http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER)
        out.typed_config.Pack(zipkin)
        return out
    grpc = grpc_service_pb2.GrpcService()
    grpc.envoy_grpc.cluster_name, grpc.envoy_grpc.authority = cluster, host
    if provider.timeout_ms:
        grpc.timeout.CopyFrom(protos.duration(provider.timeout_ms))
    otel = opentelemetry_pb2.OpenTelemetryConfig(grpc_service=grpc, service_name=proxy.cluster)
    out = http_tracer_pb2.Tracing.Http(name=OTEL_TRACER)
    out.typed_config.Pack(otel)
    return out


def _istio_tags(proxy: ProxySpec, namespace: str) -> list[custom_tag_pb2.CustomTag]:
    """The literal tags Istio adds to every span (buildServiceTags)."""
    labels = dict(proxy.labels)
    values = {
        "istio.canonical_revision": labels.get("service.istio.io/canonical-revision") or "latest",
        "istio.canonical_service": labels.get("service.istio.io/canonical-name") or "unknown",
        "istio.mesh_id": "unknown",
        "istio.namespace": namespace or "default",
        "istio.cluster_id": "unknown",
    }
    return [
        custom_tag_pb2.CustomTag(tag=k, literal=custom_tag_pb2.CustomTag.Literal(value=v))
        for k, v in values.items()
    ]


def _custom_tag(tag: CustomTag) -> custom_tag_pb2.CustomTag:
    out = custom_tag_pb2.CustomTag(tag=tag.name)
    if tag.kind == "literal":
        out.literal.value = tag.value
    elif tag.kind == "header":
        out.request_header.name, out.request_header.default_value = tag.value, tag.default_value
    else:
        out.environment.name, out.environment.default_value = tag.value, tag.default_value
    return out


def hcm_tracing(
    snapshot: MeshSnapshot, proxy: ProxySpec, spec: TracingSpec, namespace: str
) -> hcm.HttpConnectionManager.Tracing | None:
    """The HCM's tracing for spec; None when span reporting is off or the provider is
    missing, not a tracer, or its collector is not in the mesh (Istio then traces nothing)."""
    if spec.disabled:
        return None
    provider = find_provider(proxy, spec.provider)
    if not isinstance(provider, TracingProvider):
        return None
    tracer = _tracer(snapshot, proxy, provider)
    if tracer is None:
        return None
    out = hcm.HttpConnectionManager.Tracing(provider=tracer)
    if proxy.proxy_type == ROUTER:
        # A gateway's client and server spans are apart (Istio: always, since 1.31).
        out.spawn_upstream_span.value = True
    sampling = DEFAULT_SAMPLING if spec.sampling is None else spec.sampling
    out.client_sampling.CopyFrom(_percent(100.0))
    out.overall_sampling.CopyFrom(_percent(100.0))
    out.random_sampling.CopyFrom(_percent(sampling))
    tags = _istio_tags(proxy, namespace) if spec.enable_istio_tags else []
    tags += [_custom_tag(t) for t in spec.custom_tags]
    out.custom_tags.extend(sorted(tags, key=lambda t: t.tag))
    if provider.max_tag_length:
        out.max_path_tag_length.value = provider.max_tag_length
    return out


def _request_id(spec: TracingSpec | None) -> hcm.RequestIDExtension | None:
    if spec is None or spec.use_request_id_for_trace_sampling:
        return None  # Envoy's UUID extension already samples by the request id
    config = uuid_pb2.UuidRequestIdConfig()
    config.use_request_id_for_trace_sampling.value = False
    out = hcm.RequestIDExtension()
    out.typed_config.Pack(config)
    return out


def side_telemetry(
    snapshot: MeshSnapshot,
    proxy: ProxySpec,
    mode: str,
    namespace: str,
    labels: Sequence[Labels],
) -> ListenerTelemetry:
    """The access logs and tracing of one proxy side (see the module docstring)."""
    gateway = dict(proxy.labels).get(GATEWAY_NAME_LABEL, "") if proxy.proxy_type == ROUTER else ""
    found = applicable(snapshot.telemetries, proxy.root_namespace, namespace, labels, gateway)
    logs: list[accesslog_pb2.AccessLog] = []
    merged = merge_access_logging(found, proxy.default_access_logging, mode)
    for name, expression in sorted((merged or {}).items()):
        provider = find_provider(proxy, name)
        built = access_log(snapshot, provider, expression) if provider is not None else None
        if built is not None:
            logs.append(built)
    spec = merge_tracing(found, proxy.default_tracing, mode)
    tracing = hcm_tracing(snapshot, proxy, spec, namespace) if spec is not None else None
    if not logs and tracing is None:
        return NO_TELEMETRY
    return ListenerTelemetry(tuple(logs), tracing, _request_id(spec) if tracing else None)


def client_telemetry(snapshot: MeshSnapshot, proxy: ProxySpec) -> ListenerTelemetry:
    """The CLIENT side: outbound listeners of a sidecar, every listener of a router."""
    namespace = proxy.namespace
    own = [w.labels for w in proxy.workloads if w.namespace == namespace]
    labels = [proxy.labels, *own] if len(own) == 1 else [proxy.labels]
    return side_telemetry(snapshot, proxy, CLIENT, namespace, labels)


def server_telemetry(
    snapshot: MeshSnapshot, proxy: ProxySpec, workload: LocalWorkload | None
) -> ListenerTelemetry:
    """The SERVER side of a local workload's inbound listeners (None: inbound traffic to no
    declared workload, e.g. the inbound passthrough: the proxy's own namespace and labels)."""
    if workload is None:
        return side_telemetry(snapshot, proxy, SERVER, proxy.namespace, [proxy.labels])
    return side_telemetry(snapshot, proxy, SERVER, workload.namespace, [workload.labels])


def telemetry_inputs(snapshot: MeshSnapshot, proxy: ProxySpec) -> tuple[object, ...]:
    """What the telemetry of proxy depends on besides the proxy: translation caches keyed on
    these (by identity) rebuild listeners when one of them changes."""
    services = tuple(
        snapshot.services.get(p.service.rpartition("/")[2])
        for p in proxy.telemetry_providers
        if isinstance(p, OtelAccessLogProvider | TracingProvider)
    )
    return (snapshot.telemetries, *services)


__all__ = [
    "ISTIO_JSON_FORMAT",
    "ISTIO_TEXT_FORMAT",
    "NO_TELEMETRY",
    "ListenerTelemetry",
    "client_telemetry",
    "merge_access_logging",
    "merge_tracing",
    "server_telemetry",
    "telemetry_inputs",
]


def provider_problems(snapshot: MeshSnapshot, proxy: ProxySpec) -> set[tuple[str, str]]:
    """(Telemetry or "default_providers", reason) for each provider name that configures
    nothing here: not defined, of the wrong kind, or whose collector is not in the mesh. Istio
    skips those too (and logs them); the agent logs them once."""
    wanted: list[tuple[str, str, str]] = [
        ("default_providers", "access_logging", n) for n in proxy.default_access_logging
    ]
    wanted += [("default_providers", "tracing", n) for n in proxy.default_tracing]
    for key, t in sorted(snapshot.telemetries.items()):
        wanted += [
            (f"Telemetry/{key}", "accessLogging", n) for r in t.access_logging for n in r.providers
        ]
        wanted += [(f"Telemetry/{key}", "tracing", n) for r in t.tracing for n in r.providers[:1]]
    out = set()
    for where, what, name in wanted:
        reason = _provider_problem(snapshot, proxy, what, name)
        if reason:
            out.add((where, f"{what} provider {name!r}: {reason}"))
    return out


def _provider_problem(snapshot: MeshSnapshot, proxy: ProxySpec, what: str, name: str) -> str:
    provider = find_provider(proxy, name)
    if provider is None:
        return "not in extension_providers"
    tracer = isinstance(provider, TracingProvider)
    if tracer != (what == "tracing"):
        return "is not an access logger" if tracer else "is not a tracer"
    if isinstance(provider, FileAccessLogProvider):
        return ""
    if _cluster_of(snapshot, provider.service, provider.port) is None:
        return f"service {provider.service!r} port {provider.port} is not in the mesh"
    return ""
