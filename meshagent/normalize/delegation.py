"""VirtualService delegation, merged as Istio's mergeVirtualServicesIfNeeded does.

A VirtualService without hosts is a delegate: it routes nothing itself. A root's HTTP route
with `delegate: {name, namespace}` is replaced by the delegate's routes, each with its match
narrowed by the root route's match (a delegate match must be a subset of a root match, else
that delegate route is dropped) and with the root route's rewrite, timeout, retries, fault,
mirrors, CORS policy and header operations where the delegate route sets none. A delegate
that does not exist, or is not exported to the root's namespace, drops the root route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from meshagent.model.routing import (
    NO_HEADER_OPS,
    HeaderMatch,
    HttpMatch,
    HttpRoute,
    MatchKind,
    StringMatch,
    VirtualService,
)


def is_delegate(vs: VirtualService) -> bool:
    """True for a delegate VirtualService (one without hosts)."""
    return not vs.hosts


def is_root(vs: VirtualService) -> bool:
    """True for a VirtualService with at least one delegating HTTP route."""
    return any(route.delegate is not None for route in vs.http)


def exported_to(delegate: VirtualService, namespace: str) -> bool:
    """Whether delegate is visible from namespace (no exportTo: visible everywhere)."""
    if not delegate.export_to:
        return True
    for entry in delegate.export_to:
        if entry == "*" or entry == namespace or (entry == "." and delegate.namespace == namespace):
            return True
    return False


def merge_root(root: VirtualService, delegates: Mapping[str, VirtualService]) -> VirtualService:
    """root with every delegating route replaced by its delegate's merged routes.

    delegates: delegate VirtualServices by "namespace/name".
    """
    routes: list[HttpRoute] = []
    for route in root.http:
        if route.delegate is None:
            routes.append(route)
            continue
        namespace, name = route.delegate
        delegate = delegates.get(f"{namespace}/{name}")
        if delegate is None or not exported_to(delegate, root.namespace):
            continue  # Istio drops only this route
        for sub in delegate.http:
            merged = _merge_route(route, sub)
            if merged is not None:
                routes.append(merged)
    return replace(root, http=tuple(routes))


def missing_delegates(
    root: VirtualService, delegates: Mapping[str, VirtualService]
) -> list[tuple[str, str]]:
    """(field path, reason) for each delegating route of root whose delegate is missing or
    not exported to root's namespace."""
    found: list[tuple[str, str]] = []
    for i, route in enumerate(root.http):
        if route.delegate is None:
            continue
        namespace, name = route.delegate
        delegate = delegates.get(f"{namespace}/{name}")
        if delegate is None:
            reason = f"delegate VirtualService {namespace}/{name} not found"
        elif not exported_to(delegate, root.namespace):
            reason = (
                f"delegate VirtualService {namespace}/{name} is not exported to {root.namespace}"
            )
        else:
            continue
        found.append((f"spec.http[{i}].delegate", f"{reason}: this route is ignored"))
    return found


def _merge_route(root: HttpRoute, sub: HttpRoute) -> HttpRoute | None:
    matches = _merge_matches(root.matches, sub.matches)
    if matches is None:
        return None
    name = sub.name or root.name
    if sub.name and root.name:
        name = f"{root.name}-{sub.name}"
    return replace(
        sub,
        name=name,
        matches=matches,
        rewrite=sub.rewrite if sub.rewrite is not None else root.rewrite,
        timeout_ms=sub.timeout_ms if sub.timeout_ms is not None else root.timeout_ms,
        retries=sub.retries if sub.retries is not None else root.retries,
        fault=sub.fault if sub.fault is not None else root.fault,
        mirrors=sub.mirrors or root.mirrors,
        cors=sub.cors if sub.cors is not None else root.cors,
        headers=sub.headers if sub.headers != NO_HEADER_OPS else root.headers,
        delegate=None,
    )


def _merge_matches(
    root: tuple[HttpMatch, ...], sub: tuple[HttpMatch, ...]
) -> tuple[HttpMatch, ...] | None:
    """Each delegate match narrowed by every root match it does not conflict with; None when
    some delegate match fits no root match (Istio then drops the delegate route)."""
    if not root:
        return sub
    if not sub:
        return root
    out: list[HttpMatch] = []
    for leaf in sub:
        fitting = [_merge_match(r, leaf) for r in root if not _conflict(r, leaf)]
        if not fitting:
            return None
        out.extend(fitting)
    return tuple(out)


def _merged_map(
    root: tuple[HeaderMatch, ...], leaf: tuple[HeaderMatch, ...]
) -> tuple[HeaderMatch, ...]:
    merged = {h.name: h for h in root}
    merged.update({h.name: h for h in leaf})
    return tuple(merged.values())


def _merge_match(root: HttpMatch, leaf: HttpMatch) -> HttpMatch:
    name = leaf.name or root.name
    if leaf.name and root.name:
        name = f"{root.name}-{leaf.name}"
    return replace(
        leaf,
        name=name,
        uri=leaf.uri or root.uri,
        scheme=leaf.scheme or root.scheme,
        method=leaf.method or root.method,
        authority=leaf.authority or root.authority,
        headers=_merged_map(root.headers, leaf.headers),
        without_headers=_merged_map(root.without_headers, leaf.without_headers),
        query_params=_merged_map(root.query_params, leaf.query_params),
        port=leaf.port or root.port,
    )


def _conflict(root: HttpMatch, leaf: HttpMatch) -> bool:
    pairs = [
        (root.uri, leaf.uri),
        (root.scheme, leaf.scheme),
        (root.method, leaf.method),
        (root.authority, leaf.authority),
    ]
    root_headers = {h.name: h.match for h in root.headers}
    root_params = {h.name: h.match for h in root.query_params}
    pairs += [(root_headers.get(h.name), h.match) for h in leaf.headers]
    # Istio compares a delegate's withoutHeaders with the root's headers (not its
    # withoutHeaders); mirrored here so that the same routes survive.
    pairs += [(root_headers.get(h.name), h.match) for h in leaf.without_headers]
    pairs += [(root_params.get(h.name), h.match) for h in leaf.query_params]
    if any(_string_conflict(r, s) for r, s in pairs):
        return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    return bool(root.port and leaf.port and root.port != leaf.port)


def _string_conflict(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """Whether leaf cannot be a subset of root (Istio's stringMatchConflict)."""
    if root is None or leaf is None:
        return False
    if MatchKind.REGEX in (root.kind, leaf.kind):
        return True
    if root.kind is MatchKind.EXACT and root.value:
        return leaf.kind is not MatchKind.EXACT or leaf.value != root.value
    if root.kind is MatchKind.PREFIX and root.value:
        return not leaf.value.startswith(root.value)
    return True


__all__ = ["exported_to", "is_delegate", "is_root", "merge_root", "missing_delegates"]
