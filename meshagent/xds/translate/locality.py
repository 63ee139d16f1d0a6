"""Locality load balancing (DestinationRule `loadBalancer.localityLbSetting`), as Istio does it.

Localities are Istio's "region/zone/subzone" (trailing parts may be omitted). The settings:

- failover, the default: EDS priorities by closeness to the proxy's locality (same region,
  zone and subzone 0; same region and zone 1; same region 2; elsewhere 3, or with a
  `failover` rule from the proxy's region: its `to` region 3 and the rest 4), renumbered
  densely so that no priority level is empty. Istio applies it only to clusters with outlier
  detection (without it Envoy would never move traffic down a level) and only when the proxy
  knows its locality; `enabled: false` turns it off.
- failoverPriority (with outlier detection too): priorities by how many of the listed labels,
  in order, an endpoint shares with the proxy (its workload's labels plus the topology labels
  of its locality and network); with `failover` rules as well, the locality levels order the
  endpoints within each label level.
- distribute: the first `from` that matches the proxy's locality gives each endpoint locality
  a share of the traffic (a LocalityLbEndpoints weight, with locality-weighted balancing on
  the cluster); localities it does not list get nothing and are left out.

Pure: no I/O, no protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshagent.model import Endpoint, Labels, LoadBalancer, OutlierDetection
from meshagent.model.proxy import ProxySpec

# Failover levels before renumbering: 0-3 by closeness, 4 outside a failover rule's target.
LEVELS = 5
# Istio's topology labels, derived from a locality ("region/zone/subzone") and a network.
TOPOLOGY_LABELS = (
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
)
NETWORK_LABEL = "topology.istio.io/network"


@dataclass(frozen=True, slots=True)
class LocalityPlan:
    """Locality load balancing of one cluster, resolved for the proxy.

    weights empty: failover mode (priorities); else distribute mode, (locality pattern,
    percent) in the rule's order. priority: failoverPriority as (label, the value an
    endpoint must have to match, the proxy's own unless the entry names one).
    """

    proxy: str
    failover: tuple[tuple[str, str], ...] = ()
    weights: tuple[tuple[str, int], ...] = ()
    priority: tuple[tuple[str, str], ...] = ()


def split_locality(text: str) -> tuple[str, str, str]:
    """(region, zone, subzone) of "region/zone/subzone"; missing parts are ""."""
    parts = text.split("/", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def locality_matches(locality: str, pattern: str) -> bool:
    """Istio's locality match: pattern parts equal locality's, "*" matches any part, and an
    omitted zone or subzone matches any (a region is never omitted)."""
    region, zone, subzone = split_locality(locality)
    want_region, want_zone, want_subzone = split_locality(pattern)
    return (
        want_region in ("*", region)
        and want_zone in ("*", "", zone)
        and want_subzone in ("*", "", subzone)
    )


def topology_labels(labels: Labels, locality: str, network: str) -> dict[str, str]:
    """labels plus the topology labels Istio gives every workload and endpoint (region,
    zone, subzone and network), which failoverPriority may name."""
    out = dict(labels)
    for key, part in zip(TOPOLOGY_LABELS, split_locality(locality), strict=True):
        if part:
            out[key] = part
    if network:
        out[NETWORK_LABEL] = network
    return out


def _priority_labels(entries: tuple[str, ...], proxy: ProxySpec) -> tuple[tuple[str, str], ...]:
    """failoverPriority entries ("label" or "label=value") with the value each must have."""
    own = proxy.workloads[0].labels if proxy.workloads else ()
    labels = topology_labels(own, proxy.locality, proxy.network)
    out = []
    for entry in entries:
        key, given, value = entry.partition("=")
        out.append((key, value if given else labels.get(key, "")))
    return tuple(out)


def locality_plan(
    lb: LoadBalancer | None, outlier: OutlierDetection | None, proxy: ProxySpec
) -> LocalityPlan | None:
    """The locality balancing a cluster with these settings gets from proxy; None when it
    gets none (the usual case)."""
    setting = lb.locality if lb is not None else None
    if setting is not None and setting.enabled is False:
        return None
    if setting is not None and setting.distribute:
        for rule in setting.distribute:
            if locality_matches(proxy.locality, rule.source):
                return LocalityPlan(proxy.locality, weights=rule.to)
        return None
    if outlier is None:
        return None
    failover = setting.failover if setting is not None else ()
    if setting is not None and setting.failover_priority:
        priority = _priority_labels(setting.failover_priority, proxy)
        return LocalityPlan(proxy.locality, failover, priority=priority)
    if not proxy.locality:
        return None
    return LocalityPlan(proxy.locality, failover)


def failover_level(
    proxy: tuple[str, str, str], failover: Iterable[tuple[str, str]], at: str
) -> int:
    """The failover level (0-4) of an endpoint in locality `at` for a proxy in `proxy`."""
    region, zone, subzone = split_locality(at)
    if region == proxy[0]:
        if zone != proxy[1]:
            return 2
        return 0 if subzone == proxy[2] else 1
    for source, target in failover:
        if source == proxy[0]:
            # Only the first rule from the proxy's region counts (Istio's order).
            return 3 if region == target else 4
    return 3


def label_level(priority: tuple[tuple[str, str], ...], endpoint: Endpoint) -> int:
    """failoverPriority's level of endpoint: 0 when every label matches, else the number of
    labels from the first one that does not match to the end (a label counts only after
    all before it matched)."""
    labels = topology_labels(endpoint.labels, endpoint.locality, endpoint.network)
    for i, (key, value) in enumerate(priority):
        if labels.get(key, "") != value:
            return len(priority) - i
    return 0


def _level(plan: LocalityPlan, proxy: tuple[str, str, str], endpoint: Endpoint) -> int:
    if not plan.priority:
        return failover_level(proxy, plan.failover, endpoint.locality)
    level = label_level(plan.priority, endpoint)
    if plan.failover:
        # Both set: the labels order first, the locality failover within each of their levels.
        return level * LEVELS + failover_level(proxy, plan.failover, endpoint.locality)
    return level


def failover_groups(plan: LocalityPlan, endpoints: Sequence[Endpoint]) -> list[list[Endpoint]]:
    """endpoints (in their order) by failover level, most preferred first, one group per
    level that has endpoints: priorities stay dense."""
    proxy = split_locality(plan.proxy)
    groups: dict[int, list[Endpoint]] = {}
    for endpoint in endpoints:
        groups.setdefault(_level(plan, proxy, endpoint), []).append(endpoint)
    return [groups[level] for level in sorted(groups)]


def locality_weights(plan: LocalityPlan, endpoints: Sequence[Endpoint]) -> dict[str, int]:
    """The load_balancing_weight of each endpoint locality under plan's distribute rule;
    localities without one (unlisted, or listed with 0) get no traffic.

    Each `to` entry claims the localities it matches that no earlier entry claimed, and
    splits its percent among them by their endpoints' total weight, rounding up (Istio's
    arithmetic).
    """
    totals: dict[str, int] = {}
    for endpoint in endpoints:
        totals[endpoint.locality] = totals.get(endpoint.locality, 0) + endpoint.weight
    unclaimed = dict(totals)
    out: dict[str, int] = {}
    for pattern, percent in plan.weights:
        claimed = [at for at in unclaimed if locality_matches(at, pattern)]
        total = sum(unclaimed[at] for at in claimed)
        for at in claimed:
            share = -(-unclaimed.pop(at) * percent // total)  # rounded up
            if share > 0:
                out[at] = share
    return out
