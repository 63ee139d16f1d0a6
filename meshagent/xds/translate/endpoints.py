"""ClusterLoadAssignments: the instances behind each EDS cluster.

Every endpoint is sent, unhealthy ones with health_status UNHEALTHY rather than dropped, so
that `config_dump` shows them and Envoy's panic threshold can still count them.
Endpoints are grouped by locality ("region/zone/subzone"), all at priority 0 unless locality
load balancing (locality.py) or Consul failover (resolve.py) assigns priorities; those are
built by build_prioritized_assignment. These builders define the shape; the translator
serializes the same bytes without building messages (encode/endpoint.py), and
tests/unit/test_encode_equivalence.py proves the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint, LocalityLbEndpoints

from meshagent.model import Endpoint, ServicePort, selector_matches
from meshagent.xds.translate.policy import ClusterPlan


def _subset(plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
    """The endpoints of plan's subset (all of them for the whole-service cluster), a new list."""
    if plan.labels:
        return [e for e in endpoints if selector_matches(plan.labels, e.labels)]
    return list(endpoints)


def selected_endpoints(plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
    """The endpoints of plan's subset in a stable order (locality, address), so that
    discovery order never shows in the output."""
    chosen = _subset(plan, endpoints)
    chosen.sort(key=_endpoint_order)
    return chosen


def endpoints_by_address(plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
    """The endpoints of plan's subset sorted by address only: the order of selected_endpoints
    when they share one locality and no address repeats (the caller checks), at half the
    cost (no key tuple per endpoint)."""
    chosen = _subset(plan, endpoints)
    chosen.sort(key=_address)
    return chosen


# (locality, address, ports): a C-level key function, cheaper than a Python one per endpoint.
_endpoint_order = attrgetter("locality", "address", "ports")
_address = attrgetter("address")


def endpoints_of_plan(plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> list[tuple[str, int]]:
    """(address, port) of each selected endpoint, for clusters that carry hosts inline."""
    return [(e.address, e.port_for(plan.port)) for e in selected_endpoints(plan, endpoints)]


def locality_of(text: str) -> base_pb2.Locality:
    """A Locality from Istio's "region/zone/subzone" notation (trailing parts optional)."""
    parts = [*text.split("/", 2), "", ""]
    return base_pb2.Locality(region=parts[0], zone=parts[1], sub_zone=parts[2])


def fill_lb_endpoint(out: LbEndpoint, endpoint: Endpoint, port: int) -> None:
    """Fill one LbEndpoint in place (adding to the parent directly avoids a copy per endpoint):
    address, weight, health.

    The endpoint's labels are not sent, as Istio sends none: nothing in Envoy reads them
    (subsets are clusters of their own), and Envoy keeps a copy of each host's metadata,
    about 1.9 KB a host (3% of Envoy's memory at 4,000 single-endpoint clusters)."""
    address = out.endpoint.address.socket_address
    address.address = endpoint.address
    address.port_value = port
    # The model guarantees weight >= 1; Envoy rejects 0.
    out.load_balancing_weight.value = endpoint.weight
    if not endpoint.healthy:
        out.health_status = health_check_pb2.UNHEALTHY


def build_load_assignment(
    plan: ClusterPlan, endpoints: tuple[Endpoint, ...]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment of plan's cluster."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=plan.name)
    default_port = plan.port.target_port or plan.port.number
    current: str | None = None
    add = assignment.endpoints.add().lb_endpoints.add
    for endpoint in selected_endpoints(plan, endpoints):
        if endpoint.locality != current:
            # Sorted by locality, so each locality's endpoints are contiguous.
            group = assignment.endpoints[0] if current is None else assignment.endpoints.add()
            if endpoint.locality:
                group.locality.CopyFrom(locality_of(endpoint.locality))
            add, current = group.lb_endpoints.add, endpoint.locality
        port = endpoint.port_for(plan.port) if endpoint.ports else default_port
        fill_lb_endpoint(add(), endpoint, port)
    if current is None:
        del assignment.endpoints[:]
    return assignment


def foreign_port(endpoint: Endpoint, port: ServicePort) -> int:
    """The port of another service's endpoint serving port: the one of the same name, else its
    only port, else port's own number (as for an endpoint without ports)."""
    if len(endpoint.ports) == 1:
        return endpoint.ports[0][1]
    return endpoint.port_for(port)


def build_prioritized_assignment(
    plan: ClusterPlan,
    groups: Sequence[tuple[Sequence[Endpoint], bool]],
    weights: Mapping[str, int] | None = None,
) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment of plan's cluster from endpoint groups in priority order,
    each (selected endpoints, whether they are the plan's own host's); empty groups take no
    priority, so priorities stay contiguous. Within a priority, one LocalityLbEndpoints per
    locality, in the order the localities first appear.

    With weights (locality -> load_balancing_weight, for locality-weighted balancing), each
    locality group carries its weight, and localities without one are left out.
    """
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=plan.name)
    priority = 0
    for endpoints, own in groups:
        if weights is not None:
            endpoints = [e for e in endpoints if e.locality in weights]
        if not endpoints:
            continue
        localities: dict[str, LocalityLbEndpoints] = {}
        for endpoint in endpoints:
            group = localities.get(endpoint.locality)
            if group is None:
                group = localities[endpoint.locality] = assignment.endpoints.add()
                if endpoint.locality:
                    group.locality.CopyFrom(locality_of(endpoint.locality))
                if weights is not None:
                    group.load_balancing_weight.value = weights[endpoint.locality]
                group.priority = priority
            port = endpoint.port_for(plan.port) if own else foreign_port(endpoint, plan.port)
            fill_lb_endpoint(group.lb_endpoints.add(), endpoint, port)
        priority += 1
    return assignment
