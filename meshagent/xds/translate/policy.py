"""Which clusters a service needs, and the traffic policy that applies to each.

A DestinationRule's policy is layered the way Istio layers it, each layer replacing whole
settings (load balancer, connection pool, outlier detection, TLS) of the one below:
top-level < top-level port setting < subset < subset port setting.
Both the cluster and the endpoint generators read the same plan, so an EDS cluster and its
ClusterLoadAssignment can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from operator import attrgetter

from meshagent.construct import slots_constructor
from meshagent.model import (
    NO_LABELS,
    ClientTls,
    ConnectionPool,
    DestinationRule,
    Labels,
    LoadBalancer,
    OutlierDetection,
    Resolution,
    ResolverTarget,
    Service,
    ServicePort,
    TrafficPolicy,
)
from meshagent.model.proxy import ROUTER, ProxySpec
from meshagent.xds import names
from meshagent.xds.translate.locality import LocalityPlan, locality_plan


class Discovery(StrEnum):
    """How Envoy learns a cluster's hosts."""

    EDS = "EDS"
    STRICT_DNS = "STRICT_DNS"
    LOGICAL_DNS = "LOGICAL_DNS"
    ORIGINAL_DST = "ORIGINAL_DST"


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The DestinationRule settings that apply to one (port, subset) cluster."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTls | None = None


NO_POLICY = EffectivePolicy()


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """One outbound cluster to generate: a port of a service, maybe narrowed to a subset."""

    name: str
    service: Service
    port: ServicePort
    subset: str
    labels: Labels
    policy: EffectivePolicy
    discovery: Discovery
    # Consul resolver semantics (see resolve.py): endpoints from another host instead of this
    # one's, and hosts to fail over to, in order.
    redirect: ResolverTarget | None = None
    failover: tuple[ResolverTarget, ...] = ()
    # Locality load balancing resolved for the proxy's locality (locality.py); None: none.
    locality: LocalityPlan | None = None


_DISCOVERY = {
    Resolution.STATIC: Discovery.EDS,
    Resolution.DNS: Discovery.STRICT_DNS,
    Resolution.DNS_ROUND_ROBIN: Discovery.LOGICAL_DNS,
    Resolution.NONE: Discovery.ORIGINAL_DST,
}


def _overlay(base: EffectivePolicy, top: TrafficPolicy | None, port: int) -> EffectivePolicy:
    """base with the settings of top (then of top's entry for port) laid over it."""
    if top is None:
        return base
    layered = EffectivePolicy(
        load_balancer=top.load_balancer or base.load_balancer,
        connection_pool=top.connection_pool or base.connection_pool,
        outlier_detection=top.outlier_detection or base.outlier_detection,
        tls=top.tls or base.tls,
    )
    for level in top.port_level:
        if level.port == port:
            return EffectivePolicy(
                load_balancer=level.load_balancer or layered.load_balancer,
                connection_pool=level.connection_pool or layered.connection_pool,
                outlier_detection=level.outlier_detection or layered.outlier_detection,
                tls=level.tls or layered.tls,
            )
    return layered


def effective_policy(rule: DestinationRule | None, subset: str, port: int) -> EffectivePolicy:
    """The merged policy of rule for one port and (optionally) one subset; no subset means
    the rule's default subset, if it has one."""
    if rule is None:
        return NO_POLICY
    merged = _overlay(NO_POLICY, rule.traffic_policy, port)
    subset = subset or rule.default_subset
    chosen = rule.subset(subset) if subset else None
    if chosen is not None:
        merged = _overlay(merged, chosen.traffic_policy, port)
    return merged


def _credential_scope(
    policy: EffectivePolicy, rule: DestinationRule, proxy: ProxySpec | None
) -> EffectivePolicy:
    """policy without its tls.credentialName where Istio ignores it: credentialName applies
    at gateways (routers), and at sidecars only from a rule with a workloadSelector; other
    sidecars keep to the certificate files of the rule."""
    tls = policy.tls
    if tls is None or not tls.credential_name:
        return policy
    if rule.workload_selector is not None or (proxy is not None and proxy.proxy_type == ROUTER):
        return policy
    return replace(policy, tls=replace(tls, credential_name=""))


def discovery_for(service: Service, policy: EffectivePolicy) -> Discovery:
    """The discovery type: from the resolution, unless the rule asks for pass-through."""
    lb = policy.load_balancer
    if lb is not None and lb.simple.upper() == "PASSTHROUGH":
        return Discovery.ORIGINAL_DST
    return _DISCOVERY[service.resolution]


def _plan(
    service: Service,
    port: ServicePort,
    rule: DestinationRule,
    subset: str,
    labels: Labels,
    proxy: ProxySpec | None,
) -> ClusterPlan:
    policy = _credential_scope(effective_policy(rule, subset, port.number), rule, proxy)
    failover = rule.failover_for(subset or rule.default_subset)
    discovery = discovery_for(service, policy)
    locality = None
    if discovery is Discovery.EDS and proxy is not None:
        locality = locality_plan(policy.load_balancer, policy.outlier_detection, proxy)
    return ClusterPlan(
        name=names.cluster_name(port.number, service.host, subset),
        service=service,
        port=port,
        subset=subset,
        labels=labels,
        policy=policy,
        discovery=discovery,
        redirect=rule.redirect,
        failover=failover.targets if failover is not None else (),
        locality=locality,
    )


def plan_clusters(
    service: Service, rule: DestinationRule | None, proxy: ProxySpec | None = None
) -> tuple[ClusterPlan, ...]:
    """Every cluster for service: one per port, then one per (port, subset) of rule, for
    proxy (its locality and labels matter to locality load balancing only; None: none)."""
    ports = service.ports if len(service.ports) < 2 else sorted(service.ports, key=_number)
    if rule is None:
        # Most hosts of a mesh: no policy, no subsets, nothing to layer (built once per host).
        discovery = _DISCOVERY[service.resolution]
        return tuple(
            [
                _make_plan(
                    names.cluster_name(port.number, service.host),
                    service,
                    port,
                    "",
                    NO_LABELS,
                    NO_POLICY,
                    discovery,
                    None,
                    (),
                    None,
                )
                for port in ports
            ]
        )
    plans: list[ClusterPlan] = []
    # A default subset narrows the whole-service cluster, so that every route naming no
    # subset reaches only that subset's endpoints, with that subset's policy.
    default = rule.subset(rule.default_subset) if rule.default_subset else None
    whole_labels = default.labels if default is not None else NO_LABELS
    for port in ports:
        plans.append(_plan(service, port, rule, "", whole_labels, proxy))
        for subset in rule.subsets:
            plans.append(_plan(service, port, rule, subset.name, subset.labels, proxy))
    return tuple(plans)


_number = attrgetter("number")
# One plan per service port of the mesh: the positional constructor (meshagent/construct.py).
_make_plan = slots_constructor(
    ClusterPlan,
    "name",
    "service",
    "port",
    "subset",
    "labels",
    "policy",
    "discovery",
    "redirect",
    "failover",
    "locality",
)
