"""EnvoyFilter and WasmPlugin (validated) to their model objects (model/extensions.py).

Patch values are parsed into the Envoy messages their applyTo needs: a value that does not
parse is an error located at spec.configPatches[i].patch.value, and the EnvoyFilter is
rejected as a whole (its last valid version keeps serving), as Istio's webhook rejects it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from meshagent.envoy_types import PatchValueError, parse_value_checked, serialize
from meshagent.model.extensions import (
    ANY,
    ClusterMatch,
    ConfigPatch,
    EnvoyFilter,
    FilterChainMatch,
    ListenerMatch,
    RouteMatch,
    TargetRef,
    WasmPlugin,
)
from meshagent.model.labels import labels_of
from meshagent.normalize.convert.context import Context, items, sub
from meshagent.normalize.schema.core import Issues

# Istio turns INSERT_* on kinds without an order among siblings into ADD
# (convertToEnvoyFilterWrapper).
_ORDERED = ("HTTP_FILTER", "NETWORK_FILTER", "HTTP_ROUTE", "LISTENER_FILTER")
_INSERTS = ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")


def _listener_match(spec: Mapping[str, Any]) -> ListenerMatch | None:
    if not spec:
        return None
    chain = sub(spec, "filterChain")
    found = sub(chain, "filter")
    filter_chain = (
        FilterChainMatch(
            name=str(chain.get("name") or ""),
            sni=str(chain.get("sni") or ""),
            transport_protocol=str(chain.get("transportProtocol") or ""),
            application_protocols=str(chain.get("applicationProtocols") or ""),
            destination_port=int(chain.get("destinationPort") or 0),
            filter=str(found.get("name") or ""),
            sub_filter=str(sub(found, "subFilter").get("name") or ""),
        )
        if chain
        else None
    )
    return ListenerMatch(
        port_number=int(spec.get("portNumber") or 0),
        name=str(spec.get("name") or ""),
        filter_chain=filter_chain,
        listener_filter=str(spec.get("listenerFilter") or ""),
    )


def _route_match(spec: Mapping[str, Any]) -> RouteMatch | None:
    if not spec:
        return None
    vhost = spec.get("vhost")
    route = sub(vhost, "route") if isinstance(vhost, Mapping) else {}
    has_route = isinstance(vhost, Mapping) and isinstance(vhost.get("route"), Mapping)
    return RouteMatch(
        port_number=int(spec.get("portNumber") or 0),
        port_name=str(spec.get("portName") or ""),
        gateway=str(spec.get("gateway") or ""),
        name=str(spec.get("name") or ""),
        vhost=str(vhost.get("name") or "") if isinstance(vhost, Mapping) else None,
        vhost_domain=str(vhost.get("domainName") or "") if isinstance(vhost, Mapping) else "",
        route=str(route.get("name") or "") if has_route else None,
        route_action=str(route.get("action") or "ANY"),
    )


def _cluster_match(spec: Mapping[str, Any]) -> ClusterMatch | None:
    if not spec:
        return None
    return ClusterMatch(
        port_number=int(spec.get("portNumber") or 0),
        service=str(spec.get("service") or ""),
        subset=str(spec.get("subset") or ""),
        name=str(spec.get("name") or ""),
    )


def _patch(index: int, spec: Mapping[str, Any], issues: Issues) -> ConfigPatch | None:
    apply_to = str(spec.get("applyTo"))
    patch = sub(spec, "patch")
    operation = str(patch.get("operation"))
    if operation in _INSERTS and apply_to not in _ORDERED:
        operation = "ADD"
    match = sub(spec, "match")
    proxy = sub(match, "proxy")
    value_type, value = "", b""
    if operation != "REMOVE" and isinstance(patch.get("value"), Mapping):
        where = f"spec.configPatches[{index}].patch.value"
        try:
            message, unknown = parse_value_checked(apply_to, patch["value"])
        except PatchValueError as exc:
            issues.error(where, f"not a valid {apply_to} patch value: {exc}")
            return None
        if unknown:  # Istio accepts the value without what it does not know, and warns
            issues.warn(where, f"{unknown}; ignored")
        value_type, value = message.DESCRIPTOR.full_name, serialize(message)
    return ConfigPatch(
        index=index,
        apply_to=apply_to,
        operation=operation,
        context=str(match.get("context") or ANY),
        proxy_version=str(proxy.get("proxyVersion") or ""),
        proxy_metadata=labels_of(sub(proxy, "metadata")),
        listener=_listener_match(sub(match, "listener")),
        route=_route_match(sub(match, "routeConfiguration")),
        cluster=_cluster_match(sub(match, "cluster")),
        value_type=value_type,
        value=value,
    )


def _targets(spec: Mapping[str, Any]) -> tuple[TargetRef, ...]:
    refs = [*items(spec, "targetRefs")]
    if isinstance(spec.get("targetRef"), Mapping):
        refs.append(spec["targetRef"])
    return tuple(
        TargetRef(str(r.get("group") or ""), str(r.get("kind") or ""), str(r.get("name") or ""))
        for r in refs
    )


def convert_envoy_filter(
    name: str, spec: Mapping[str, Any], ctx: Context, issues: Issues, created: str = ""
) -> EnvoyFilter | None:
    """An EnvoyFilter spec as an EnvoyFilter; None (and errors in issues) when a patch value
    is not the Envoy message its applyTo needs."""
    patches = [_patch(i, p, issues) for i, p in enumerate(items(spec, "configPatches"))]
    if issues.has_errors:
        return None
    for patch in patches:
        if patch is not None and patch.apply_to == "BOOTSTRAP" and patch.operation != "MERGE":
            issues.warn(
                f"spec.configPatches[{patch.index}].patch.operation",
                f"{patch.operation} does nothing on BOOTSTRAP: only MERGE applies (as in Istio)",
            )
    labels = labels_of(sub(sub(spec, "workloadSelector"), "labels"))
    targets = _targets(spec)
    if targets and not any(t.kind == "Gateway" for t in targets):
        issues.warn(
            "spec.targetRefs",
            "targetRefs to a Service or ServiceEntry attach to waypoints, which meshagent "
            "does not run: this EnvoyFilter selects no proxy",
        )
    return EnvoyFilter(
        name=name,
        namespace=ctx.namespace,
        patches=tuple(p for p in patches if p is not None),
        priority=int(spec.get("priority") or 0),
        selector=labels or None,
        target_refs=targets,
        created=created,
        provenance=ctx.provenance,
    )


def _module(url: str) -> tuple[str, str]:
    """(local path, remote URL) of a Wasm module URL: file:// URLs are local; http(s), oci
    and scheme-less ones (Istio reads those as http) are remote."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return unquote(parts.path), ""
    return "", url


def convert_wasm_plugin(
    name: str, spec: Mapping[str, Any], ctx: Context, issues: Issues, created: str = ""
) -> WasmPlugin:
    """A WasmPlugin spec as a WasmPlugin; a remote module is a warning (not fetched here)."""
    module, remote = _module(str(spec.get("url") or ""))
    if remote:
        issues.warn(
            "spec.url",
            "remote Wasm modules (http, https, oci) are not fetched by meshagent: this "
            "WasmPlugin "
            + (
                "is skipped (failStrategy FAIL_OPEN)"
                if spec.get("failStrategy") == "FAIL_OPEN"
                else "fails closed, the traffic it selects is denied (403), as when Istio "
                "cannot fetch a module"
            )
            + "; download the module and use a file:// url",
        )
    env = [e for e in items(sub(spec, "vmConfig"), "env") if isinstance(e, Mapping)]
    matches = []
    for selector in items(spec, "match"):
        ports = tuple(int(p.get("number") or 0) for p in items(selector, "ports"))
        matches.append((str(selector.get("mode") or "CLIENT_AND_SERVER"), ports))
    config = spec.get("pluginConfig")
    return WasmPlugin(
        name=name,
        namespace=ctx.namespace,
        module=module,
        remote=remote,
        sha256=str(spec.get("sha256") or ""),
        plugin_name=str(spec.get("pluginName") or ""),
        config_json=json.dumps(config, sort_keys=True) if config is not None else "",
        phase=str(spec.get("phase") or "UNSPECIFIED_PHASE"),
        priority=int(spec.get("priority") or 0),
        fail_open=spec.get("failStrategy") == "FAIL_OPEN",
        env=tuple(
            (str(e["name"]), str(e.get("value") or ""))
            for e in env
            if (e.get("valueFrom") or "INLINE") == "INLINE"
        ),
        host_env=tuple(str(e["name"]) for e in env if e.get("valueFrom") == "HOST"),
        match=tuple(matches),
        plugin_type=str(spec.get("type") or "HTTP"),
        selector=labels_of(sub(sub(spec, "selector"), "matchLabels")) or None,
        target_refs=_targets(spec),
        created=created,
        provenance=ctx.provenance,
    )
