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
  to that subset only. Redirect becomes the rule's redirect (the host's clusters take their
  endpoints from the target service/subset); Failover becomes per-subset fallback targets
  (lower EDS priorities, used once the subset has no endpoints left). A target in another
  datacenter is that datacenter's service under its own host (remote_host_pattern; the adapter
  watches its instances there). Targets in a peer, partition or sameness group are reported as
  warnings and skipped.

A router and a splitter each convert on their own; chain.py then sends the router's routes
(and other splitters' splits) through the splitters, as Consul's discovery chain does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshagent.model.regex import regex_problem
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
    Failover,
    LoadBalancer,
    ResolverTarget,
    Subset,
    TrafficPolicy,
)
from meshagent.normalize.consul.chain import ROUTER_PREFIX, SPLITTER_PREFIX
from meshagent.normalize.consul.filters import FilterError, filter_labels
from meshagent.normalize.consul.flags import flag
from meshagent.normalize.consul.options import ConsulMapping
from meshagent.normalize.durations import parse_duration_ms
from meshagent.normalize.schema.core import DURATION_RANGE, MAX_DURATION_MS, Issues

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
    elif parsed > MAX_DURATION_MS:
        issues.error(path, f"duration {value!r} is out of range: {DURATION_RANGE}")
        return None
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


def header_ops(request: Any, response: Any) -> HeaderOps:
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


def _check_regex(match: StringMatch | None, path: str, issues: Issues) -> None:
    """An error when a regex match would not compile in Envoy (RE2, within its size)."""
    if match is not None and match.kind is MatchKind.REGEX:
        problem = regex_problem(match.value)
        if problem:
            issues.error(path, problem)


def _http_match(http: Mapping[str, Any], path: str, issues: Issues) -> HttpMatch:
    uri = None
    for key, kind in (
        ("PathExact", MatchKind.EXACT),
        ("PathPrefix", MatchKind.PREFIX),
        ("PathRegex", MatchKind.REGEX),
    ):
        if http.get(key):
            uri = StringMatch(kind, str(http[key]))
    _check_regex(uri, f"{path}.PathRegex", issues)
    headers: list[HeaderMatch] = []
    without: list[HeaderMatch] = []
    for i, h in enumerate(_list(http.get("Header"))):
        h = _map(h)
        match = HeaderMatch(str(h.get("Name") or ""), _string_match(h))
        _check_regex(match.match, f"{path}.Header[{i}].Regex", issues)
        inverted = flag(h.get("Invert"), f"{path}.Header[{i}].Invert", issues)
        (without if inverted else headers).append(match)
    params = []
    for i, q in enumerate(_list(http.get("QueryParam"))):
        param = HeaderMatch(str(_map(q).get("Name") or ""), _string_match(_map(q)))
        _check_regex(param.match, f"{path}.QueryParam[{i}].Regex", issues)
        params.append(param)
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
        query_params=tuple(params),
        ignore_uri_case=flag(http.get("CaseInsensitive"), f"{path}.CaseInsensitive", issues),
    )


def _retry(d: Mapping[str, Any], path: str, issues: Issues) -> Retry | None:
    attempts = int(d.get("NumRetries") or 0)
    conditions = [str(c) for c in _list(d.get("RetryOn"))]
    if flag(d.get("RetryOnConnectFailure"), f"{path}.RetryOnConnectFailure", issues):
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
        retries=_retry(dest, f"{path}.Destination", issues),
        headers=header_ops(dest.get("RequestHeaders"), dest.get("ResponseHeaders")),
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
        name=f"{ROUTER_PREFIX}{scope.name}",
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
                headers=header_ops(split.get("RequestHeaders"), split.get("ResponseHeaders")),
            )
        )
    if abs(total - 100.0) > 0.01:
        issues.error("Splits", f"split weights must add up to 100, not {total:g}")
    return VirtualService(
        name=f"{SPLITTER_PREFIX}{scope.name}",
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


def _elsewhere(spec: Mapping[str, Any], path: str, issues: Issues) -> bool:
    """Whether spec targets a peer, another partition or a sameness group: places this agent
    does not watch, so such targets are skipped."""
    for key in ("Peer", "SamenessGroup"):
        if spec.get(key):
            issues.warn(f"{path}.{key}", f"{key} targets are not supported: {spec[key]!r} ignored")
            return True
    partition = spec.get("Partition")
    if partition and partition != "default":
        issues.warn(
            f"{path}.Partition", f"other partitions are not supported: {partition!r} ignored"
        )
        return True
    return False


def _target(
    spec: Mapping[str, Any], scope: _Scope, own: set[str], path: str, issues: Issues
) -> ResolverTarget | None:
    """One Redirect or failover target (Service, ServiceSubset, Namespace, Datacenter; this
    service when Service is unset); None when it lies outside what this agent watches or is
    invalid. Another datacenter's service has a host of its own (remote_host_pattern), whose
    instances the adapter watches there."""
    if _elsewhere(spec, path, issues):
        return None
    service = str(spec.get("Service") or "")
    namespace = str(spec.get("Namespace") or "")
    subset = str(spec.get("ServiceSubset") or "")
    datacenter = str(spec.get("Datacenter") or "")
    if datacenter and datacenter != scope.mapping.datacenter:
        if subset:
            issues.warn(
                f"{path}.ServiceSubset",
                "subsets of another datacenter's service are not supported: all its "
                "instances are used",
            )
        host = scope.mapping.remote_host(
            service or scope.name, namespace or scope.namespace, datacenter
        )
        return ResolverTarget(host)
    if subset and service in ("", scope.name) and not namespace and subset not in own:
        issues.error(f"{path}.ServiceSubset", f"{subset!r} is not a subset of {scope.name!r}")
        return None
    host = scope.host(service or None, namespace or None)
    if host == scope.host() and not subset:
        issues.error(path, "a target must name another service, namespace or subset")
        return None
    return ResolverTarget(host, subset)


def _redirect(entry: Mapping[str, Any], scope: _Scope, issues: Issues) -> ResolverTarget | None:
    spec = entry.get("Redirect")
    if not spec:
        return None
    if entry.get("Failover"):
        issues.error("Redirect", "Redirect and Failover cannot both be set")
        return None
    spec = _map(spec)
    if not spec.get("Service") and (spec.get("ServiceSubset") or spec.get("Namespace")):
        issues.error("Redirect.Service", "Redirect needs a Service with ServiceSubset/Namespace")
        return None
    if entry.get("Subsets") or entry.get("DefaultSubset"):
        issues.warn("Redirect", "Subsets and DefaultSubset do not apply to a redirected service")
    return _target(spec, scope, set(), "Redirect", issues)


def _failover_targets(
    spec: Mapping[str, Any], scope: _Scope, own: set[str], path: str, issues: Issues
) -> list[ResolverTarget]:
    """A Failover entry's targets: Targets, else one per Datacenters entry, else the one
    Service/ServiceSubset/Namespace names."""
    targets = _list(spec.get("Targets"))
    if targets and any(spec.get(k) for k in ("Service", "ServiceSubset", "Namespace")):
        issues.error(path, "Targets cannot be set with Service, ServiceSubset or Namespace")
        return []
    if targets and spec.get("Datacenters"):
        issues.error(path, "Targets cannot be set with Datacenters")
        return []
    if spec.get("Datacenters"):
        # The watched datacenter in the list is the service itself: nothing to fail over to.
        datacenters = [
            str(dc) for dc in _list(spec.get("Datacenters")) if dc != scope.mapping.datacenter
        ]
        targets = [{**spec, "Datacenters": None, "Datacenter": dc} for dc in datacenters]
    elif not targets:
        targets = [spec]
    found = (
        _target(_map(t), scope, own, f"{path}.Targets[{i}]" if "Targets" in spec else path, issues)
        for i, t in enumerate(targets)
    )
    return [t for t in found if t is not None]


def _failover(
    entry: Mapping[str, Any], scope: _Scope, own: set[str], issues: Issues
) -> tuple[Failover, ...]:
    out = []
    for subset, spec in sorted(_map(entry.get("Failover")).items()):
        path = f"Failover.{subset}"
        if subset != "*" and subset not in own:
            issues.warn(path, f"failover for an undefined subset is not supported: {subset!r}")
            continue
        if not any(_map(spec).get(k) for k in _FAILOVER_KEYS):
            issues.error(path, f"one of {', '.join(_FAILOVER_KEYS)} is required")
            continue
        targets = _failover_targets(_map(spec), scope, own, path, issues)
        if targets:
            out.append(Failover(str(subset), tuple(targets)))
    return tuple(out)


_FAILOVER_KEYS = ("Service", "ServiceSubset", "Namespace", "Targets", "Datacenters")


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
    names = {s.name for s in subsets}
    redirect = _redirect(entry, scope, issues)
    failover = _failover(entry, scope, names, issues)
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
        redirect=redirect,
        failover=failover,
    )
