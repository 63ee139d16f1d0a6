"""Telemetry (telemetry.istio.io v1, v1alpha1) to the model: accessLogging and tracing.

`metrics` overrides are validated only: stock Envoy has no istio.stats filter to configure
(see the README), so a Telemetry that sets them gets a warning saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.telemetry import (
    CLIENT_AND_SERVER,
    AccessLogRule,
    CustomTag,
    Telemetry,
    TracingRule,
)
from meshagent.normalize.convert.context import Context, items, sub
from meshagent.normalize.schema.core import Issues

METRICS_NOT_SUPPORTED = (
    "metrics are not supported here: stock Envoy has no istio.stats filter, so Istio's "
    "istio_* metrics and their overrides do not exist (see the README); ignored"
)


def _providers(entry: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(p.get("name")) for p in items(entry, "providers") if isinstance(p, Mapping))


def _flag(entry: Mapping[str, Any], key: str) -> bool | None:
    value = entry.get(key)
    return None if value is None else bool(value)


def _access_log(entry: Mapping[str, Any]) -> AccessLogRule:
    filter_ = entry.get("filter")
    expression = sub(entry, "filter").get("expression") if filter_ is not None else None
    return AccessLogRule(
        mode=sub(entry, "match").get("mode") or CLIENT_AND_SERVER,
        providers=_providers(entry),
        disabled=_flag(entry, "disabled"),
        filter=None if filter_ is None else str(expression or ""),
    )


def _tag(name: str, spec: Mapping[str, Any]) -> CustomTag | None:
    for kind in ("literal", "header", "environment"):
        value = sub(spec, kind)
        if value:
            text = value.get("value") if kind == "literal" else value.get("name")
            return CustomTag(name, kind, str(text), str(value.get("defaultValue") or ""))
    return None  # formatter: not in this Envoy's custom tag types Istio maps (warned)


def _tracing(entry: Mapping[str, Any], issues: Issues, path: str) -> TracingRule:
    tags: tuple[CustomTag, ...] | None = None
    if entry.get("customTags") is not None:
        found = []
        for name, spec in sorted(sub(entry, "customTags").items()):
            tag = _tag(str(name), spec if isinstance(spec, Mapping) else {})
            if tag is None:
                issues.warn(
                    f"{path}.customTags.{name}", "formatter tags are not supported; ignored"
                )
            else:
                found.append(tag)
        tags = tuple(found)
    sampling = entry.get("randomSamplingPercentage")
    return TracingRule(
        mode=sub(entry, "match").get("mode") or CLIENT_AND_SERVER,
        providers=_providers(entry),
        random_sampling_percentage=None if sampling is None else float(sampling),
        disable_span_reporting=_flag(entry, "disableSpanReporting"),
        custom_tags=tags,
        use_request_id_for_trace_sampling=_flag(entry, "useRequestIdForTraceSampling"),
        enable_istio_tags=_flag(entry, "enableIstioTags"),
        disable_context_propagation=_flag(entry, "disableContextPropagation"),
    )


def _gateways(spec: Mapping[str, Any]) -> tuple[str, ...]:
    refs = items(spec, "targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    return tuple(
        sorted(
            str(r.get("name"))
            for r in refs
            if isinstance(r, Mapping) and r.get("kind") == "Gateway"
        )
    )


def convert_telemetry(
    name: str, spec: Mapping[str, Any], ctx: Context, issues: Issues | None = None
) -> Telemetry:
    """A validated Telemetry spec as the model's Telemetry."""
    issues = issues if issues is not None else Issues()
    if any(m.get("overrides") or m.get("providers") for m in items(spec, "metrics")):
        issues.warn("spec.metrics", METRICS_NOT_SUPPORTED)
    targeted = bool(spec.get("targetRef") or spec.get("targetRefs"))
    if targeted and not _gateways(spec):
        issues.warn(
            "spec.targetRefs" if spec.get("targetRefs") else "spec.targetRef",
            "a Telemetry targeting a Service or ServiceEntry applies to waypoints, which this "
            "agent does not run: it has no effect here",
        )
    labels = labels_of(sub(sub(spec, "selector"), "matchLabels"))
    return Telemetry(
        name=name,
        namespace=ctx.namespace,
        selector=labels or None,
        target_gateways=_gateways(spec),
        targeted=targeted,
        access_logging=tuple(_access_log(e) for e in items(spec, "accessLogging") if e),
        tracing=tuple(
            _tracing(e, issues, f"spec.tracing[{i}]")
            for i, e in enumerate(items(spec, "tracing"))
            if e
        ),
        provenance=ctx.provenance,
    )
