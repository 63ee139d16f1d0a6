"""Where an EDS cluster's endpoints come from, in priority order (Consul's resolver chain).

Usually just the cluster's own host, narrowed to its subset. A rule's redirect replaces that
with another host (its subset, else its default subset); a rule's failover adds hosts after
it, each one EDS priority lower. Envoy sends traffic to the highest priority that has healthy
endpoints, and spills over to the next one as health drops, so when a subset's instances are
gone (Consul removes failing ones) its failover targets take the traffic, without any push of
routes or clusters. Priorities stay contiguous: a source with no endpoints takes none.
Only one level is followed: a target's own redirect or failover does not apply again.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshagent.model import NO_LABELS, Endpoint, Labels, ResolverTarget
from meshagent.xds.translate.context import RuleIndex
from meshagent.xds.translate.policy import ClusterPlan

# (labels selecting endpoints, the endpoints to select from, whether they are the plan's own)
Source = tuple[Labels, tuple[Endpoint, ...], bool]


def has_sources(plan: ClusterPlan) -> bool:
    """Whether plan takes endpoints from anywhere but its own host."""
    return plan.redirect is not None or bool(plan.failover)


def source_hosts(plan: ClusterPlan) -> tuple[str, ...]:
    """The other hosts plan takes endpoints from."""
    targets = ((plan.redirect,) if plan.redirect is not None else ()) + plan.failover
    return tuple(t.host for t in targets)


def target_labels(target: ResolverTarget, rules: RuleIndex) -> Labels | None:
    """The labels selecting target's endpoints: its subset's, else its rule's default subset's,
    else all (NO_LABELS). None when the subset does not exist: nothing is selected."""
    rule = rules.rule_for(target.host)
    name = target.subset or (rule.default_subset if rule is not None else "")
    if not name:
        return NO_LABELS
    subset = rule.subset(name) if rule is not None else None
    return subset.labels if subset is not None else None


def sources(
    plan: ClusterPlan, endpoints: Mapping[str, tuple[Endpoint, ...]], rules: RuleIndex
) -> list[Source]:
    """plan's endpoint sources, highest priority first."""
    out: list[Source] = []
    if plan.redirect is None:
        out.append((plan.labels, endpoints.get(plan.service.host, ()), True))
    for target in ((plan.redirect,) if plan.redirect is not None else ()) + plan.failover:
        labels = target_labels(target, rules)
        if labels is not None:
            out.append((labels, endpoints.get(target.host, ()), False))
    return out


def all_source_endpoints(
    plans: tuple[ClusterPlan, ...], host: str, endpoints: Mapping[str, tuple[Endpoint, ...]]
) -> tuple[Endpoint, ...]:
    """The endpoints of host and of every host its plans take endpoints from."""
    others = [h for p in plans for h in source_hosts(p)]
    if not others:
        return endpoints.get(host, ())
    hosts = dict.fromkeys([host, *others])
    return tuple(e for h in hosts for e in endpoints.get(h, ()))
