"""Which EnvoyFilter patches apply to a proxy, in Istio's order, and the match context of
each generated resource.

Order (Istio's PushContext.EnvoyFilters): by priority (lower first), then the root
namespace's filters before others, then creation time, then name and namespace. Patches of
one applyTo run in that order, each filter's patches in the order it lists them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from meshagent.model.extensions import (
    ANY,
    GATEWAY,
    SIDECAR_INBOUND,
    SIDECAR_OUTBOUND,
    ConfigPatch,
    EnvoyFilter,
    TargetRef,
)
from meshagent.model.labels import Labels, selector_matches
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.xds import names

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True, slots=True)
class Applied:
    """One patch of one EnvoyFilter, as the patch stage uses it; `ref` names the filter in
    attribution ("EnvoyFilter/ns/name (file:line)")."""

    patch: ConfigPatch
    ref: str


@dataclass(slots=True)
class Plan:
    """The patches that apply to one proxy, by applyTo, in application order."""

    by_apply_to: dict[str, list[Applied]] = field(default_factory=dict)
    wasm: tuple[object, ...] = ()  # WasmPlugins to insert (xds/envoyfilter/wasm.py)

    @property
    def empty(self) -> bool:
        return not self.by_apply_to and not self.wasm

    def of(self, apply_to: str) -> list[Applied]:
        return self.by_apply_to.get(apply_to, [])


def proxy_metadata(proxy: ProxySpec) -> dict[str, str]:
    """The node metadata `match.proxy.metadata` is compared with (Istio's raw node
    metadata keys that a meshagent proxy has)."""
    return {
        "ISTIO_VERSION": proxy.istio_version,  # also what `proxyVersion` is matched against
        "NAMESPACE": proxy.namespace,
        "CLUSTER_ID": proxy.cluster,
        "NAME": proxy.node_id,
        "MESH_ID": proxy.trust_domain,
        "NETWORK": proxy.network,
    }


def _label_sets(proxy: ProxySpec, namespace: str) -> list[Labels]:
    """The label sets a selector in namespace may match: the proxy's own labels and those
    of its local workloads in that namespace (in any namespace, for the root namespace)."""
    found = [proxy.labels] if proxy.labels or not proxy.workloads else []
    anywhere = namespace == proxy.root_namespace
    found += [w.labels for w in proxy.workloads if anywhere or w.namespace == namespace]
    return found


def _namespaces(proxy: ProxySpec) -> set[str]:
    return {proxy.namespace, *(w.namespace for w in proxy.workloads)}


def _targets_proxy(refs: Iterable[TargetRef], proxy: ProxySpec) -> bool:
    """targetRefs name a Gateway: the proxy is that gateway when its labels say so (Istio's
    gateway-name label); Service and ServiceEntry targets select no proxy here."""
    labels = dict(proxy.labels)
    return any(r.kind == "Gateway" and labels.get(GATEWAY_NAME_LABEL) == r.name for r in refs)


def selects(
    namespace: str,
    selector: Labels | None,
    targets: tuple[TargetRef, ...],
    proxy: ProxySpec,
) -> bool:
    """Whether a policy of namespace with this selector or targetRefs applies to proxy."""
    if namespace != proxy.root_namespace and namespace not in _namespaces(proxy):
        return False
    if targets:
        return _targets_proxy(targets, proxy)
    if selector is None:
        return True
    return any(selector_matches(selector, labels) for labels in _label_sets(proxy, namespace))


def ordered(filters: Iterable[EnvoyFilter], root: str) -> list[EnvoyFilter]:
    """Istio's order: priority, then root namespace first, creation time, name.namespace."""
    return sorted(
        filters,
        key=lambda f: (f.priority, f.namespace != root, f.created, f"{f.name}.{f.namespace}"),
    )


def _proxy_matches(patch: ConfigPatch, metadata: Mapping[str, str]) -> bool:
    if patch.proxy_version:
        try:
            if re.search(patch.proxy_version, metadata["ISTIO_VERSION"]) is None:
                return False
        except re.error:
            return False
    return all(metadata.get(k) == v for k, v in patch.proxy_metadata)


def ref_of(envoy_filter: EnvoyFilter) -> str:
    """How attribution names an EnvoyFilter."""
    prov = envoy_filter.provenance
    ref = f"EnvoyFilter/{envoy_filter.namespace}/{envoy_filter.name}"
    return f"{ref} ({prov.location})" if prov is not None else ref


def _applicable(filters: Mapping[str, EnvoyFilter], proxy: ProxySpec) -> Iterator[Applied]:
    """Every patch of filters that applies to proxy (selection, proxy match), in order."""
    metadata = proxy_metadata(proxy)
    chosen = [f for f in filters.values() if selects(f.namespace, f.selector, f.target_refs, proxy)]
    for envoy_filter in ordered(chosen, proxy.root_namespace):
        ref = ref_of(envoy_filter)
        for patch in envoy_filter.patches:
            if _proxy_matches(patch, metadata):
                yield Applied(patch, ref)


def plan_for(filters: Mapping[str, EnvoyFilter], proxy: ProxySpec) -> Plan:
    """The patches of filters that apply to proxy, grouped by applyTo, in order. BOOTSTRAP
    patches are not in it: they shape the bootstrap, not xDS (bootstrap_patches)."""
    plan = Plan()
    for applied in _applicable(filters, proxy):
        if applied.patch.apply_to != "BOOTSTRAP":
            plan.by_apply_to.setdefault(applied.patch.apply_to, []).append(applied)
    return plan


def bootstrap_patches(filters: Mapping[str, EnvoyFilter], proxy: ProxySpec) -> list[Applied]:
    """The BOOTSTRAP patches of filters that apply to proxy, in order."""
    return [a for a in _applicable(filters, proxy) if a.patch.apply_to == "BOOTSTRAP"]


# -- the context of each generated resource ------------------------------------------------


def listener_context(proxy: ProxySpec, name: str) -> str:
    if proxy.proxy_type == ROUTER:
        return GATEWAY
    if name.startswith(names.INBOUND) or name == names.VIRTUAL_INBOUND:
        return SIDECAR_INBOUND
    return SIDECAR_OUTBOUND


def route_context(proxy: ProxySpec, name: str) -> str:
    if proxy.proxy_type == ROUTER:
        return GATEWAY
    return SIDECAR_INBOUND if name.startswith(names.INBOUND) else SIDECAR_OUTBOUND


def cluster_context(proxy: ProxySpec, name: str) -> str:
    if proxy.proxy_type == ROUTER:
        return GATEWAY
    if name.startswith(names.INBOUND + "|") or name == names.INBOUND_PASSTHROUGH_CLUSTER:
        return SIDECAR_INBOUND
    return SIDECAR_OUTBOUND


def context_matches(patch: ConfigPatch, context: str) -> bool:
    return patch.context in (ANY, context)


def adds_in(patch: ConfigPatch, proxy: ProxySpec, inbound_too: bool) -> bool:
    """Whether a LISTENER or CLUSTER ADD applies to proxy: with context ANY only where Istio
    adds (outbound and gateway); CLUSTER ADDs also in SIDECAR_INBOUND."""
    if proxy.proxy_type == ROUTER:
        return patch.context in (ANY, GATEWAY)
    allowed = (ANY, SIDECAR_OUTBOUND, SIDECAR_INBOUND) if inbound_too else (ANY, SIDECAR_OUTBOUND)
    return patch.context in allowed
