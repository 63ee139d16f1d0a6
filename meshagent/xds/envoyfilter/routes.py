"""Patching a RouteConfiguration: ROUTE_CONFIGURATION (MERGE), VIRTUAL_HOST (MERGE, REMOVE,
REPLACE, ADD) and HTTP_ROUTE (MERGE, REMOVE, ADD, INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST),
as Istio's rc_patch.go. Route configurations are named as xds/names.py writes them: the port
for outbound ones, `inbound|<port>` for inbound ones; a router's as Istio's gateway RDS
names (`http.<port>`, `https.<port>.<portName>.<gateway>.<namespace>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf.message import Message

from meshagent.model.extensions import GATEWAY
from meshagent.model.proxy import ProxySpec
from meshagent.xds.envoyfilter.listeners import Touched, value_of
from meshagent.xds.envoyfilter.lists import apply_list_op
from meshagent.xds.envoyfilter.merge import merge_value
from meshagent.xds.envoyfilter.select import Applied, Plan, context_matches

_MERGES = ("MERGE", "MERGE_AND_REPLACE_LIST")
_ACTIONS = {"route": "ROUTE", "redirect": "REDIRECT", "direct_response": "DIRECT_RESPONSE"}


def _gateway_parts(name: str) -> tuple[int, str, str]:
    """(port, port name, gateway) of a gateway RDS name (Istio's ParseGatewayRDSRouteName)."""
    parts = name.split(".")
    if parts[0] == "http" and len(parts) == 2 and parts[1].isdigit():
        return int(parts[1]), "", ""
    if parts[0] == "https" and len(parts) >= 5 and parts[1].isdigit():
        return int(parts[1]), parts[2], f"{parts[-1]}/{'.'.join(parts[3:-1])}"
    return 0, "", ""


def _port_of(name: str) -> int:
    last = name.rsplit("|", 1)[-1]
    return int(last) if last.isdigit() else 0


def config_matches(
    applied: Applied, config: route_pb2.RouteConfiguration, proxy: ProxySpec, context: str
) -> bool:
    patch = applied.patch
    if not context_matches(patch, context):
        return False
    match = patch.route
    if match is None:
        return True
    if match.name and match.name != config.name:
        return False
    if context != GATEWAY:
        port = _port_of(config.name)
        served = {port, *(p for p, local in proxy.port_overrides if local == port)}
        return not match.port_number or match.port_number in served
    port, port_name, gateway = _gateway_parts(config.name)
    if match.port_number and match.port_number != port:
        return False
    if match.port_name and match.port_name != port_name:
        return False
    return not match.gateway or match.gateway == gateway


def vhost_matches(applied: Applied, vhost: rc_pb2.VirtualHost) -> bool:
    match = applied.patch.route
    if match is None or match.vhost is None:
        return True
    if match.vhost_domain and match.vhost_domain not in vhost.domains:
        return False
    return not match.vhost or match.vhost == vhost.name


def route_matches(applied: Applied, route: rc_pb2.Route) -> bool:
    match = applied.patch.route
    if match is None or match.vhost is None or match.route is None:
        return True
    if match.route and match.route != route.name:
        return False
    if match.route_action == "ANY":
        return True
    return _ACTIONS.get(route.WhichOneof("action") or "", "") == match.route_action


def _names_route(applied: Applied) -> bool:
    match = applied.patch.route
    return match is not None and match.vhost is not None and match.route is not None


def patch_route_configuration(
    config: route_pb2.RouteConfiguration,
    plan: Plan,
    proxy: ProxySpec,
    context: str,
    touched: Touched,
) -> None:
    """Apply the route patches of plan to config (in place)."""
    for applied in plan.of("ROUTE_CONFIGURATION"):
        if applied.patch.operation in _MERGES and config_matches(applied, config, proxy, context):
            value = value_of(applied.patch, route_pb2.RouteConfiguration)
            merge_value(applied.patch.operation, config, value)
            touched.add(applied)

    def mine(apply_to: str) -> list[Applied]:
        return [a for a in plan.of(apply_to) if config_matches(a, config, proxy, context)]

    vhost_patches, route_patches = mine("VIRTUAL_HOST"), mine("HTTP_ROUTE")
    if not vhost_patches and not route_patches:
        return
    kept: list[rc_pb2.VirtualHost] = []
    for vhost in config.virtual_hosts:
        patched = _patch_vhost(vhost, vhost_patches, touched)
        if patched is not None:
            _patch_routes(patched, route_patches, touched)
            kept.append(patched)
    for applied in vhost_patches:
        if applied.patch.operation == "ADD":
            kept.append(value_of(applied.patch, rc_pb2.VirtualHost))
            touched.add(applied)
    _replace_all(config.virtual_hosts, kept)


def _replace_all(repeated: Any, kept: Sequence[Message]) -> None:
    """Set a repeated message field to kept (which may hold its own elements): copied first,
    since clearing the field invalidates them."""
    copies = []
    for message in kept:
        copy = type(message)()
        copy.CopyFrom(message)
        copies.append(copy)
    del repeated[:]
    repeated.extend(copies)


def _patch_vhost(
    vhost: rc_pb2.VirtualHost, patches: list[Applied], touched: Touched
) -> rc_pb2.VirtualHost | None:
    for applied in patches:
        if not vhost_matches(applied, vhost):
            continue
        operation = applied.patch.operation
        if operation == "REMOVE":
            touched.add(applied)
            return None
        if operation in _MERGES:
            merge_value(operation, vhost, value_of(applied.patch, rc_pb2.VirtualHost))
            touched.add(applied)
        elif operation == "REPLACE":
            vhost = value_of(applied.patch, rc_pb2.VirtualHost)
            touched.add(applied)
    return vhost


def _patch_routes(vhost: rc_pb2.VirtualHost, patches: list[Applied], touched: Touched) -> None:
    mine = [a for a in patches if vhost_matches(a, vhost)]
    if not mine:
        return
    kept = []
    for route in vhost.routes:
        removed = False
        for applied in mine:
            if not route_matches(applied, route):
                continue
            if applied.patch.operation == "REMOVE":
                touched.add(applied)
                removed = True
                break
            if applied.patch.operation in _MERGES:
                value = value_of(applied.patch, rc_pb2.Route)
                merge_value(applied.patch.operation, route, value)
                touched.add(applied)
        if not removed:
            kept.append(route)
    if len(kept) != len(vhost.routes):
        _replace_all(vhost.routes, kept)
    for applied in mine:
        operation = applied.patch.operation
        if operation in _MERGES or operation == "REMOVE":
            continue
        named = _names_route(applied)
        if operation == "INSERT_FIRST" and named:
            if not any(route_matches(applied, r) for r in vhost.routes):
                continue  # Istio: INSERT_FIRST with a route match needs that route
            named = False
        if apply_list_op(
            vhost.routes,
            operation,
            partial(value_of, applied.patch, rc_pb2.Route),
            partial(route_matches, applied) if named else None,
        ):
            touched.add(applied)
