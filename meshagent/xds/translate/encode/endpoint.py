"""ClusterLoadAssignments serialized straight from the model, without protobuf messages.

A mesh has about ten endpoints per cluster, and building each LbEndpoint as a message costs
more than the rest of the translation (and makes work for the garbage collector). The bytes
are the same as the protobuf builders' (endpoints.py: build_load_assignment and
build_prioritized_assignment) serialized deterministically; tests/unit/
test_encode_equivalence.py checks that. Every fragment around an address and a port (the
nesting of LbEndpoint, the port's tag, health, weight) is cut out of LbEndpoints that
fill_lb_endpoint filled, once per weight, health, address length and port length;
localities, weights and priorities are serialized by protobuf once each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cache

from envoy.config.endpoint.v3.endpoint_components_pb2 import LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from meshagent.model import Endpoint
from meshagent.xds.translate.encode.wire import (
    bytes_field,
    field_number,
    split_between,
    string_field,
    tag,
)
from meshagent.xds.translate.endpoints import (
    endpoints_by_address,
    fill_lb_endpoint,
    foreign_port,
    locality_of,
    selected_endpoints,
)
from meshagent.xds.translate.policy import ClusterPlan
from meshagent.xds.wire import varint

_CLUSTER_NAME = field_number(ClusterLoadAssignment, "cluster_name")
_ENDPOINTS = field_number(ClusterLoadAssignment, "endpoints")
_ENDPOINTS_TAG = tag(ClusterLoadAssignment, "endpoints")


def _cluster_name(name: str) -> bytes:
    return string_field(_CLUSTER_NAME, name)


def _one_lb_endpoint(endpoint: Endpoint, port: int) -> bytes:
    """A LocalityLbEndpoints holding endpoint alone, serialized: its lb_endpoints field."""
    group = LocalityLbEndpoints()
    fill_lb_endpoint(group.lb_endpoints.add(), endpoint, port)
    encoded: bytes = group.SerializeToString(deterministic=True)
    return encoded


@cache
def _priority(priority: int) -> bytes:
    """The priority field of a LocalityLbEndpoints (empty for 0, as protobuf writes it)."""
    encoded: bytes = LocalityLbEndpoints(priority=priority).SerializeToString(deterministic=True)
    return encoded


def _weight_field(weight: int) -> bytes:
    """The load_balancing_weight field of a LocalityLbEndpoints."""
    group = LocalityLbEndpoints()
    group.load_balancing_weight.value = weight
    encoded: bytes = group.SerializeToString(deterministic=True)
    return encoded


class EndpointEncoder:
    """Serialized pieces shared between endpoints; one per full translation pass."""

    def __init__(self) -> None:
        self._localities: dict[str, bytes] = {}
        self._weights: dict[int, bytes] = {}
        # (port, weight, healthy) -> (the lb_endpoints field after the address, its heads
        # before the address by address length): the bytes around the address in every
        # endpoint's encoding.
        self._parts: dict[tuple[int, int, bool], tuple[bytes, dict[int, bytes]]] = {}
        # (port's varint size, weight, healthy, address size) -> the cuts of _shape.
        self._shapes: dict[tuple[int, int, bool, int], tuple[bytes, bytes, bytes]] = {}

    def lb_endpoint_field(self, endpoint: Endpoint, port: int) -> bytes:
        """fill_lb_endpoint(endpoint, port) as a LocalityLbEndpoints.lb_endpoints field."""
        address = endpoint.address.encode()
        size = len(address)
        key = (port, endpoint.weight, endpoint.healthy)
        found = self._parts.get(key)
        if found is not None and (head := found[1].get(size)) is not None:
            return head + address + found[0]
        if not size or port <= 0:  # nothing to cut around (the model never gives either)
            return _one_lb_endpoint(endpoint, port)
        port_bytes = varint(port)
        head, between, tail = self._shape(endpoint, len(port_bytes), size)
        if found is None:
            found = self._parts[key] = (between + port_bytes + tail, {})
        found[1][size] = head
        return head + address + found[0]

    def _shape(self, endpoint: Endpoint, port_size: int, size: int) -> tuple[bytes, bytes, bytes]:
        """The lb_endpoints field of endpoint cut around its address of size bytes and its
        port of port_size varint bytes: (before the address, between them, after the port).

        Cut out of fill_lb_endpoint's output once per weight, health and both sizes, so
        that a mesh with a port per service costs no protobuf message per port.
        """
        key = (port_size, endpoint.weight, endpoint.healthy, size)
        found = self._shapes.get(key)
        if found is None:
            low = 1 << 7 * (port_size - 1)  # the smallest port of that size (and low + 1)
            first = _one_lb_endpoint(replace(endpoint, address="a" * size), low)
            other = _one_lb_endpoint(replace(endpoint, address="b" * size), low)
            head, _ = split_between(first, other, b"a" * size, b"b" * size)
            moved = _one_lb_endpoint(replace(endpoint, address="a" * size), low + 1)
            before, tail = split_between(first, moved, varint(low), varint(low + 1))
            found = self._shapes[key] = (head, before[len(head) + size :], tail)
        return found

    def locality(self, text: str) -> bytes:
        """The locality field of a LocalityLbEndpoints, empty for no locality."""
        found = self._localities.get(text)
        if found is None:
            found = b""
            if text:
                group = LocalityLbEndpoints(locality=locality_of(text))
                found = group.SerializeToString(deterministic=True)
            self._localities[text] = found
        return found

    def _weight(self, weight: int) -> bytes:
        found = self._weights.get(weight)
        if found is None:
            found = self._weights[weight] = _weight_field(weight)
        return found

    def load_assignment(self, plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> bytes:
        """build_load_assignment(plan, endpoints), serialized.

        The hottest loop of a full translation, run for every endpoint of the mesh. Most
        clusters have one locality and distinct addresses, where sorting by address gives
        selected_endpoints' order for half the cost of its key; the encoding checks that as
        it goes, and starts over in the full order when it does not hold.
        """
        encoded = self._encode(plan, endpoints_by_address(plan, endpoints), by_address=True)
        if encoded is None:
            encoded = self._encode(plan, selected_endpoints(plan, endpoints), by_address=False)
            assert encoded is not None  # only the address order can fail its check
        return encoded

    def _encode(
        self, plan: ClusterPlan, chosen: list[Endpoint], *, by_address: bool
    ) -> bytes | None:
        """The assignment of chosen, sorted by locality; None when by_address and chosen has
        several localities or a repeated address (so it may be in the wrong order).

        lb_endpoint_field's common case is inlined, and each locality's group is written as
        it ends (the endpoints are grouped by locality).
        """
        service_port = plan.port
        default_port = service_port.target_port or service_port.number
        parts_of = self._parts
        parts = [_cluster_name(plan.name)]
        locality: str | None = None
        lbs: list[bytes] = []
        last = ""
        for endpoint in chosen:
            text = endpoint.address
            if endpoint.locality != locality:
                if locality is not None:
                    if by_address:
                        return None
                    parts.append(bytes_field(_ENDPOINTS, self.locality(locality) + b"".join(lbs)))
                locality, lbs = endpoint.locality, []
            elif by_address and text <= last:
                return None
            last = text
            port = endpoint.port_for(service_port) if endpoint.ports else default_port
            found = parts_of.get((port, endpoint.weight, endpoint.healthy))
            address = text.encode()
            if found is not None and (head := found[1].get(len(address))) is not None:
                lbs.append(head + address + found[0])
            else:
                lbs.append(self.lb_endpoint_field(endpoint, port))  # fills the cache
        if locality is None:
            return parts[0]
        # The last (usually only) group joins with the rest: one copy of the bytes, not three.
        place = self.locality(locality)
        size = len(place) + sum(map(len, lbs))
        return b"".join([*parts, _ENDPOINTS_TAG + varint(size), place, *lbs])

    def prioritized_assignment(
        self,
        plan: ClusterPlan,
        groups: Sequence[tuple[Sequence[Endpoint], bool]],
        weights: Mapping[str, int] | None = None,
    ) -> bytes:
        """build_prioritized_assignment(plan, groups, weights), serialized."""
        default_port = plan.port.target_port or plan.port.number
        parts = [_cluster_name(plan.name)]
        priority = 0
        for endpoints, own in groups:
            if weights is not None:
                endpoints = [e for e in endpoints if e.locality in weights]
            if not endpoints:
                continue
            localities: dict[str, list[bytes]] = {}
            for endpoint in endpoints:
                if own:
                    port = endpoint.port_for(plan.port) if endpoint.ports else default_port
                else:
                    port = foreign_port(endpoint, plan.port)
                localities.setdefault(endpoint.locality, []).append(
                    self.lb_endpoint_field(endpoint, port)
                )
            level = _priority(priority)
            for locality, lbs in localities.items():
                weight = b"" if weights is None else self._weight(weights[locality])
                group = self.locality(locality) + b"".join(lbs) + weight + level
                parts.append(bytes_field(_ENDPOINTS, group))
            priority += 1
        return b"".join(parts)
