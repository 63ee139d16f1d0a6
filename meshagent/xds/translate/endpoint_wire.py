"""ClusterLoadAssignments serialized straight from the model, without protobuf messages.

A mesh has about ten endpoints per cluster, and building each LbEndpoint as a message costs
more than the rest of the translation (and makes work for the garbage collector). The bytes
are the same as `build_load_assignment(...).SerializeToString(deterministic=True)`; tests
check that. The parts after the address (health, weight) are shared by many endpoints
and serialized once each by protobuf itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint

from meshagent.model import Endpoint, ServicePort
from meshagent.xds.translate.endpoints import (
    endpoints_by_address,
    locality_of,
    selected_endpoints,
)
from meshagent.xds.translate.policy import ClusterPlan
from meshagent.xds.wire import bytes_field, string_field, varint

# Field numbers: ClusterLoadAssignment.cluster_name 1, .endpoints 2; LocalityLbEndpoints
# .locality 1, .lb_endpoints 2; LbEndpoint.endpoint 1; Endpoint.address 1;
# Address.socket_address 1; SocketAddress.address 2, .port_value 3.
_NESTED = b"\x0a"  # field 1, length-delimited
_ADDRESS = b"\x12"  # field 2, length-delimited
_PORT = b"\x18"  # field 3, varint
_PRIORITY = b"\x28"  # LocalityLbEndpoints.priority, field 5, varint
_LOCALITY_GROUP = b"\x12"  # ClusterLoadAssignment.endpoints, field 2, length-delimited
_WEIGHT_VALUE = b"\x08"  # UInt32Value.value, field 1, varint (LocalityLbEndpoints field 3)


def foreign_port(endpoint: Endpoint, port: ServicePort) -> int:
    """The port of another service's endpoint serving port: the one of the same name, else its
    only port, else port's own number (as for an endpoint without ports)."""
    if len(endpoint.ports) == 1:
        return endpoint.ports[0][1]
    return endpoint.port_for(port)


class EndpointEncoder:
    """Serialized pieces shared between endpoints; one per full translation pass."""

    def __init__(self) -> None:
        self._tails: dict[tuple[int, bool], bytes] = {}
        self._localities: dict[str, bytes] = {}
        # (port, weight, healthy) -> (SocketAddress bytes besides the address, tail size,
        # port field + tail, headers by address length): the bytes around the address in most
        # endpoints' encoding.
        self._suffixes: dict[tuple[int, int, bool], tuple[int, int, bytes, dict[int, bytes]]] = {}

    def _tail(self, endpoint: Endpoint) -> bytes:
        """health_status and load_balancing_weight (fields 2 and 4) of an LbEndpoint."""
        key = (endpoint.weight, endpoint.healthy)
        found = self._tails.get(key)
        if found is None:
            out = LbEndpoint()
            out.load_balancing_weight.value = endpoint.weight
            if not endpoint.healthy:
                out.health_status = health_check_pb2.UNHEALTHY
            found = self._tails[key] = out.SerializeToString(deterministic=True)
        return found

    def lb_endpoint(self, endpoint: Endpoint, port: int) -> bytes:
        """One serialized LbEndpoint: its socket address nested three deep, then the tail."""
        address = endpoint.address.encode()
        socket = _ADDRESS + varint(len(address)) + address + _PORT + varint(port)
        inner = _NESTED + varint(len(socket)) + socket
        host = _NESTED + varint(len(inner)) + inner
        return _NESTED + varint(len(host)) + host + self._tail(endpoint)

    def lb_endpoint_field(self, endpoint: Endpoint, port: int) -> bytes:
        """lb_endpoint as a LocalityLbEndpoints.lb_endpoints field (tag and length first)."""
        key = (port, endpoint.weight, endpoint.healthy)
        found = self._suffixes.get(key)
        if found is None:
            port_bytes = varint(port)
            tail = self._tail(endpoint)
            found = self._suffixes[key] = (
                3 + len(port_bytes),
                len(tail),
                _PORT + port_bytes + tail,
                {},
            )
        socket_extra, tail_size, suffix, heads = found
        address = endpoint.address.encode()
        head = heads.get(len(address))
        if head is not None:
            return head + address + suffix
        size = len(address) + socket_extra  # the SocketAddress
        total = size + 6 + tail_size  # the LbEndpoint
        if total < 128:
            # Every length fits one byte (the usual case): the headers depend on the
            # address's length only, so they are kept per length.
            head = bytes((18, total, 10, size + 4, 10, size + 2, 10, size, 18, len(address)))
            heads[len(address)] = head
            return head + address + suffix
        lb = self.lb_endpoint(endpoint, port)
        return b"\x12" + varint(len(lb)) + lb

    def locality(self, text: str) -> bytes:
        """The locality field (1) of a LocalityLbEndpoints, empty for no locality."""
        found = self._localities.get(text)
        if found is None:
            found = b""
            if text:
                found = bytes_field(1, locality_of(text).SerializeToString(deterministic=True))
            self._localities[text] = found
        return found

    def load_assignment(self, plan: ClusterPlan, endpoints: tuple[Endpoint, ...]) -> bytes:
        """The serialized ClusterLoadAssignment of plan's cluster (see build_load_assignment).

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
        suffixes = self._suffixes
        parts = [string_field(1, plan.name)]
        locality: str | None = None
        lbs: list[bytes] = []
        last = ""
        for endpoint in chosen:
            text = endpoint.address
            if endpoint.locality != locality:
                if locality is not None:
                    if by_address:
                        return None
                    parts.append(bytes_field(2, self.locality(locality) + b"".join(lbs)))
                locality, lbs = endpoint.locality, []
            elif by_address and text <= last:
                return None
            last = text
            port = endpoint.port_for(service_port) if endpoint.ports else default_port
            found = suffixes.get((port, endpoint.weight, endpoint.healthy))
            address = text.encode()
            if found is not None and (head := found[3].get(len(address))) is not None:
                lbs.append(head + address + found[2])
            else:
                lbs.append(self.lb_endpoint_field(endpoint, port))  # fills both caches
        if locality is None:
            return parts[0]
        # The last (usually only) group joins with the rest: one copy of the bytes, not three.
        place = self.locality(locality)
        size = len(place) + sum(map(len, lbs))
        return b"".join([*parts, _LOCALITY_GROUP + varint(size), place, *lbs])

    def prioritized_assignment(
        self,
        plan: ClusterPlan,
        groups: Sequence[tuple[Sequence[Endpoint], bool]],
        weights: Mapping[str, int] | None = None,
    ) -> bytes:
        """The serialized ClusterLoadAssignment of plan's cluster from endpoint groups in
        priority order, each (selected endpoints, whether they are the plan's own host's);
        empty groups take no priority, so priorities stay contiguous.

        With weights (locality -> load_balancing_weight, for locality-weighted balancing),
        each locality group carries its weight, and localities without one are left out.
        """
        default_port = plan.port.target_port or plan.port.number
        parts = [string_field(1, plan.name)]
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
            level = _PRIORITY + varint(priority) if priority else b""
            for locality, lbs in localities.items():
                weight = b""
                if weights is not None:
                    weight = bytes_field(3, _WEIGHT_VALUE + varint(weights[locality]))
                group = self.locality(locality) + b"".join(lbs) + weight + level
                parts.append(bytes_field(2, group))
            priority += 1
        return b"".join(parts)
