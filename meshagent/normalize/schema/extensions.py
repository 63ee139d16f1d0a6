"""Schemas of EnvoyFilter and ProxyConfig (networking.istio.io), Telemetry (telemetry.istio.io)
and WasmPlugin (extensions.istio.io), with the rules of Istio's validation webhook
(ValidateEnvoyFilter, ValidateProxyConfig, ValidateTelemetry, ValidateWasmPlugin) and of their
CRDs.

An invalid one is an error, as Istio rejects it. EnvoyFilter, Telemetry and WasmPlugin are
translated (normalize/convert); a valid ProxyConfig is accepted with a warning that it has no
effect here. Free-form payloads (an EnvoyFilter patch value, a WasmPlugin's pluginConfig) are
only checked to be objects here; EnvoyFilter patch values are parsed against Envoy's API when
converted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from meshagent.model.extensions import DEPRECATED_FILTER_NAMES
from meshagent.model.regex import regex_problem
from meshagent.normalize.schema.cel import cel_syntax_problem
from meshagent.normalize.schema.common import LABELS, STR_MAP, WORKLOAD_SELECTOR
from meshagent.normalize.schema.core import (
    Bool,
    Duration,
    Enum,
    F,
    Float,
    Int,
    Issues,
    ListOf,
    MapOf,
    Obj,
    Str,
    Type,
    join,
    wrong_type,
)
from meshagent.normalize.schema.targetref import (
    TARGET_REF,
    TARGET_REFS,
    one_of_selector_or_targets,
    workload_selector_rule,
)

INT32 = Int(-(2**31), 2**31 - 1)
_PORT = Int(1, 65535)
POLICY_SELECTOR = Obj({"matchLabels": F(LABELS)})
WORKLOAD_MODES = ("CLIENT_AND_SERVER", "CLIENT", "SERVER")


class Struct(Type):
    """A google.protobuf.Struct: any JSON object."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        if not isinstance(value, Mapping):
            wrong_type(issues, path, "object", value)


# -- EnvoyFilter -------------------------------------------------------------------------

APPLY_TO = (
    "LISTENER",
    "FILTER_CHAIN",
    "NETWORK_FILTER",
    "HTTP_FILTER",
    "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST",
    "HTTP_ROUTE",
    "CLUSTER",
    "EXTENSION_CONFIG",
    "BOOTSTRAP",
    "LISTENER_FILTER",
)
PATCH_CONTEXTS = ("ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT")
OPERATIONS = (
    "MERGE",
    "ADD",
    "REMOVE",
    "INSERT_BEFORE",
    "INSERT_AFTER",
    "INSERT_FIRST",
    "REPLACE",
    "MERGE_AND_REPLACE_LIST",
)
HCM = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
_LISTENER_CLASS = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER")
_ROUTE_CLASS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")

_NAMED = Obj({"name": F(Str())})
FILTER_MATCH = Obj({"name": F(Str()), "subFilter": F(_NAMED)})
LISTENER_MATCH = Obj(
    {
        "portNumber": F(_PORT),
        "portName": F(Str()),
        "filterChain": F(
            Obj(
                {
                    "name": F(Str()),
                    "sni": F(Str()),
                    "transportProtocol": F(Str()),
                    "applicationProtocols": F(Str()),
                    "filter": F(FILTER_MATCH),
                    "destinationPort": F(_PORT),
                }
            )
        ),
        "listenerFilter": F(Str()),
        "name": F(Str()),
    }
)
ROUTE_CONFIGURATION_MATCH = Obj(
    {
        "portNumber": F(_PORT),
        "portName": F(Str()),
        "gateway": F(Str()),
        "vhost": F(
            Obj(
                {
                    "name": F(Str()),
                    "domainName": F(Str()),
                    "route": F(
                        Obj(
                            {
                                "name": F(Str()),
                                "action": F(Enum(("ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"))),
                            }
                        )
                    ),
                }
            )
        ),
        "name": F(Str()),
    }
)
CLUSTER_MATCH = Obj(
    {"portNumber": F(_PORT), "service": F(Str()), "subset": F(Str()), "name": F(Str())}
)
WAYPOINT_MATCH = Obj({"filter": F(FILTER_MATCH), "portNumber": F(_PORT), "route": F(_NAMED)})


def _proxy_version_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    version = value.get("proxyVersion")
    if version and (problem := regex_problem(version)):
        issues.error(
            join(path, "proxyVersion"), f"Envoy filter: invalid regex for proxy version, {problem}"
        )


def _waypoint_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """The CRD's rule: a waypoint match goes with context WAYPOINT, and only it does."""
    waypoint = value.get("context") == "WAYPOINT"
    others = any(value.get(k) is not None for k in ("listener", "routeConfiguration", "cluster"))
    if (value.get("waypoint") is not None and not waypoint) or (waypoint and others):
        issues.error(path, "only support waypointMatch when context is WAYPOINT")


OBJECT_MATCH = Obj(
    {
        "context": F(Enum(PATCH_CONTEXTS)),
        "proxy": F(
            Obj(
                {"proxyVersion": F(Str()), "metadata": F(STR_MAP)},
                rules=[_proxy_version_rule],
            )
        ),
        "listener": F(LISTENER_MATCH),
        "routeConfiguration": F(ROUTE_CONFIGURATION_MATCH),
        "cluster": F(CLUSTER_MATCH),
        "waypoint": F(WAYPOINT_MATCH),
    },
    oneof=[("listener", "routeConfiguration", "cluster", "waypoint")],
    rules=[_waypoint_rule],
)
PATCH = Obj(
    {
        "operation": F(Enum(OPERATIONS)),
        "value": F(Struct()),
        "filterClass": F(Enum(("UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"))),
    }
)


def sub_name(found: Mapping[str, Any]) -> Any:
    sub = found.get("subFilter")
    return sub.get("name") if isinstance(sub, Mapping) else None


def _filter_match_problems(apply_to: str, listener: Mapping[str, Any], path: str) -> Issues:
    """Istio's rules on a listener match's filter and subFilter names."""
    issues = Issues()
    chain = listener.get("filterChain") or {}
    found = chain.get("filter")
    if found is None:
        return issues
    where = f"{path}.listener.filterChain.filter"
    if apply_to in ("LISTENER", "FILTER_CHAIN"):
        issues.warn(where, f"Envoy filter: filter match has no effect when used with {apply_to}")
    for key, name in (("name", found.get("name")), ("subFilter.name", sub_name(found))):
        if name in DEPRECATED_FILTER_NAMES:  # Istio's validateListenerMatchName
            issues.warn(
                join(where, key),
                f"using deprecated filter name {name!r}; use "
                f"{DEPRECATED_FILTER_NAMES[name]!r} instead",
            )
    if not found.get("name"):
        issues.error(join(where, "name"), "Envoy filter: filter match has no name to match on")
    elif found.get("subFilter") is not None:
        if apply_to != "HTTP_FILTER":
            issues.error(
                join(where, "subFilter"),
                "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
            )
        elif found["name"] not in HCM:
            issues.error(
                join(where, "name"),
                f"Envoy filter: subfilter match requires filter match with {HCM[0]}",
            )
        elif not found["subFilter"].get("name"):
            issues.error(
                join(where, "subFilter.name"),
                "Envoy filter: subfilter match has no name to match on",
            )
    return issues


def _config_patch_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    apply_to = value.get("applyTo")
    if not apply_to:
        issues.error(join(path, "applyTo"), "Envoy filter: missing applyTo")
        return
    patch = value.get("patch")
    if patch is None:
        issues.error(join(path, "patch"), "Envoy filter: missing patch")
        return
    operation = patch.get("operation")
    if not operation:
        issues.error(join(path, "patch.operation"), "Envoy filter: missing patch operation")
        return
    if operation != "REMOVE" and patch.get("value") is None:
        issues.error(
            join(path, "patch.value"),
            "Envoy filter: missing patch value for non-remove operation",
        )
        return
    match = value.get("match") or {}
    where = join(path, "match")
    if match.get("waypoint") is not None:
        return  # a waypoint match fits every applyTo (the CRD checks its context)
    kinds = [k for k in ("listener", "routeConfiguration", "cluster") if match.get(k)]
    if apply_to in _LISTENER_CLASS and kinds:
        if "listener" not in kinds:
            issues.error(
                where,
                "Envoy filter: applyTo for listener class objects cannot have non listener match",
            )
        else:
            issues.extend(_filter_match_problems(apply_to, match["listener"], where))
    elif apply_to in _ROUTE_CLASS and kinds and "routeConfiguration" not in kinds:
        issues.error(
            where,
            "Envoy filter: applyTo for http route class objects cannot have non route "
            "configuration match",
        )
    elif apply_to == "CLUSTER" and kinds and "cluster" not in kinds:
        issues.error(
            where, "Envoy filter: applyTo for cluster class objects cannot have non cluster match"
        )


CONFIG_PATCH = Obj(
    {"applyTo": F(Enum(APPLY_TO)), "match": F(OBJECT_MATCH), "patch": F(PATCH)},
    rules=[_config_patch_rule],
)

ENVOY_FILTER = Obj(
    {
        "workloadSelector": F(WORKLOAD_SELECTOR),
        "targetRefs": F(TARGET_REFS),
        "configPatches": F(ListOf(CONFIG_PATCH)),
        "priority": F(INT32),
    },
    rules=[
        one_of_selector_or_targets("workloadSelector"),
        workload_selector_rule("workloadSelector", "labels"),
    ],
)

# -- ProxyConfig -------------------------------------------------------------------------

PROXY_CONFIG = Obj(
    {
        "selector": F(POLICY_SELECTOR),
        # Istio: "concurrency must be greater than or equal to 0".
        "concurrency": F(Int(0, 2**31 - 1)),
        "environmentVariables": F(STR_MAP),
        "image": F(Obj({"imageType": F(Str())})),
    },
    rules=[workload_selector_rule("selector", "matchLabels")],
)

# -- Telemetry ---------------------------------------------------------------------------

PROVIDERS = ListOf(Obj({"name": F(Str(non_empty=True), required=True)}))
MODE_SELECTOR = Obj({"mode": F(Enum(WORKLOAD_MODES))})
METRICS = (
    "ALL_METRICS",
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
)

_VALUE = Obj({"value": F(Str(non_empty=True), required=True)})
_NAME_DEFAULT = Obj({"name": F(Str(non_empty=True), required=True), "defaultValue": F(Str())})
CUSTOM_TAG = Obj(
    {
        "literal": F(_VALUE),
        "environment": F(_NAME_DEFAULT),
        "header": F(_NAME_DEFAULT),
        "formatter": F(_VALUE),
    },
    oneof=[("literal", "environment", "header", "formatter")],
)


def _tracing_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if len(value.get("providers") or ()) > 1:
        issues.warn(join(path, "providers"), "multiple providers is not currently supported")
    for name in value.get("customTags") or {}:
        if not name:
            issues.error(join(path, "customTags"), "tag name may not be empty")


TRACING = Obj(
    {
        "match": F(MODE_SELECTOR),
        "providers": F(PROVIDERS),
        "randomSamplingPercentage": F(Float(0.0, 100.0)),
        "disableSpanReporting": F(Bool()),
        "customTags": F(MapOf(CUSTOM_TAG)),
        "enableIstioTags": F(Bool()),
        "useRequestIdForTraceSampling": F(Bool()),
        "disableContextPropagation": F(Bool()),
    },
    rules=[_tracing_rule],
)


def _tag_override_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    operation = value.get("operation") or "UPSERT"
    if operation == "UPSERT" and not value.get("value"):
        issues.error(join(path, "value"), "tagOverrides.value must be set when operation is UPSERT")
    if operation == "REMOVE" and value.get("value"):
        issues.error(
            join(path, "value"), "tagOverrides.value may only be set when operation is UPSERT"
        )


def _metric_selector_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if value.get("customMetric") == "":
        issues.error(join(path, "customMetric"), "customMetric may not be empty")


METRICS_OVERRIDE = Obj(
    {
        "match": F(
            Obj(
                {
                    "metric": F(Enum(METRICS)),
                    "customMetric": F(Str()),
                    "mode": F(Enum(WORKLOAD_MODES)),
                },
                oneof=[("metric", "customMetric")],
                rules=[_metric_selector_rule],
            )
        ),
        "disabled": F(Bool()),
        "tagOverrides": F(
            MapOf(
                Obj(
                    {"operation": F(Enum(("UPSERT", "REMOVE"))), "value": F(Str())},
                    rules=[_tag_override_rule],
                )
            )
        ),
    }
)
TELEMETRY_METRICS = Obj(
    {
        "providers": F(PROVIDERS),
        "overrides": F(ListOf(METRICS_OVERRIDE)),
        "reportingInterval": F(Duration(min_ms=1)),
    }
)


def _cel_filter_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio's validateTelemetryFilter: the expression must parse as CEL (Envoy would refuse
    the listener of an access log whose filter does not)."""
    expression = value.get("expression")
    if isinstance(expression, str) or expression is None:
        problem = cel_syntax_problem(expression or "")
        if problem:
            issues.error(join(path, "expression"), f"must be a valid CEL expression, {problem}")


ACCESS_LOGGING = Obj(
    {
        "match": F(MODE_SELECTOR),
        "providers": F(PROVIDERS),
        "disabled": F(Bool()),
        "filter": F(Obj({"expression": F(Str())}, rules=[_cel_filter_rule])),
    }
)


def _telemetry_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if len(value.get("tracing") or ()) > 1:
        issues.warn(join(path, "tracing"), "multiple tracing is not currently supported")


TELEMETRY = Obj(
    {
        "selector": F(POLICY_SELECTOR),
        "targetRef": F(TARGET_REF),
        "targetRefs": F(TARGET_REFS),
        "tracing": F(ListOf(TRACING)),
        "metrics": F(ListOf(TELEMETRY_METRICS)),
        "accessLogging": F(ListOf(ACCESS_LOGGING)),
    },
    rules=[
        one_of_selector_or_targets(),
        workload_selector_rule("selector", "matchLabels"),
        _telemetry_rule,
    ],
)

# -- WasmPlugin --------------------------------------------------------------------------

_URL_SCHEMES = ("", "file", "http", "https", "oci")
_SHA256 = r"[a-f0-9]{64}"


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def wasm_url_problem(url: str) -> str:
    """Why url is not a Wasm module location Istio accepts (its CRD rule: a URL whose scheme
    is http, https, oci or file, or, without a scheme, a valid URL once "http://" is put in
    front), or ""."""
    bad = "url must have schema one of [http, https, file, oci]"
    if any(c.isspace() for c in url) or _BAD_ESCAPE.search(url):
        return bad
    candidate = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(candidate)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return bad
    if parts.scheme not in _URL_SCHEMES:
        return bad
    if parts.scheme != "file" and not parts.hostname:
        return bad
    if parts.scheme == "file" and not parts.path:
        return bad
    return ""


def _env_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    if (value.get("valueFrom") or "INLINE") != "INLINE" and value.get("value"):
        issues.error(join(path, "value"), "value may only be set when valueFrom is INLINE")


ENV_VAR = Obj(
    {
        "name": F(Str(non_empty=True), required=True),
        "valueFrom": F(Enum(("INLINE", "HOST"))),
        "value": F(Str()),
    },
    rules=[_env_rule],
)


def _vm_config_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    seen: set[str] = set()
    for i, env in enumerate(value.get("env") or ()):
        name = env.get("name") or ""
        if len(name) > 256:
            issues.error(
                f"{path}.env[{i}].name", "env.name field must be less than 255 characters long"
            )
        if name in seen:
            issues.error(f"{path}.env[{i}].name", f"duplicate env {name!r}")
        seen.add(name)


def _wasm_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    url = value.get("url")
    if url and (problem := wasm_url_problem(url)):
        issues.error(join(path, "url"), problem)
    sha = value.get("sha256")
    if sha and not re.fullmatch(_SHA256, sha):
        issues.error(join(path, "sha256"), "sha256 field must match [a-f0-9]{64} pattern")
    if len(value.get("imagePullSecret") or "") > 253:
        issues.error(
            join(path, "imagePullSecret"),
            "imagePullSecret field must be less than 253 characters long",
        )
    if len(value.get("pluginName") or "") > 256:
        issues.error(
            join(path, "pluginName"), "pluginName field must be less than 255 characters long"
        )


TRAFFIC_SELECTOR = Obj(
    {"mode": F(Enum(WORKLOAD_MODES)), "ports": F(ListOf(Obj({"number": F(_PORT, required=True)})))}
)
WASM_PLUGIN = Obj(
    {
        "selector": F(POLICY_SELECTOR),
        "targetRef": F(TARGET_REF),
        "targetRefs": F(TARGET_REFS),
        "url": F(Str(non_empty=True), required=True),
        "sha256": F(Str()),
        "imagePullPolicy": F(Enum(("UNSPECIFIED_POLICY", "IfNotPresent", "Always"))),
        "imagePullSecret": F(Str(non_empty=True)),
        "verificationKey": F(Str()),
        "pluginConfig": F(Struct()),
        "pluginName": F(Str(non_empty=True)),
        "phase": F(Enum(("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"))),
        "priority": F(INT32),
        "failStrategy": F(Enum(("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"))),
        "vmConfig": F(Obj({"env": F(ListOf(ENV_VAR))}, rules=[_vm_config_rule])),
        "match": F(ListOf(TRAFFIC_SELECTOR)),
        "type": F(Enum(("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"))),
    },
    rules=[
        one_of_selector_or_targets(),
        workload_selector_rule("selector", "matchLabels"),
        _wasm_rule,
    ],
)

SPECS: Mapping[str, Obj] = {
    "EnvoyFilter": ENVOY_FILTER,
    "ProxyConfig": PROXY_CONFIG,
    "Telemetry": TELEMETRY,
    "WasmPlugin": WASM_PLUGIN,
}

# kind -> (API group, versions).
GROUPS: Mapping[str, tuple[str, frozenset[str]]] = {
    "EnvoyFilter": ("networking.istio.io", frozenset({"v1alpha3"})),
    "ProxyConfig": ("networking.istio.io", frozenset({"v1beta1"})),
    "Telemetry": ("telemetry.istio.io", frozenset({"v1", "v1alpha1"})),
    "WasmPlugin": ("extensions.istio.io", frozenset({"v1alpha1"})),
}

__all__ = ["GROUPS", "SPECS", "wasm_url_problem"]
