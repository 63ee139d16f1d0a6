"""The EnvoyFilter patch stage: after the generators' output is assembled, before the
consistency check, so that patched resources are checked (and NACKs attributed) like
generated ones.

`PatchStage.apply(resources, snapshot, proxy)` returns resources themselves when no
EnvoyFilter or WasmPlugin applies to the proxy (the zero-cost path: two map lookups).
Otherwise it patches listeners, route configurations and clusters, reusing the patched
output of every resource whose input object and patch plan did not change; with the
assembler's change hint it visits only the changed names. Each patched resource is
recorded in ResourceSet.patched_by with the EnvoyFilters (and WasmPlugins) that changed it.

A patch that fails on a resource (e.g. a merge into an Any of a type this Envoy API has
not, or one that nests the result beyond protobuf's depth limit) leaves that resource as
generated and logs `envoyfilter_patch_failed`, as Istio recovers from a failed patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import DecodeError, Message

from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.xds import typeurls
from meshagent.xds.envoyfilter.clusters import patch_cluster
from meshagent.xds.envoyfilter.listeners import Touched, Where, listener_ports, patch_listener
from meshagent.xds.envoyfilter.routes import patch_route_configuration
from meshagent.xds.envoyfilter.select import (
    Plan,
    adds_in,
    cluster_context,
    listener_context,
    plan_for,
    route_context,
)
from meshagent.xds.envoyfilter.wasm import plugins_for
from meshagent.xds.resources import Resource, ResourceSet

log = structlog.get_logger("meshagent.xds")

# (resource, the EnvoyFilters that changed it); resource None: removed by a patch.
Outcome = tuple[Resource | None, tuple[str, ...]]
_PATCHED_TYPES = (typeurls.LISTENER, typeurls.ROUTE, typeurls.CLUSTER)
Dups = Mapping[str, tuple[Resource, ...]]
# The applyTo kinds whose patches shape each patched type (listeners carry inline inbound
# route configurations, Wasm filters and inlined extension configs).
_ROUTE_KINDS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")
_SHAPED_BY: Mapping[str, tuple[str, ...]] = {
    typeurls.LISTENER: (
        "LISTENER",
        "LISTENER_FILTER",
        "FILTER_CHAIN",
        "NETWORK_FILTER",
        "HTTP_FILTER",
        "EXTENSION_CONFIG",
        *_ROUTE_KINDS,
    ),
    typeurls.ROUTE: _ROUTE_KINDS,
    typeurls.CLUSTER: ("CLUSTER",),
}
_NO_DUPS: Dups = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Inputs:
    filters: object
    plugins: object
    proxy: ProxySpec


def _patch_one(type_url: str, resource: Resource, plan: Plan, proxy: ProxySpec) -> Outcome:
    touched = Touched()
    message: Message
    if type_url == typeurls.LISTENER:
        listener = listener_pb2.Listener.FromString(resource.value)
        ports = listener_ports(proxy, listener)
        where = Where(proxy, listener_context(proxy, listener.name), ports)
        kept = patch_listener(listener, plan, where, touched)
        message = listener
    elif type_url == typeurls.ROUTE:
        message = route_pb2.RouteConfiguration.FromString(resource.value)
        patch_route_configuration(
            message, plan, proxy, route_context(proxy, resource.name), touched
        )
        kept = True
    else:
        message = cluster_pb2.Cluster.FromString(resource.value)
        kept = patch_cluster(message, plan, proxy, cluster_context(proxy, resource.name), touched)
    if not touched.refs:
        return resource, ()
    if not kept:
        return None, tuple(touched.refs)
    patched = Resource.pack(resource.name, message)
    if patched.version == resource.version:
        patched = resource
    else:  # a merge can nest a value too deeply to be read back (by Envoy too): serve unpatched
        type(message).FromString(patched.value)
    return patched, tuple(touched.refs)


def _guarded(type_url: str, resource: Resource, plan: Plan, proxy: ProxySpec) -> Outcome:
    try:
        return _patch_one(type_url, resource, plan, proxy)
    except Exception as exc:  # a patch must never stop translation: serve it unpatched
        _log_failed(proxy, type_url, resource.name, exc)
        return resource, ()


def _log_failed(proxy: ProxySpec, type_url: str, resource: str, exc: Exception) -> None:
    log.warning(
        "envoyfilter_patch_failed",
        proxy=proxy.node_id,
        type_url=type_url,
        resource=resource,
        error=repr(exc),
    )


def _added(plan: Plan, proxy: ProxySpec) -> dict[str, list[tuple[Resource, str]]]:
    """LISTENER and CLUSTER ADDs that apply to proxy, as resources by type URL."""
    out: dict[str, list[tuple[Resource, str]]] = {}
    kinds: tuple[tuple[str, str, type[Message], bool], ...] = (
        ("LISTENER", typeurls.LISTENER, listener_pb2.Listener, False),
        ("CLUSTER", typeurls.CLUSTER, cluster_pb2.Cluster, True),
    )
    for apply_to, type_url, cls, inbound_too in kinds:
        for applied in plan.of(apply_to):
            if applied.patch.operation != "ADD" or not adds_in(applied.patch, proxy, inbound_too):
                continue
            try:
                message = cls.FromString(applied.patch.value)
            except DecodeError as exc:  # (the normalizer refuses such values: defence in depth)
                _log_failed(proxy, type_url, applied.ref, exc)
                continue
            name = str(message.name)  # type: ignore[attr-defined]
            out.setdefault(type_url, []).append((Resource.pack(name, message), applied.ref))
    return out


class PatchStage:
    """Applies EnvoyFilters and WasmPlugins to assembled ResourceSets; one per proxy (as the
    Translator), not thread-safe."""

    def __init__(self) -> None:
        self._inputs: _Inputs | None = None
        self._plan = Plan()
        self._added: dict[str, list[tuple[Resource, str]]] = {}
        self._last_in: ResourceSet | None = None
        self._last_out: ResourceSet | None = None
        # type URL -> name -> (input Resource, outcome)
        self._outcomes: dict[str, dict[str, tuple[Resource, Outcome]]] = {}
        # type URL -> (inputs, patched mapping), and (patched, with ADDs, duplicates)
        self._patched: dict[str, tuple[Mapping[str, Resource], Mapping[str, Resource]]] = {}
        self._final: dict[str, tuple[Mapping[str, Resource], Mapping[str, Resource], Dups]] = {}
        self._patched_by: dict[tuple[str, str], tuple[str, ...]] = {}

    def apply(
        self, resources: ResourceSet, snapshot: MeshSnapshot, proxy: ProxySpec
    ) -> ResourceSet:
        """resources with the patches of snapshot's EnvoyFilters for proxy applied."""
        if not snapshot.envoy_filters and not snapshot.wasm_plugins:
            if self._inputs is not None:
                self._forget()
            return resources  # the zero-cost path
        plan_changed = self._replan(snapshot, proxy)
        if self._plan.empty:
            return resources
        hint = None
        if not plan_changed and self._last_in is not None:
            hint = resources.changed_since(self._last_in)
        by_type: dict[str, Mapping[str, Resource]] = dict(resources.by_type)
        duplicates = dict(resources.duplicates)
        for type_url in _PATCHED_TYPES:
            names = None if hint is None else hint.get(type_url, frozenset())
            patched = self._patch_type(type_url, resources.of(type_url), names, proxy)
            mapping, dups = self._with_added(type_url, patched)
            if dups:
                duplicates[type_url] = MappingProxyType({**duplicates.get(type_url, {}), **dups})
            if mapping or type_url in by_type:
                by_type[type_url] = mapping
        out = self._result(by_type, duplicates, hint)
        self._last_in, self._last_out = resources, out
        return out

    def _forget(self) -> None:
        self._inputs, self._plan, self._added = None, Plan(), {}
        self._last_in = self._last_out = None
        self._outcomes, self._patched, self._final, self._patched_by = {}, {}, {}, {}

    def _replan(self, snapshot: MeshSnapshot, proxy: ProxySpec) -> bool:
        """Re-derive the plan when the filters, plugins or proxy changed; whether it did.
        Only the resource types whose patches changed lose their patched output."""
        inputs = _Inputs(snapshot.envoy_filters, snapshot.wasm_plugins, proxy)
        old = self._inputs
        if (
            old is not None
            and old.filters is inputs.filters
            and old.plugins is inputs.plugins
            and old.proxy == proxy
        ):
            return False
        plan = plan_for(snapshot.envoy_filters, proxy)
        plan.wasm = plugins_for(snapshot.wasm_plugins, proxy)
        if old is None or old.proxy != proxy:
            self._forget()
            stale: list[str] = list(_PATCHED_TYPES)
        else:
            stale = [t for t in _PATCHED_TYPES if _signature(plan, t) != _signature(self._plan, t)]
        self._inputs, self._plan = inputs, plan
        if not stale:
            return False
        for type_url in stale:
            for cache in (self._outcomes, self._patched, self._final):
                cache.pop(type_url, None)
        self._patched_by = {k: v for k, v in self._patched_by.items() if k[0] not in stale}
        self._added = _added(plan, proxy)
        return True

    def _patch_type(
        self,
        type_url: str,
        inputs: Mapping[str, Resource],
        names: frozenset[str] | None,
        proxy: ProxySpec,
    ) -> Mapping[str, Resource]:
        """inputs patched; names: the ones changed since the last call (None: unknown)."""
        last = self._patched.get(type_url)
        if last is not None and (last[0] is inputs or (names is not None and not names)):
            return last[1]
        cache = self._outcomes.setdefault(type_url, {})
        visit = inputs.keys() if names is None or last is None else names
        for name in [n for n in (cache if names is None else names) if n not in inputs]:
            cache.pop(name, None)
            self._patched_by.pop((type_url, name), None)
        for name in visit:
            resource = inputs.get(name)
            if resource is None:
                continue
            found = cache.get(name)
            if found is None or found[0] is not resource:
                outcome = _guarded(type_url, resource, self._plan, proxy)
                cache[name] = (resource, outcome)
                if outcome[1]:
                    self._patched_by[(type_url, name)] = outcome[1]
                else:
                    self._patched_by.pop((type_url, name), None)
        out = {}
        for name, resource in inputs.items():
            found = cache.get(name)
            patched = found[1][0] if found is not None else resource
            if patched is not None:
                out[name] = patched
        mapping = MappingProxyType(out)
        self._patched[type_url] = (inputs, mapping)
        return mapping

    def _with_added(
        self, type_url: str, patched: Mapping[str, Resource]
    ) -> tuple[Mapping[str, Resource], Dups]:
        """patched with the LISTENER or CLUSTER ADDs of the plan (a name that exists already
        is a duplicate, which the consistency check reports)."""
        added = self._added.get(type_url)
        if not added:
            return patched, _NO_DUPS
        last = self._final.get(type_url)
        if last is not None and last[0] is patched:
            return last[1], last[2]
        out = dict(patched)
        dups: dict[str, tuple[Resource, ...]] = {}
        for resource, ref in added:
            before = out.get(resource.name)
            if before is not None:
                dups[resource.name] = (*dups.get(resource.name, (before,)), resource)
            out[resource.name] = resource
            self._patched_by[(type_url, resource.name)] = (ref,)
        final = (patched, MappingProxyType(out), MappingProxyType(dups) if dups else _NO_DUPS)
        self._final[type_url] = final
        return final[1], final[2]

    def _result(
        self,
        by_type: dict[str, Mapping[str, Resource]],
        duplicates: dict[str, Mapping[str, tuple[Resource, ...]]],
        hint: Mapping[str, frozenset[str]] | None,
    ) -> ResourceSet:
        """The patched set, derived from the last one; unpatched types take the assembler's
        change hint when there is one (so an endpoint change is not compared by name)."""
        last = self._last_out
        frozen_dups = MappingProxyType(duplicates)
        patched_by = MappingProxyType(dict(self._patched_by))
        if last is None:
            return ResourceSet(
                by_type=MappingProxyType(by_type), duplicates=frozen_dups, patched_by=patched_by
            )
        changed = {
            t: hint.get(t, frozenset())
            if hint is not None and t not in _PATCHED_TYPES
            else _changed(last.of(t), m)
            for t, m in by_type.items()
            if m is not last.of(t)
        }
        for t in last.by_type:
            if t not in by_type:
                changed[t] = frozenset(last.of(t))
        return ResourceSet.derive(last, by_type, changed, frozen_dups, patched_by)


def _signature(plan: Plan, type_url: str) -> tuple[object, ...]:
    """What of plan the patched output of type_url depends on."""
    wasm = plan.wasm if type_url == typeurls.LISTENER else ()
    return (*(tuple(plan.of(a)) for a in _SHAPED_BY[type_url]), wasm)


def _changed(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> frozenset[str]:
    names = {n for n, r in new.items() if old.get(n) is not r}
    names.update(n for n in old if n not in new)
    return frozenset(names)


__all__ = ["PatchStage"]
