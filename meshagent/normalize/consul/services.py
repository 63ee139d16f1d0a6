"""A ConsulService (the /v1/health/service entries of one service) to a Service and Endpoints.

Labels of an endpoint, so that DestinationRule subsets (and service-resolver filters) can pick
instances: every Service.Meta key as is (`version: v1`), every tag as `tag.<tag>: "true"`
(tags that are not valid label keys are skipped), and `consul.datacenter`,
`consul.namespace`, `consul.partition` when known. Locality is `region/zone` from the node's
Meta (`region`, `zone`) when present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from meshagent.model.labels import Labels, labels_of
from meshagent.model.services import Endpoint, Resolution, Service, ServicePort
from meshagent.model.source import Provenance
from meshagent.normalize.consul.options import TAG_LABEL_PREFIX, ConsulMapping
from meshagent.normalize.convert.services import ConvertedServiceEntry
from meshagent.normalize.schema.core import Issues

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PROTOCOLS = {"http": "HTTP", "http2": "HTTP2", "grpc": "GRPC", "tcp": "TCP"}


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def instance_status(checks: Any) -> str:
    """Consul's aggregate: critical if any check is, else warning if any is, else passing."""
    statuses = {str(_map(c).get("Status") or "") for c in checks or ()}
    if "critical" in statuses or "maintenance" in statuses:
        return "critical"
    return "warning" if "warning" in statuses else "passing"


def endpoint_labels(service: Mapping[str, Any], node: Mapping[str, Any]) -> Labels:
    """Labels of one instance (see the module docstring)."""
    labels: dict[str, str] = {}
    for tag in service.get("Tags") or ():
        key = TAG_LABEL_PREFIX + str(tag)
        if len(key) <= 63 and _LABEL_KEY.match(key):
            labels[key] = "true"
    for key, value in _map(service.get("Meta")).items():
        labels[str(key)] = str(value)
    for field, label in (("Namespace", "consul.namespace"), ("Partition", "consul.partition")):
        if service.get(field):
            labels[label] = str(service[field])
    if node.get("Datacenter"):
        labels["consul.datacenter"] = str(node["Datacenter"])
    return labels_of(labels)


def _tagged(tagged: Any, network: str) -> tuple[str, int | None]:
    """(address, port) of a TaggedAddresses entry: an object (Address/Port in either case,
    as the docs' samples differ) for services, a plain string for nodes."""
    entry = _map(tagged).get(network)
    if isinstance(entry, str):
        return entry, None
    entry = _map(entry)
    port = entry.get("port", entry.get("Port"))
    return str(entry.get("address") or entry.get("Address") or ""), int(port) if port else None


def _address(service: Mapping[str, Any], node: Mapping[str, Any], network: str) -> tuple[str, int]:
    port = int(service.get("Port") or 0)
    if network:
        address, tagged_port = _tagged(service.get("TaggedAddresses"), network)
        if address:
            return address, tagged_port or port
        address, _ = _tagged(node.get("TaggedAddresses"), network)
        if address:
            return address, port
    address = str(service.get("Address") or node.get("Address") or "")
    if not address:  # the agent-local health format has no Node: its lan address is the one
        address, tagged_port = _tagged(service.get("TaggedAddresses"), "lan")
        port = tagged_port or port
    return address, port


def _port(entry: Mapping[str, Any], mapping: ConsulMapping) -> int:
    return _address(_map(entry.get("Service")), _map(entry.get("Node")), mapping.network)[1]


def _locality(node: Mapping[str, Any]) -> str:
    meta = _map(node.get("Meta"))
    parts = [str(meta.get(k) or "") for k in ("region", "zone")]
    return "/".join(parts).rstrip("/") if parts[0] else ""


def _protocol(instances: list[Mapping[str, Any]], mapping: ConsulMapping) -> str:
    for service in instances:
        proto = _map(service.get("Meta")).get("protocol")
        if proto:
            return _PROTOCOLS.get(str(proto).lower(), str(proto).upper())
    return _PROTOCOLS.get(mapping.default_protocol.lower(), mapping.default_protocol.upper())


def convert_service(
    body: Mapping[str, Any], mapping: ConsulMapping, provenance: Provenance, issues: Issues
) -> ConvertedServiceEntry:
    """One Consul service as a STATIC mesh Service with one Endpoint per serving instance."""
    name = str(body.get("Name") or "")
    entries = [_map(e) for e in body.get("Instances") or ()]
    if not name:
        issues.error("Name", "a Consul service needs a name")
    services = [_map(e.get("Service")) for e in entries]
    namespace = next((str(s["Namespace"]) for s in services if s.get("Namespace")), "default")
    partition = next((str(s["Partition"]) for s in services if s.get("Partition")), "default")
    datacenter = str(body.get("Datacenter") or "") or next(
        (str(_map(e.get("Node")).get("Datacenter") or "") for e in entries), ""
    )
    protocol = _protocol(services, mapping)
    endpoints = tuple(
        ep
        for i, e in enumerate(entries)
        if (ep := _endpoint(e, i, mapping, protocol, provenance, issues)) is not None
    )
    # Failing instances still say which port the service is on: a service whose instances all
    # fail keeps its cluster (empty, or filled by a resolver's failover targets).
    ports = tuple(sorted({p for e in entries if 0 < (p := _port(e, mapping)) < 65536}))
    number = mapping.service_port or (ports[0] if ports else 0)
    service_ports = (ServicePort(number, protocol.lower(), protocol),) if number else ()
    # The Service's provenance names the service, not the index: an index bump that leaves
    # the Service as it was must yield an equal Service (the normalizer then keeps the old).
    stable = replace(provenance, location=f"consul service {name}")
    # Another datacenter's service (watched as a failover or redirect target) has a host of
    # its own, so that it never merges with the local service of the same name.
    host = (
        mapping.remote_host(name, namespace, datacenter)
        if body.get("Remote")
        else mapping.host(name, namespace, datacenter, partition)
    )
    service = Service(
        host=host,
        namespace=namespace,
        ports=service_ports,
        resolution=Resolution.STATIC,
        provenance=stable,
    )
    return ConvertedServiceEntry(namespace, (service,), endpoints, None)


def _endpoint(
    entry: Mapping[str, Any],
    i: int,
    mapping: ConsulMapping,
    protocol: str,
    provenance: Provenance,
    issues: Issues,
) -> Endpoint | None:
    service, node = _map(entry.get("Service")), _map(entry.get("Node"))
    status = instance_status(entry.get("Checks"))
    if status == "critical" or (status == "warning" and not mapping.include_warning):
        return None
    address, port = _address(service, node, mapping.network)
    if not address or not 0 < port < 65536:
        issues.warn(
            f"Instances[{i}]", f"instance {service.get('ID')!r} has no address or port; skipped"
        )
        return None
    weights = _map(service.get("Weights"))
    weight = int(weights.get("Warning" if status == "warning" else "Passing") or 1)
    return Endpoint(
        address=address,
        ports=((protocol.lower(), port),),
        labels=endpoint_labels(service, node),
        weight=max(weight, 1),
        locality=_locality(node),
        provenance=provenance,
    )
