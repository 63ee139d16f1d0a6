"""ClusterLoadAssignments serialized straight from the model, without protobuf messages.

A mesh has about ten endpoints per cluster, and building each LbEndpoint as a message costs
more than the rest of the translation (and makes work for the garbage collector). The bytes
are the same as `build_load_assignment(...).SerializeToString(deterministic=True)`; tests
check that. The parts after the address (health, labels, weight) are shared by many endpoints
and serialized once each by protobuf itself.
"""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint

from meshagent.model import Endpoint, Labels
from meshagent.xds.translate.endpoints import MetadataCache, locality_of, selected_endpoints
from meshagent.xds.translate.policy import ClusterPlan
from meshagent.xds.translate.wire import bytes_field, string_field, varint

# Field numbers: ClusterLoadAssignment.cluster_name 1, .endpoints 2; LocalityLbEndpoints
# .locality 1, .lb_endpoints 2; LbEndpoint.endpoint 1; Endpoint.address 1;
# Address.socket_address 1; SocketAddress.address 2, .port_value 3.
_NESTED = b"\x0a"  # field 1, length-delimited
_ADDRESS = b"\x12"  # field 2, length-delimited
_PORT = b"\x18"  # field 3, varint


class EndpointEncoder:
    """Serialized pieces shared between endpoints; one per full translation pass."""

    def __init__(self) -> None:
        self._metadata = MetadataCache()
        self._tails: dict[tuple[int, bool, Labels], bytes] = {}
        self._localities: dict[str, bytes] = {}
        # (port, weight, healthy, labels) -> (SocketAddress bytes besides the address, tail
        # size, port field + tail): what follows the address in most endpoints' encoding.
        self._suffixes: dict[tuple[int, int, bool, Labels], tuple[int, int, bytes]] = {}

    def _tail(self, endpoint: Endpoint) -> bytes:
        """health_status, metadata and load_balancing_weight (fields 2-4) of an LbEndpoint."""
        key = (endpoint.weight, endpoint.healthy, endpoint.labels)
        found = self._tails.get(key)
        if found is None:
            out = LbEndpoint()
            out.load_balancing_weight.value = endpoint.weight
            if not endpoint.healthy:
                out.health_status = health_check_pb2.UNHEALTHY
            if endpoint.labels:
                out.metadata.CopyFrom(self._metadata.get(endpoint.labels))
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
        key = (port, endpoint.weight, endpoint.healthy, endpoint.labels)
        found = self._suffixes.get(key)
        if found is None:
            port_bytes = varint(port)
            tail = self._tail(endpoint)
            found = self._suffixes[key] = (
                3 + len(port_bytes),
                len(tail),
                _PORT + port_bytes + tail,
            )
        socket_extra, tail_size, suffix = found
        address = endpoint.address.encode()
        size = len(address) + socket_extra  # the SocketAddress
        total = size + 6 + tail_size  # the LbEndpoint
        if total < 128:
            # Every length fits one byte (the usual case): all headers in one go.
            head = (18, total, 10, size + 4, 10, size + 2, 10, size, 18, len(address))
            return bytes(head) + address + suffix
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
        """The serialized ClusterLoadAssignment of plan's cluster (see build_load_assignment)."""
        default_port = plan.port.target_port or plan.port.number
        groups: dict[str, list[bytes]] = {}
        lb_field = self.lb_endpoint_field
        for endpoint in selected_endpoints(plan, endpoints):
            port = endpoint.port_for(plan.port) if endpoint.ports else default_port
            group = groups.get(endpoint.locality)
            if group is None:
                group = groups[endpoint.locality] = []
            group.append(lb_field(endpoint, port))
        parts = [string_field(1, plan.name)]
        for locality, lbs in groups.items():
            parts.append(bytes_field(2, self.locality(locality) + b"".join(lbs)))
        return b"".join(parts)
