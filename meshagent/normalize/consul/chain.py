"""Consul's discovery chain across config entries: service-router, then service-splitter.

Each entry converts on its own (entries.py), but Consul chains them: a router's route to a
service without a subset goes through that service's splitter, and a split to another service
without a subset goes through that service's splitter in turn (a split to its own service is
final: the resolver takes it). `compose` applies that to the VirtualService of a router or a
splitter, given the splitters by host; weights of nested splits multiply and are then
expressed, like Consul's, in hundredths of a percent. Resolvers need no composing: subsets,
redirect and failover are per-host rules that the translator applies to every destination.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from fractions import Fraction

from meshagent.model.routing import HeaderOps, HttpRoute, VirtualService, WeightedDestination

ROUTER_PREFIX = "consul-router-"
SPLITTER_PREFIX = "consul-splitter-"
_TOTAL = 10_000  # hundredths of a percent, as splitter weights are
_MAX_DEPTH = 8  # Consul rejects cyclic chains; a bound keeps a bad one from looping here


def chain_role(vs: VirtualService) -> str:
    """ "router" or "splitter" for the VirtualService of such a Consul entry, else ""."""
    if vs.provenance is None or vs.provenance.source != "consul":
        return ""
    if vs.name.startswith(ROUTER_PREFIX):
        return "router"
    return "splitter" if vs.name.startswith(SPLITTER_PREFIX) else ""


def compose(vs: VirtualService, splitters: Mapping[str, VirtualService]) -> VirtualService:
    """vs with each destination that a splitter applies to replaced by that splitter's
    splits (vs itself when none does)."""
    role = chain_role(vs)
    if not role or not splitters:
        return vs
    # A router's own service goes through its splitter; a splitter's own service is final.
    visited = frozenset(vs.hosts if role == "splitter" else ())
    http = tuple(_route(r, splitters, visited) for r in vs.http)
    return vs if http == vs.http else dataclasses.replace(vs, http=http)


def _splitter(
    dest: WeightedDestination, splitters: Mapping[str, VirtualService], visited: frozenset[str]
) -> VirtualService | None:
    d = dest.destination
    if d.subset or d.host in visited or len(visited) > _MAX_DEPTH:
        return None
    found = splitters.get(d.host)
    return found if found is not None and len(found.http) == 1 else None


def _route(
    route: HttpRoute, splitters: Mapping[str, VirtualService], visited: frozenset[str]
) -> HttpRoute:
    if not any(_splitter(w, splitters, visited) for w in route.route):
        return route
    total = sum(w.weight for w in route.route) or 1
    shares = [
        leaf
        for w in route.route
        for leaf in _expand(w, Fraction(w.weight, total), splitters, visited)
    ]
    return dataclasses.replace(route, route=_weighted(shares))


def _expand(
    dest: WeightedDestination,
    share: Fraction,
    splitters: Mapping[str, VirtualService],
    visited: frozenset[str],
) -> Iterator[tuple[Fraction, WeightedDestination]]:
    splitter = _splitter(dest, splitters, visited)
    if splitter is None:
        yield share, dest
        return
    splits = splitter.http[0].route
    total = sum(w.weight for w in splits) or 1
    inner = visited | {dest.destination.host}
    for child in splits:
        merged = dataclasses.replace(child, headers=_merge(dest.headers, child.headers))
        yield from _expand(merged, share * Fraction(child.weight, total), splitters, inner)


def _merge(outer: HeaderOps, inner: HeaderOps) -> HeaderOps:
    if not outer:
        return inner
    return HeaderOps(
        *(getattr(outer, f.name) + getattr(inner, f.name) for f in dataclasses.fields(HeaderOps))
    )


def _weighted(
    shares: list[tuple[Fraction, WeightedDestination]],
) -> tuple[WeightedDestination, ...]:
    """Shares as integer weights summing to _TOTAL (largest remainder); zero weights go."""
    exact = [share * _TOTAL for share, _ in shares]
    weights = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - weights[i], reverse=True)
    for i in by_remainder[: _TOTAL - sum(weights)]:
        weights[i] += 1
    return tuple(
        dataclasses.replace(dest, weight=weight)
        for weight, (_, dest) in zip(weights, shares, strict=True)
        if weight > 0
    )
