"""Patching a Listener: LISTENER, LISTENER_FILTER, FILTER_CHAIN, NETWORK_FILTER and
HTTP_FILTER patches (Istio's listener_patch.go), plus route patches of inline route
configurations (inbound HTTP listeners) and EXTENSION_CONFIG patches (inlined).

Each function mutates the message it is given and records the patches that took effect in
`Touched`, so that the patched resource names the EnvoyFilters responsible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from envoy.config.listener.v3 import listener_components_pb2 as lc_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message

from meshagent.model.extensions import DEPRECATED_FILTER_NAMES, ConfigPatch
from meshagent.model.proxy import ProxySpec
from meshagent.xds import names
from meshagent.xds.envoyfilter.lists import apply_list_op
from meshagent.xds.envoyfilter.merge import merge_any, merge_value
from meshagent.xds.envoyfilter.select import Applied, Plan, context_matches

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
# Deprecated filter names Istio still matches on, as the names Envoy has now.
_ALIASES = DEPRECATED_FILTER_NAMES
_HCM_URL = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_VIRTUAL = (names.VIRTUAL_INBOUND, names.VIRTUAL_OUTBOUND)
# HTTP filters the outbound listeners carry disabled, enabled by the routes that configure them.
_OFF_BY_DEFAULT = ("envoy.filters.http.fault", "envoy.filters.http.cors")


def canonical(name: str) -> str:
    return _ALIASES.get(name, name)


@dataclass(slots=True)
class Touched:
    """The EnvoyFilters whose patches took effect on one resource, in order."""

    refs: list[str] = field(default_factory=list)

    def add(self, applied: Applied) -> None:
        if applied.ref not in self.refs:
            self.refs.append(applied.ref)


M = TypeVar("M", bound=Message)


def value_of(patch: ConfigPatch, cls: type[M]) -> M:
    """A fresh copy of patch's value, as cls."""
    message = cls()
    message.ParseFromString(patch.value)
    return message


def named(wanted: str) -> Callable[[Any], bool] | None:
    """A matcher of elements named wanted (canonical filter names); None for ""."""
    if not wanted:
        return None
    return lambda element: canonical(element.name) == wanted


@dataclass(frozen=True, slots=True)
class Where:
    """The listener being patched: its proxy, context and the service ports it serves."""

    proxy: ProxySpec
    context: str
    ports: frozenset[int]  # the bound port and the service port it stands for


def listener_ports(proxy: ProxySpec, listener: listener_pb2.Listener) -> frozenset[int]:
    """The ports `listener.portNumber` may name: the bound one, the service port an outbound
    listener stands for, the application's (target) port of an inbound one."""
    bound = listener.address.socket_address.port_value
    if listener.name.startswith(names.INBOUND):
        targets = {p.target_port for w in proxy.workloads for p in w.ports if p.port == bound}
        return frozenset({bound, *targets})
    served = {p for p, local in proxy.port_overrides if local == bound}
    if not served and proxy.port_offset and listener.name.startswith(proxy.outbound_address):
        served.add(bound - proxy.port_offset)
    return frozenset({bound, *served})


def listener_matches(applied: Applied, listener: listener_pb2.Listener, where: Where) -> bool:
    patch = applied.patch
    if not context_matches(patch, where.context):
        return False
    match = patch.listener
    if match is None:
        return True
    if match.name and match.name != listener.name:
        return False
    if patch.apply_to != "LISTENER" and listener.name in _VIRTUAL:
        return True  # the port is matched on the filter chain (its destination port)
    return not match.port_number or match.port_number in where.ports


def chain_matches(
    applied: Applied, listener: listener_pb2.Listener, chain: lc_pb2.FilterChain
) -> bool:
    match = applied.patch.listener
    if match is None:
        return True
    fcm = chain.filter_chain_match
    virtual = listener.name in _VIRTUAL and match.port_number
    if virtual and fcm.destination_port.value != match.port_number:
        return False
    found = match.filter_chain
    if found is None:
        return True
    if found.name and found.name != chain.name:
        return False
    if found.sni and found.sni not in fcm.server_names:
        return False
    if found.transport_protocol and found.transport_protocol != fcm.transport_protocol:
        return False
    if found.application_protocols and not all(
        p in fcm.application_protocols for p in found.application_protocols.split(",")
    ):
        return False
    return not found.destination_port or fcm.destination_port.value == found.destination_port


def _filter_name(applied: Applied) -> str:
    chain = applied.patch.listener.filter_chain if applied.patch.listener else None
    return canonical(chain.filter) if chain is not None and chain.filter else ""


def _sub_filter_name(applied: Applied) -> str:
    chain = applied.patch.listener.filter_chain if applied.patch.listener else None
    return canonical(chain.sub_filter) if chain is not None and chain.sub_filter else ""


def patch_listener(
    listener: listener_pb2.Listener, plan: Plan, where: Where, touched: Touched
) -> bool:
    """Apply the listener-level patches; False when the listener is removed."""
    for applied in plan.of("LISTENER"):
        if not listener_matches(applied, listener, where):
            continue
        if applied.patch.operation == "REMOVE":
            touched.add(applied)
            return False
        if applied.patch.operation in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            value = value_of(applied.patch, listener_pb2.Listener)
            merge_value(applied.patch.operation, listener, value)
            touched.add(applied)
    _listener_filters(listener, plan, where, touched)
    _filter_chains(listener, plan, where, touched)
    return True


def _listener_filters(
    listener: listener_pb2.Listener, plan: Plan, where: Where, touched: Touched
) -> None:
    for applied in plan.of("LISTENER_FILTER"):
        if not listener_matches(applied, listener, where):
            continue
        wanted = applied.patch.listener.listener_filter if applied.patch.listener else ""
        if apply_list_op(
            listener.listener_filters,
            applied.patch.operation,
            partial(value_of, applied.patch, lc_pb2.ListenerFilter),
            named(wanted),
        ):
            touched.add(applied)


def _filter_chains(
    listener: listener_pb2.Listener, plan: Plan, where: Where, touched: Touched
) -> None:
    kept = []
    for chain in listener.filter_chains:
        if _patch_chain(listener, chain, plan, where, touched):
            kept.append(chain)
    if len(kept) != len(listener.filter_chains):
        copies = [lc_pb2.FilterChain() for _ in kept]
        for copy, chain in zip(copies, kept, strict=True):
            copy.CopyFrom(chain)
        del listener.filter_chains[:]
        listener.filter_chains.extend(copies)
    if listener.HasField("default_filter_chain") and not _patch_chain(
        listener, listener.default_filter_chain, plan, where, touched
    ):
        listener.ClearField("default_filter_chain")
    for applied in plan.of("FILTER_CHAIN"):
        if applied.patch.operation == "ADD" and listener_matches(applied, listener, where):
            listener.filter_chains.append(value_of(applied.patch, lc_pb2.FilterChain))
            touched.add(applied)


def _patch_chain(
    listener: listener_pb2.Listener,
    chain: lc_pb2.FilterChain,
    plan: Plan,
    where: Where,
    touched: Touched,
) -> bool:
    """Patch one filter chain; False when it is removed."""
    for applied in plan.of("FILTER_CHAIN"):
        if not (
            listener_matches(applied, listener, where) and chain_matches(applied, listener, chain)
        ):
            continue
        if applied.patch.operation == "REMOVE":
            touched.add(applied)
            return False
        if applied.patch.operation in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            value = value_of(applied.patch, lc_pb2.FilterChain)
            assert isinstance(value, lc_pb2.FilterChain)
            _merge_chain(chain, value, applied.patch.operation)
            touched.add(applied)
    _network_filters(listener, chain, plan, where, touched)
    return True


def _merge_chain(chain: lc_pb2.FilterChain, value: lc_pb2.FilterChain, operation: str) -> None:
    """Istio's mergeTransportSocketListener: a transport socket of the same name merges
    inside its Any; otherwise the whole value merges."""
    sockets = value.HasField("transport_socket") and chain.HasField("transport_socket")
    if sockets and value.transport_socket.name == chain.transport_socket.name:
        merge_any(chain.transport_socket.typed_config, value.transport_socket.typed_config)
        return
    merge_value(operation, chain, value)


def _network_filters(
    listener: listener_pb2.Listener,
    chain: lc_pb2.FilterChain,
    plan: Plan,
    where: Where,
    touched: Touched,
) -> None:
    for applied in plan.of("NETWORK_FILTER"):
        if applied.patch.operation in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            continue
        if not (
            listener_matches(applied, listener, where) and chain_matches(applied, listener, chain)
        ):
            continue
        wanted = _filter_name(applied)
        if apply_list_op(
            chain.filters,
            applied.patch.operation,
            partial(value_of, applied.patch, lc_pb2.Filter),
            named(wanted),
        ):
            touched.add(applied)
    for network_filter in chain.filters:
        _merge_filter(listener, chain, network_filter, "NETWORK_FILTER", plan, where, touched)
        if canonical(network_filter.name) == HCM_NAMES[0]:
            _patch_hcm(listener, chain, network_filter, plan, where, touched)


def _merge_filter(
    listener: listener_pb2.Listener,
    chain: lc_pb2.FilterChain,
    target: lc_pb2.Filter | hcm_pb2.HttpFilter,
    kind: str,
    plan: Plan,
    where: Where,
    touched: Touched,
) -> None:
    """MERGE/MERGE_AND_REPLACE_LIST patches of kind (NETWORK_FILTER or HTTP_FILTER) into one
    filter of chain: its name and typed_config."""
    name_of = _filter_name if kind == "NETWORK_FILTER" else _sub_filter_name
    for applied in plan.of(kind):
        if applied.patch.operation not in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            continue
        wanted = name_of(applied)
        if not (
            listener_matches(applied, listener, where)
            and chain_matches(applied, listener, chain)
            and (not wanted or canonical(target.name) == wanted)
            and target.HasField("typed_config")
        ):
            continue
        value = value_of(applied.patch, type(target))
        assert isinstance(value, type(target))
        if value.name:
            target.name = value.name
        if value.HasField("typed_config"):
            merge_any(target.typed_config, value.typed_config, applied.patch.operation)
            if isinstance(target, hcm_pb2.HttpFilter) and canonical(target.name) in _OFF_BY_DEFAULT:
                # Istio runs fault and CORS on every route, meshagent only on the routes that
                # configure them: config merged into the filter is meant for every route.
                target.disabled = value.disabled
        touched.add(applied)


def _patch_hcm(
    listener: listener_pb2.Listener,
    chain: lc_pb2.FilterChain,
    network_filter: lc_pb2.Filter,
    plan: Plan,
    where: Where,
    touched: Touched,
) -> None:
    """HTTP_FILTER patches (and inline route configurations, Wasm plugins, extension
    configs) inside one HTTP connection manager."""
    if network_filter.typed_config.type_url != _HCM_URL:
        return
    manager = hcm_pb2.HttpConnectionManager.FromString(network_filter.typed_config.value)
    before = len(touched.refs), manager.SerializeToString(deterministic=True)
    for applied in plan.of("HTTP_FILTER"):
        if not (
            listener_matches(applied, listener, where)
            and chain_matches(applied, listener, chain)
            and (not _filter_name(applied) or _filter_name(applied) == HCM_NAMES[0])
        ):
            continue
        if applied.patch.operation in ("MERGE", "MERGE_AND_REPLACE_LIST"):
            continue
        wanted = _sub_filter_name(applied)
        if apply_list_op(
            manager.http_filters,
            applied.patch.operation,
            partial(value_of, applied.patch, hcm_pb2.HttpFilter),
            named(wanted),
        ):
            touched.add(applied)
    for http_filter in manager.http_filters:
        _merge_filter(listener, chain, http_filter, "HTTP_FILTER", plan, where, touched)
    from meshagent.xds.envoyfilter.routes import patch_route_configuration
    from meshagent.xds.envoyfilter.wasm import insert_wasm_filters

    insert_wasm_filters(manager, plan, where, touched)
    _inline_extension_configs(manager, plan, where, touched)
    if manager.HasField("route_config"):
        patch_route_configuration(manager.route_config, plan, where.proxy, where.context, touched)
    if (len(touched.refs), manager.SerializeToString(deterministic=True)) != before:
        network_filter.typed_config.value = manager.SerializeToString(deterministic=True)


def _inline_extension_configs(
    manager: hcm_pb2.HttpConnectionManager, plan: Plan, where: Where, touched: Touched
) -> None:
    """EXTENSION_CONFIG ADD: meshagent serves no ECDS, so an HTTP filter whose
    config_discovery names an added extension config gets that config inline."""
    from envoy.config.core.v3 import extension_pb2

    added: dict[str, tuple[Applied, extension_pb2.TypedExtensionConfig]] = {}
    for applied in plan.of("EXTENSION_CONFIG"):
        if applied.patch.operation == "ADD" and context_matches(applied.patch, where.context):
            value = value_of(applied.patch, extension_pb2.TypedExtensionConfig)
            assert isinstance(value, extension_pb2.TypedExtensionConfig)
            added[value.name] = (applied, value)
    if not added:
        return
    for http_filter in manager.http_filters:
        if not http_filter.HasField("config_discovery"):
            continue
        found = added.get(http_filter.name)
        if found is not None:
            http_filter.typed_config.CopyFrom(found[1].typed_config)
            touched.add(found[0])
