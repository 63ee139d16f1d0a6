"""The telemetry entries of `extension_providers` (Istio's meshConfig.extensionProviders of the
access log and tracing kinds, in this config's snake_case) and `default_providers`
(meshConfig.defaultProviders). The ext_authz entries of the same list are read by
agent/config/authz.py, which leaves these alone.

Unlike an ext_authz entry, a wrong telemetry entry is a config error (file:line and field):
it only ever adds logs or spans, so refusing the config costs nothing that served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshagent.agent.config.section import Section, duration_ms, hostname, resolve_path
from meshagent.model.telemetry import (
    DEV_STDOUT,
    FileAccessLogProvider,
    OtelAccessLogProvider,
    TelemetryProvider,
    TracingProvider,
)

FILE = "envoy_file_access_log"
OTEL_ALS = "envoy_otel_als"
ZIPKIN = "zipkin"
OPENTELEMETRY = "opentelemetry"
PROMETHEUS = "prometheus"  # Istio's default metrics provider: accepted, nothing to configure
TELEMETRY_KINDS = (FILE, OTEL_ALS, ZIPKIN, OPENTELEMETRY, PROMETHEUS)
# Istio kinds this agent cannot build (no such extension, or no collector protocol here).
UNSUPPORTED_KINDS = (
    "envoy_http_als",
    "envoy_tcp_als",
    "stackdriver",
    "datadog",
    "skywalking",
    "lightstep",
    "opencensus",
    "sds",
)


def is_telemetry_entry(item: Any) -> bool:
    """Whether an extension_providers entry is one of the telemetry kinds (read here)."""
    return isinstance(item, dict) and any(k in item for k in (*TELEMETRY_KINDS, *UNSUPPORTED_KINDS))


def parse_telemetry_providers(root: Section, base: Path) -> tuple[TelemetryProvider, ...]:
    """The telemetry entries of `extension_providers` (Istio's built-in `envoy`, the file
    logger on /dev/stdout, needs none: the translator knows it)."""
    out: list[TelemetryProvider] = []
    seen: set[str] = set()
    for i, item in enumerate(root.get("extension_providers", list, [])):
        if not is_telemetry_entry(item):
            continue
        s = root.child(f"extension_providers[{i}]", item)
        name = hostname(s, "name", "")
        if name in seen:
            raise s.error(f"provider {name!r} is defined twice", "name")
        seen.add(name)
        provider = _entry(s, name, base)
        if provider is not None:
            out.append(provider)
    return tuple(out)


def _entry(s: Section, name: str, base: Path) -> TelemetryProvider | None:
    kinds = [k for k in (*TELEMETRY_KINDS, *UNSUPPORTED_KINDS) if s.data.get(k) is not None]
    s.only("name", *TELEMETRY_KINDS, *UNSUPPORTED_KINDS)
    if len(kinds) != 1:
        raise s.error(f"needs exactly one of: {', '.join(TELEMETRY_KINDS)}", kinds[-1])
    kind = kinds[0]
    if kind in UNSUPPORTED_KINDS:
        raise s.error(
            f"provider kind {kind!r} is not supported by meshagent "
            f"(supported: {', '.join(TELEMETRY_KINDS)})",
            kind,
        )
    body = s.section(kind)
    if kind == FILE:
        return _file(name, body, base)
    if kind == OTEL_ALS:
        body.only("service", "port", "log_name", "log_format")
        text, labels = _log_format(body, json_default=())
        return OtelAccessLogProvider(
            name=name,
            service=_service(body),
            port=body.port("port", 0, zero_ok=False),
            log_name=body.get("log_name", str, ""),
            text=text,
            labels=labels or (),
        )
    if kind == PROMETHEUS:
        body.only()
        return None
    return _tracer(name, kind, body)


def _file(name: str, s: Section, base: Path) -> FileAccessLogProvider:
    s.only("path", "log_format", "omit_empty_values")
    path = s.get("path", str, DEV_STDOUT).strip() or DEV_STDOUT
    if not path.startswith("/dev/"):
        path = str(resolve_path(base, path))
    text, labels = _log_format(s, json_default=None)
    return FileAccessLogProvider(
        name=name,
        path=path,
        text=text,
        labels=labels,
        omit_empty_values=s.get("omit_empty_values", bool, False),
    )


def _log_format(
    s: Section, json_default: tuple[tuple[str, str], ...] | None
) -> tuple[str, tuple[tuple[str, str], ...] | None]:
    """log_format: {text: "..."} or {labels: {key: "%FORMAT%"}} (JSON; {} means Istio's
    default JSON keys). Neither: Istio's default text format."""
    if s.data.get("log_format") is None:
        return "", json_default
    f = s.section("log_format")
    f.only("text", "labels")
    if f.data.get("text") is not None and f.data.get("labels") is not None:
        raise f.error("set text or labels, not both", "labels")
    if f.data.get("labels") is not None:
        labels = f.get("labels", dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise f.error("must map JSON keys to Envoy format strings", "labels")
        return "", tuple(labels.items())
    return f.get("text", str, ""), json_default


def _service(s: Section) -> str:
    if not s.data.get("service"):
        raise s.error("is required (a mesh service: host or namespace/host)", "service")
    return hostname(s, "service", "")


def _tracer(name: str, kind: str, s: Section) -> TracingProvider:
    if kind == ZIPKIN:
        s.only("service", "port", "max_tag_length", "path", "enable_64bit_trace_id")
        path = s.get("path", str, "/api/v2/spans") or "/api/v2/spans"
        if not path.startswith("/"):
            raise s.error('must start with "/"', "path")
        return TracingProvider(
            name=name,
            kind=kind,
            service=_service(s),
            port=s.port("port", 0, zero_ok=False),
            max_tag_length=_tag_length(s),
            path=path,
            enable_64bit_trace_id=s.get("enable_64bit_trace_id", bool, False),
        )
    s.only("service", "port", "max_tag_length", "grpc")
    grpc = s.section("grpc")
    grpc.only("timeout")
    timeout = duration_ms(grpc, "timeout", "0", 0) if grpc.data.get("timeout") else 0
    return TracingProvider(
        name=name,
        kind=kind,
        service=_service(s),
        port=s.port("port", 0, zero_ok=False),
        max_tag_length=_tag_length(s),
        timeout_ms=timeout,
    )


def _tag_length(s: Section) -> int:
    value = s.get("max_tag_length", int, 0)
    if not 0 <= value <= 2**32 - 1:
        raise s.error("must be 0 or more", "max_tag_length")
    return value


def parse_default_providers(root: Section) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`default_providers`: (access_logging, tracing) provider names; `metrics` is accepted
    and has no effect (no istio.stats filter in stock Envoy)."""
    s = root.section("default_providers")
    s.only("access_logging", "tracing", "metrics")
    return _names(s, "access_logging"), _names(s, "tracing")


def _names(s: Section, key: str) -> tuple[str, ...]:
    values = s.get(key, list, [])
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise s.error("must be a list of provider names", key)
    return tuple(v.strip() for v in values)
