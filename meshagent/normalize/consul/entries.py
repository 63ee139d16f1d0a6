"""service-router, service-splitter and service-resolver config entries to the routing model.

- service-router → a VirtualService for the service's host: one HTTP route per Consul route
  (path exact/prefix/regex, headers, query parameters, methods), each to its destination
  (service, subset, prefix rewrite, request timeout, retries, header edits), then Consul's
  implicit catch-all to the service itself.
- service-splitter → a VirtualService with one weighted route (Consul weights are percentages
  with two decimals; they become integer weights in hundredths of a percent).
- service-resolver → a DestinationRule: subsets from their Filter (see filters.py), connect
  timeout, load balancer and hash policies. DefaultSubset becomes the rule's default_subset:
  requests that name no subset (the catch-all, unsplit routes, plain traffic to the host) go
  to that subset only. Failover and Redirect have no counterpart in the model yet and are
  reported as warnings.

Limitation: a router and a splitter for the same service are two VirtualServices for one
host; the router's wins (Consul would send the router's unsplit routes through the splitter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshagent.model.routing import (
    Destination,
    HeaderMatch,
    HeaderOps,
    HttpMatch,
    HttpRoute,
    MatchKind,
    Retry,
    Rewrite,
    StringMatch,
    VirtualService,
    WeightedDestination,
)
from meshagent.model.source import Provenance
from meshagent.model.traffic import (
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    LoadBalancer,
    Subset,
    TrafficPolicy,
)
from meshagent.normalize.consul.filters import FilterError, filter_labels
from meshagent.normalize.consul.options import ConsulMapping
from meshagent.normalize.durations import parse_duration_ms
from meshagent.normalize.schema.core import Issues

_LB = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ms(value: Any, path: str, issues: Issues) -> int | None:
    if value in (None, "", 0):
        return None
    parsed = parse_duration_ms(str(value))
    if parsed is None:
        issues.error(path, f"invalid duration {value!r}")
    return parsed or None


class _Scope:
    """The entry's name and namespace, and how service names become hosts."""

    def __init__(self, entry: Mapping[str, Any], mapping: ConsulMapping) -> None:
        self.name = str(entry.get("Name") or "")
        self.namespace = str(entry.get("Namespace") or "default")
        self.mapping = mapping

    def host(self, service: Any = None, namespace: Any = None) -> str:
        return self.mapping.host(str(service or self.name), str(namespace or self.namespace))

    def destination(self, d: Mapping[str, Any]) -> Destination:
        return Destination(
            self.host(d.get("Service"), d.get("Namespace")), str(d.get("ServiceSubset") or "")
        )


def _header_ops(request: Any, response: Any) -> HeaderOps:
    req, resp = _map(request), _map(response)

    def pairs(m: Any) -> tuple[tuple[str, str], ...]:
        return tuple((str(k), str(v)) for k, v in _map(m).items())

    return HeaderOps(
        request_set=pairs(req.get("Set")),
        request_add=pairs(req.get("Add")),
        request_remove=tuple(str(h) for h in _list(req.get("Remove"))),
        response_set=pairs(resp.get("Set")),
        response_add=pairs(resp.get("Add")),
        response_remove=tuple(str(h) for h in _list(resp.get("Remove"))),
    )


# -- service-router ------------------------------------------------------------------------


def _string_match(spec: Mapping[str, Any]) -> StringMatch | None:
    if spec.get("Exact") is not None:
        return StringMatch(MatchKind.EXACT, str(spec["Exact"]))
    if spec.get("Prefix") is not None:
        return StringMatch(MatchKind.PREFIX, str(spec["Prefix"]))
    if spec.get("Suffix") is not None:
        return StringMatch(MatchKind.REGEX, ".*" + re.escape(str(spec["Suffix"])))
    if spec.get("Regex") is not None:
        return StringMatch(MatchKind.REGEX, str(spec["Regex"]))
    return None  # Present: any value


def _http_match(http: Mapping[str, Any], path: str, issues: Issues) -> HttpMatch:
    uri = None
    for key, kind in (
        ("PathExact", MatchKind.EXACT),
        ("PathPrefix", MatchKind.PREFIX),
        ("PathRegex", MatchKind.REGEX),
    ):
        if http.get(key):
            uri = StringMatch(kind, str(http[key]))
    headers: list[HeaderMatch] = []
    without: list[HeaderMatch] = []
    for h in _list(http.get("Header")):
        h = _map(h)
        match = HeaderMatch(str(h.get("Name") or ""), _string_match(h))
        (without if h.get("Invert") else headers).append(match)
    params = tuple(
        HeaderMatch(str(_map(q).get("Name") or ""), _string_match(_map(q)))
        for q in _list(http.get("QueryParam"))
    )
    methods = [str(m).upper() for m in _list(http.get("Methods"))]
    method = (
        StringMatch(MatchKind.REGEX, "|".join(methods))
        if len(methods) > 1
        else (StringMatch(MatchKind.EXACT, methods[0]) if methods else None)
    )
    return HttpMatch(
        uri=uri,
        method=method,
        headers=tuple(headers),
        without_headers=tuple(without),
        query_params=params,
        ignore_uri_case=bool(http.get("CaseInsensitive")),
    )


def _retry(d: Mapping[str, Any]) -> Retry | None:
    attempts = int(d.get("NumRetries") or 0)
    conditions = [str(c) for c in _list(d.get("RetryOn"))]
    if d.get("RetryOnConnectFailure"):
        conditions.append("connect-failure")
    conditions += [str(c) for c in _list(d.get("RetryOnStatusCodes"))]
    if not attempts and not conditions:
        return None
    return Retry(attempts=attempts or 1, retry_on=",".join(dict.fromkeys(conditions)))


def _router_route(route: Mapping[str, Any], i: int, scope: _Scope, issues: Issues) -> HttpRoute:
    path = f"Routes[{i}]"
    http = _map(_map(route.get("Match")).get("HTTP"))
    dest = _map(route.get("Destination"))
    rewrite = Rewrite(uri=str(dest["PrefixRewrite"])) if dest.get("PrefixRewrite") else None
    return HttpRoute(
        name=f"route-{i}",
        matches=(_http_match(http, f"{path}.Match.HTTP", issues),) if http else (),
        route=(WeightedDestination(scope.destination(dest)),),
        rewrite=rewrite,
        timeout_ms=_ms(dest.get("RequestTimeout"), f"{path}.Destination.RequestTimeout", issues),
        retries=_retry(dest),
        headers=_header_ops(dest.get("RequestHeaders"), dest.get("ResponseHeaders")),
    )


def convert_router(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> VirtualService:
    """A service-router as a VirtualService for its service's host."""
    scope = _Scope(entry, mapping)
    routes = [
        _router_route(_map(r), i, scope, issues) for i, r in enumerate(_list(entry.get("Routes")))
    ]
    routes.append(
        HttpRoute(name="default", route=(WeightedDestination(Destination(scope.host())),))
    )
    return VirtualService(
        name=f"consul-router-{scope.name}",
        namespace=scope.namespace,
        hosts=(scope.host(),),
        http=tuple(routes),
        provenance=prov,
    )


# -- service-splitter ------------------------------------------------------------------------


def convert_splitter(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> VirtualService:
    """A service-splitter as a VirtualService with one weighted route."""
    scope = _Scope(entry, mapping)
    splits = []
    total = 0.0
    for split in _list(entry.get("Splits")):
        split = _map(split)
        weight = float(split.get("Weight") or 0)
        total += weight
        if weight <= 0:
            continue  # Consul allows 0: that split gets no traffic
        splits.append(
            WeightedDestination(
                scope.destination(split),
                weight=round(weight * 100),
                headers=_header_ops(split.get("RequestHeaders"), split.get("ResponseHeaders")),
            )
        )
    if abs(total - 100.0) > 0.01:
        issues.error("Splits", f"split weights must add up to 100, not {total:g}")
    return VirtualService(
        name=f"consul-splitter-{scope.name}",
        namespace=scope.namespace,
        hosts=(scope.host(),),
        http=(HttpRoute(name="split", route=tuple(splits)),),
        provenance=prov,
    )


# -- service-resolver ------------------------------------------------------------------------


def _hash(policy: Mapping[str, Any], path: str, issues: Issues) -> ConsistentHash | None:
    field, value = str(policy.get("Field") or ""), str(policy.get("FieldValue") or "")
    if policy.get("SourceIP"):
        return ConsistentHash(use_source_ip=True)
    if field == "header":
        return ConsistentHash(http_header_name=value)
    if field == "cookie":
        cookie = _map(policy.get("CookieConfig"))
        return ConsistentHash(
            http_cookie_name=value,
            http_cookie_path=str(cookie.get("Path") or ""),
            http_cookie_ttl_ms=_ms(cookie.get("TTL"), path, issues),
        )
    if field == "query_parameter":
        return ConsistentHash(http_query_parameter_name=value)
    issues.warn(path, f"hash policy field {field!r} not supported; ignored")
    return None


def _load_balancer(lb: Mapping[str, Any], issues: Issues) -> LoadBalancer | None:
    policy = str(lb.get("Policy") or "")
    if not policy:
        return None
    if policy in _LB:
        return LoadBalancer(simple=_LB[policy])
    if policy not in ("ring_hash", "maglev"):
        issues.error("LoadBalancer.Policy", f"unknown load balancer policy {policy!r}")
        return None
    policies = [_map(p) for p in _list(lb.get("HashPolicies"))]
    if len(policies) > 1:
        issues.warn("LoadBalancer.HashPolicies", "only the first hash policy is used")
    found = _hash(policies[0], "LoadBalancer.HashPolicies[0]", issues) if policies else None
    base = found or ConsistentHash(use_source_ip=True)
    ring = _map(lb.get("RingHashConfig"))
    return LoadBalancer(
        consistent_hash=ConsistentHash(
            **{
                **_hash_fields(base),
                "maglev": policy == "maglev",
                "minimum_ring_size": int(ring["MinimumRingSize"])
                if ring.get("MinimumRingSize")
                else None,
            }
        )
    )


def _hash_fields(h: ConsistentHash) -> dict[str, Any]:
    return {
        f: getattr(h, f)
        for f in ConsistentHash.__slots__
        if f not in ("maglev", "minimum_ring_size")
    }


def convert_resolver(
    entry: Mapping[str, Any], mapping: ConsulMapping, prov: Provenance, issues: Issues
) -> DestinationRule:
    """A service-resolver as a DestinationRule for its service's host."""
    scope = _Scope(entry, mapping)
    subsets = []
    for name, spec in sorted(_map(entry.get("Subsets")).items()):
        try:
            labels = filter_labels(str(_map(spec).get("Filter") or ""))
        except FilterError as exc:
            issues.error(f"Subsets.{name}.Filter", str(exc))
            continue
        subsets.append(Subset(name=str(name), labels=labels))
    for key in ("Failover", "Redirect"):
        if entry.get(key):
            issues.warn(key, f"{key} is not supported yet; ignored")
    default = str(entry.get("DefaultSubset") or "")
    if default and default not in {s.name for s in subsets}:
        issues.error("DefaultSubset", f"DefaultSubset {default!r} is not one of the Subsets")
    timeout = _ms(entry.get("ConnectTimeout"), "ConnectTimeout", issues)
    lb = _load_balancer(_map(entry.get("LoadBalancer")), issues)
    policy = None
    if timeout is not None or lb is not None:
        pool = ConnectionPool(tcp_connect_timeout_ms=timeout) if timeout is not None else None
        policy = TrafficPolicy(load_balancer=lb, connection_pool=pool)
    return DestinationRule(
        name=f"consul-resolver-{scope.name}",
        namespace=scope.namespace,
        host=scope.host(),
        traffic_policy=policy,
        subsets=tuple(subsets),
        provenance=prov,
        default_subset=default,
    )
