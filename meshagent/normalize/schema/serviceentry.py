"""The ServiceEntry schema (networking.istio.io v1, v1beta1, v1alpha3 share it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshagent.normalize.schema.common import (
    DNS_LABEL,
    DOTTED_QUAD,
    LABELS,
    PORT,
    WORKLOAD_SELECTOR,
    ExportTo,
    HostName,
    is_cidr,
    is_ip,
)
from meshagent.normalize.schema.core import (
    Enum,
    F,
    Int,
    Issues,
    ListOf,
    Obj,
    Predicate,
    Rule,
    Str,
    clean_when,
    join,
    predicate,
)
from meshagent.normalize.schema.workloadentry import UNIX_PREFIX, WORKLOAD_ENTRY

# Istio's protocol names; matched without regard to case, as Istio does.
PROTOCOLS = frozenset(
    {
        "HTTP",
        "HTTPS",
        "GRPC",
        "GRPC-WEB",
        "HTTP2",
        "MONGO",
        "REDIS",
        "MYSQL",
        "TCP",
        "TLS",
        "UDP",
        "THRIFT",
        "HBONE",
    }
)


def _known_protocol(value: Mapping[str, Any]) -> bool:
    protocol = value.get("protocol")
    return type(protocol) is str and protocol.upper() in PROTOCOLS


@clean_when(_known_protocol)
def _port_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    protocol = value.get("protocol")
    if protocol and protocol.upper() not in PROTOCOLS:
        issues.error(join(path, "protocol"), f"unrecognized protocol {protocol!r}")
    elif not protocol:
        # Istio sniffs the protocol of such ports; meshagent proxies them as plain TCP.
        issues.warn(join(path, "protocol"), "protocol not set: treated as TCP (no detection)")


SERVICE_PORT = Obj(
    {
        "number": F(PORT, required=True),
        "protocol": F(Str()),
        "name": F(Str(pattern=DNS_LABEL, what="port name"), required=True),
        "targetPort": F(Int(0, 65535)),
    },
    rules=[_port_rule],
)


class Address(Str):
    """An IP address or CIDR block."""

    def check(self, value: Any, path: str, issues: Issues) -> None:
        Str().check(value, path, issues)
        if isinstance(value, str) and not is_cidr(value):
            issues.error(path, f"{value!r} is not an IP address or CIDR block")


def _plain_names(value: Mapping[str, Any]) -> bool:
    """True when no host is "*" or can be an IP address (none has a colon or is a dotted
    quad): then _hosts_rule has nothing to say."""
    quad = DOTTED_QUAD.fullmatch
    return all(h != "*" and ":" not in h and quad(h) is None for h in value.get("hosts") or ())


@clean_when(_plain_names)
def _hosts_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    for i, host in enumerate(value.get("hosts") or []):
        if host == "*":
            issues.error(f"{path}.hosts[{i}]", "host '*' is not allowed")
        elif is_ip(host):
            issues.error(f"{path}.hosts[{i}]", "a host must be a name, not an IP address")


def _one_port(value: Mapping[str, Any]) -> bool:
    ports = value.get("ports")
    return type(ports) is list and len(ports) == 1


@clean_when(_one_port)  # one port cannot repeat a name or number
def _ports_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    # Istio requires no port: a ServiceEntry without ports is accepted (and serves none).
    ports = value.get("ports") or []
    names: set[str] = set()
    numbers: set[int] = set()
    for i, port in enumerate(ports):
        if port.get("name") in names:
            issues.error(f"{path}.ports[{i}].name", f"duplicate port name {port['name']!r}")
        if port.get("number") in numbers:
            issues.error(f"{path}.ports[{i}].number", f"duplicate port number {port['number']}")
        names.add(port.get("name"))
        numbers.add(port.get("number"))


# Protocols by which a proxy can tell several hosts on one port apart (Host header or SNI):
# Istio's IsHTTP or IsTLS.
_HOST_AWARE = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "HTTPS", "TLS"})


def _one_host_or_none(value: Mapping[str, Any]) -> bool:
    hosts = value.get("hosts")
    return (type(hosts) is list and len(hosts) < 2) or (value.get("resolution") or "NONE") == "NONE"


@clean_when(_one_host_or_none)
def _multi_host_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    """Istio: several hosts need ports that carry the host (HTTP, TLS), unless the resolution
    is NONE (which ignores the hosts)."""
    if _one_host_or_none(value):
        return
    for i, port in enumerate(value.get("ports") or ()):
        if str(port.get("protocol") or "").upper() not in _HOST_AWARE:
            issues.error(
                f"{path}.ports[{i}].protocol",
                "multiple hosts provided with non-HTTP, non-TLS ports",
            )
            return


def _endpoints_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    endpoints = value.get("endpoints") or []
    if endpoints and value.get("workloadSelector") is not None:
        issues.error(
            join(path, "workloadSelector"), "workloadSelector and endpoints cannot be set together"
        )
    port_names = {p.get("name") for p in value.get("ports") or []}
    for i, endpoint in enumerate(endpoints):
        for name in endpoint.get("ports") or {}:
            if name not in port_names:
                issues.error(
                    f"{path}.endpoints[{i}].ports.{name}",
                    f"port {name!r} is not a port of this ServiceEntry",
                )


def _resolution_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    resolution = value.get("resolution") or "NONE"
    if resolution not in ("NONE", "STATIC"):
        for i, address in enumerate(value.get("addresses") or ()):
            if "/" in address:  # Istio's test: any address written as a CIDR block
                issues.error(
                    f"{path}.addresses[{i}]",
                    "CIDR addresses are allowed only for NONE/STATIC resolution types",
                )
    endpoints = value.get("endpoints") or []
    if resolution == "NONE" and endpoints:
        issues.error(join(path, "endpoints"), "endpoints are not allowed with resolution NONE")
    if resolution == "STATIC":
        _static_rule(value, path, issues)
    if resolution in ("DNS", "DNS_ROUND_ROBIN"):
        _dns_rule(value, path, issues, resolution)


def _static_rule(value: Mapping[str, Any], path: str, issues: Issues) -> None:
    unix = False
    for i, endpoint in enumerate(value.get("endpoints") or []):
        address = endpoint.get("address") or ""
        if DOTTED_QUAD.fullmatch(address):
            continue  # the usual case, answered without the calls below
        unix = unix or address.startswith(UNIX_PREFIX)
        if address and not address.startswith(UNIX_PREFIX) and not is_ip(address):
            issues.error(
                f"{path}.endpoints[{i}].address",
                f"{address!r} must be an IP address or unix:// path with resolution STATIC",
            )
    if unix and len(value.get("ports") or []) != 1:
        issues.error(join(path, "ports"), "unix:// endpoints need exactly one port")


def _dns_rule(value: Mapping[str, Any], path: str, issues: Issues, resolution: str) -> None:
    endpoints = value.get("endpoints") or []
    if not endpoints:
        for i, host in enumerate(value.get("hosts") or []):
            if host.startswith("*"):
                issues.error(
                    f"{path}.hosts[{i}]",
                    f"wildcard host {host!r} needs endpoints with resolution {resolution}",
                )
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        issues.error(
            join(path, "endpoints"), "resolution DNS_ROUND_ROBIN allows at most one endpoint"
        )
    for i, endpoint in enumerate(endpoints):
        if (endpoint.get("address") or "").startswith(UNIX_PREFIX):
            issues.error(
                f"{path}.endpoints[{i}].address",
                f"unix:// endpoints need resolution STATIC, not {resolution}",
            )


_USUAL_ENDPOINT_KEYS = frozenset({"address", "labels"})


def _usual_endpoints() -> Predicate:
    """True for a list of endpoints that each have an IPv4 address and, maybe, valid labels:
    what WORKLOAD_ENTRY and the STATIC rule accept without a word, checked in one loop."""
    # One regex call for all the addresses, joined by newlines (a newline inside an address
    # shows in the count of newlines): a call per address costs more than its matching.
    quads = re.compile(rf"{DOTTED_QUAD.pattern}(?:\n{DOTTED_QUAD.pattern})*").fullmatch
    labels_ok = predicate(LABELS)
    good_keys, good_values = LABELS.good_keys, LABELS.good_values
    usual = _USUAL_ENDPOINT_KEYS

    def fast(endpoints: Any) -> bool:
        if type(endpoints) is not list:
            return False
        addresses = []
        for endpoint in endpoints:
            if type(endpoint) is not dict or not endpoint.keys() <= usual:
                return False
            address = endpoint.get("address")
            if type(address) is not str:
                return False
            addresses.append(address)
            labels = endpoint.get("labels")
            if labels is None:
                continue
            if type(labels) is not dict:
                return False
            for key, value in labels.items():
                if type(value) is not str or key not in good_keys or value not in good_values:
                    if not labels_ok(labels):  # checks the pairs not seen yet
                        return False
                    break
        if not addresses:
            return True
        joined = "\n".join(addresses)
        return joined.count("\n") == len(addresses) - 1 and quads(joined) is not None

    return fast


def _unsure(value: Any) -> bool:
    return False


def _no_issue(rule: Rule, value: Any) -> bool:
    scratch = Issues()
    rule(value, "", scratch)
    return not scratch


class ServiceEntrySpec(Obj):
    """The ServiceEntry spec, whose predicate has a shortcut for the usual shape (listed
    STATIC endpoints with an IPv4 address and labels, no selector, nothing that warns):
    thousands of entries times their endpoints make the generic walk the cost of a build.
    Whatever the shortcut does not recognize goes to the generic predicate, so the verdict
    is Obj's; test_fast_paths checks both against the full walk."""

    def compile_predicate(self) -> Predicate:
        generic = Obj.compile_predicate(self)
        endpoints_ok = _usual_endpoints()
        # A field that warns when set (todo, deprecated) is unusual: left to the generic path.
        fields_ok = {
            name: predicate(spec.type)
            for name, spec in self.fields.items()
            if name != "endpoints" and not (spec.todo or spec.deprecated)
        }
        # _endpoints_rule and _resolution_rule have nothing to say about usual endpoints
        # (no ports, IPv4 addresses) under STATIC without a selector: fast() sees to that.
        rules = tuple(
            (rule, getattr(rule, "clean_when", _unsure))
            for rule in self.rules
            if rule not in (_endpoints_rule, _resolution_rule)
        )

        def usual(value: Any) -> bool:
            if type(value) is not dict or type(value.get("hosts")) is not list:
                return False
            for key, item in value.items():
                if key == "endpoints":
                    if not endpoints_ok(item):
                        return False
                    continue
                ok = fields_ok.get(key)
                if ok is None or item is None or not ok(item):
                    return False
            if "workloadSelector" in value:
                return False
            if value.get("endpoints") and value.get("resolution") != "STATIC":
                return False  # NONE rejects endpoints, DNS has its own rule: generic path
            if value.get("resolution") in ("DNS", "DNS_ROUND_ROBIN"):
                return False
            for rule, clean in rules:
                if not clean(value) and not _no_issue(rule, value):
                    return False
            return True

        return lambda value: usual(value) or generic(value)


SPEC = ServiceEntrySpec(
    {
        "hosts": F(ListOf(HostName(), non_empty=True), required=True),
        "addresses": F(ListOf(Address())),
        "ports": F(ListOf(SERVICE_PORT)),
        "location": F(Enum(("MESH_EXTERNAL", "MESH_INTERNAL"))),
        "resolution": F(Enum(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"))),
        "endpoints": F(ListOf(WORKLOAD_ENTRY)),
        "workloadSelector": F(WORKLOAD_SELECTOR),
        "exportTo": F(ExportTo()),
        "subjectAltNames": F(ListOf(Str()), todo="subjectAltNames verification"),
    },
    rules=[_hosts_rule, _ports_rule, _multi_host_rule, _endpoints_rule, _resolution_rule],
)
