"""RouteConfigurations assembled from serialized virtual hosts, without protobuf messages.

A RouteConfiguration holds one virtual host per service host: thousands in a large mesh.
Keeping each virtual host as bytes (built once, cached by the routes generator) and joining
them makes a configuration cost a concatenation instead of copying every virtual host into a
new message and serializing it again. Hosts with Istio's default route, most of a mesh, skip
protobuf entirely: their routes field is cut out of the default route that routes.py builds,
around the cluster name, once per name length. The bytes equal
`build_route_configuration(...).SerializeToString(deterministic=True)` (deterministic
serialization writes fields in field-number order); tests/unit/test_encode_equivalence.py
checks that. Whoever gives build_virtual_host fields for hosts without a VirtualService
besides name, domains and routes must mirror them in `_default_virtual_host` (that test
will say so).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from operator import attrgetter

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from meshagent.construct import slots_constructor
from meshagent.model import Destination, VirtualService
from meshagent.xds import names
from meshagent.xds.translate import route_action as actions
from meshagent.xds.translate.encode.wire import (
    bytes_field,
    field_number,
    split_around,
    string_field,
    tag,
)
from meshagent.xds.translate.route_action import RouteScope
from meshagent.xds.translate.routes import (
    build_route_configuration,
    build_virtual_host,
    plain_default_route,
)
from meshagent.xds.wire import varint

_VHOST_NAME = field_number(rc.VirtualHost, "name")
_DOMAINS = field_number(rc.VirtualHost, "domains")
_DOMAIN_TAG = chr(_DOMAINS << 3 | 2)  # one byte: the field number is small
_VIRTUAL_HOSTS = field_number(route_pb2.RouteConfiguration, "virtual_hosts")
_VIRTUAL_HOSTS_TAG = tag(route_pb2.RouteConfiguration, "virtual_hosts")


@dataclass(frozen=True, slots=True, eq=False)
class WireVirtualHost:
    """One serialized virtual host, split so that its domains can be filtered later."""

    domains: Sequence[str]  # never altered
    head: bytes  # the name field
    field: bytes  # the whole virtual host as a RouteConfiguration.virtual_hosts field
    rest_start: int  # where, in field, the fields after domains start

    @classmethod
    def of(cls, domains: Sequence[str], head: bytes, rest: bytes) -> WireVirtualHost:
        """The virtual host of name field head, then domains, then the fields in rest."""
        field = _virtual_host_field(head, domains, rest)
        return cls(domains, head, field, len(field) - len(rest))

    @classmethod
    def from_message(cls, message: rc.VirtualHost) -> WireVirtualHost:
        """message, serialized (it is altered: its name and domains are cleared)."""
        head = string_field(_VHOST_NAME, message.name)
        domains = list(message.domains)
        message.ClearField("name")
        message.ClearField("domains")
        return cls.of(domains, head, message.SerializeToString(deterministic=True))

    @property
    def rest(self) -> bytes:
        """Every field after domains (read only when some domain is dropped: no copy kept)."""
        return self.field[self.rest_start :]


# One per host and port of the mesh: the positional constructor (meshagent/construct.py).
_make_vhost = slots_constructor(WireVirtualHost, "domains", "head", "field", "rest_start")


def _domain_fields(domains: Iterable[str]) -> bytes:
    """The domains fields (2) of a virtual host."""
    # Tag, one-byte length and name as one str, encoded once: exact when the whole is ASCII
    # (so every name is, and every length is below 128); otherwise field by field.
    text = "".join([f"{_DOMAIN_TAG}{chr(len(d))}{d}" for d in domains])
    if text.isascii():
        return text.encode("ascii")
    return b"".join(string_field(_DOMAINS, d) for d in domains)


def _virtual_host_field(head: bytes, domains: Iterable[str], rest: bytes) -> bytes:
    return bytes_field(_VIRTUAL_HOSTS, head + _domain_fields(domains) + rest)


def _default_cluster(host: str, scope: RouteScope) -> str | None:
    """The cluster of the default route of a host without a VirtualService, None when the
    route needs consistent hashing (then it is no template)."""
    if scope.rules.rule_for(host) is None:
        # No rule, no consistent hash: the port's cluster of host (most hosts, looked up once).
        return names.cluster_name(scope.port, host)
    destination = Destination(host, port=scope.port)
    if actions.destination_hash(destination, scope) is not None:
        return None
    return actions.destination_cluster(destination, scope)


def _default_route(cluster: str) -> rc.VirtualHost:
    """A virtual host holding only the plain default route to cluster."""
    route = rc.Route()
    route.CopyFrom(plain_default_route())
    route.route.cluster = cluster
    return rc.VirtualHost(routes=[route])


@cache
def _default_routes(name_size: int) -> tuple[bytes, bytes]:
    """The routes field of the plain default route before and after its cluster name of
    name_size bytes: every length prefix in it depends on that size only."""
    return split_around(
        lambda fill: _default_route(fill * name_size).SerializeToString(deterministic=True),
        name_size,
    )


def _default_virtual_host(
    host: str, domains: Sequence[str], port: int, cluster: str
) -> WireVirtualHost:
    """The virtual host of a host with the plain default route to cluster.

    Most virtual hosts of a mesh: assembled in one join around the cluster name, since
    building each enclosing message would copy several hundred bytes.
    """
    name = cluster.encode()
    routes_head, routes_tail = _default_routes(len(name))
    head = string_field(_VHOST_NAME, names.virtual_host_name(host, port))
    domain_fields = _domain_fields(domains)
    rest_size = len(routes_head) + len(name) + len(routes_tail)
    body_size = len(head) + len(domain_fields) + rest_size
    field = b"".join(
        (_VIRTUAL_HOSTS_TAG, varint(body_size), head, domain_fields, routes_head, name, routes_tail)
    )
    return _make_vhost(domains, head, field, len(field) - rest_size)


def wire_virtual_host(
    host: str, domains: Sequence[str], vs: VirtualService | None, scope: RouteScope
) -> WireVirtualHost:
    """The virtual host of build_virtual_host(host, domains, vs, scope), serialized."""
    cluster = _default_cluster(host, scope) if vs is None else None
    if cluster is not None:
        return _default_virtual_host(host, domains, scope.port, cluster)
    return WireVirtualHost.from_message(build_virtual_host(host, list(domains), vs, scope))


_domains_of = attrgetter("domains")
_field_of = attrgetter("field")


@cache
def _configuration_parts(port: int) -> tuple[bytes, bytes]:
    """The fields of port's configuration before its virtual hosts (the name) and after them
    (validate_clusters), from build_route_configuration without virtual hosts."""
    message = build_route_configuration(port, ())
    head = route_pb2.RouteConfiguration(name=message.name).SerializeToString(deterministic=True)
    message.ClearField("name")
    return head, message.SerializeToString(deterministic=True)


def route_configuration_bytes(port: int, virtual_hosts: Iterable[WireVirtualHost]) -> bytes:
    """build_route_configuration(port, ...) serialized: a domain already claimed by an earlier
    virtual host is dropped from later ones, and a virtual host left with none is dropped.
    Domains are compared ignoring case, as Envoy does (it rejects the whole configuration
    for two that differ in case only: "Only unique values for domains are permitted")."""
    head, tail = _configuration_parts(port)
    vhosts = list(virtual_hosts)
    # Usually no domain repeats: one set of them all tells (built without a Python loop over
    # thousands of virtual hosts), and the fields join as they are. Mesh hosts are almost
    # always lower case: one pass over the joined text tells whether case can matter.
    listed = list(map(_domains_of, vhosts))
    every = list(chain.from_iterable(listed))
    joined = "\n".join(every)
    folded = every if joined.islower() or joined == joined.lower() else [d.lower() for d in every]
    if len(set(folded)) == len(every):
        return b"".join([head, *map(_field_of, vhosts), tail])
    parts = [head]
    seen: set[str] = set()
    for vhost in vhosts:
        lowered = [d.lower() for d in vhost.domains]
        if seen.isdisjoint(lowered):
            parts.append(vhost.field)
            seen.update(lowered)
            continue
        kept = [d for d, low in zip(vhost.domains, lowered, strict=True) if low not in seen]
        if kept:
            parts.append(_virtual_host_field(vhost.head, kept, vhost.rest))
            seen.update(d.lower() for d in kept)
    parts.append(tail)
    return b"".join(parts)
