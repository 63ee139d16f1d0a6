"""A Kubernetes Service and its EndpointSlices to a mesh Service and Endpoints.

- Host: `<name>.<namespace>.svc.<cluster_domain>`; addresses: the cluster IPs.
- Port protocol, as Istio decides it: `appProtocol` first (`http`, `http2`, `grpc`, `tcp`,
  `tls`, `https`, ..., and Kubernetes' `kubernetes.io/h2c` / `kubernetes.io/ws`), then the port
  name (`<protocol>` or `<protocol>-<suffix>`: `http-web`, `grpc`, `tcp-db`), else TCP (Istio
  would sniff; meshagent does not). UDP and SCTP ports are skipped with a warning.
- Endpoints: every EndpointSlice labelled `kubernetes.io/service-name: <name>` in the same
  namespace; one Endpoint per address (the first of each endpoint, as kube-proxy does). An
  endpoint serves when `conditions.ready` is true (unset means true); serving-but-terminating
  endpoints are used only when no endpoint is ready (kube-proxy's fallback). Locality is
  `<region>/<zone>` from the endpoint's `zone` (and the region set in the mapping).
  Labels: pods' labels are not visible in slices, so an endpoint carries only
  `topology.kubernetes.io/zone` and `kubernetes.io/hostname` (from nodeName) when known.
- ExternalName Services become a DNS service on the external name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshagent.model.labels import labels_of
from meshagent.model.services import Endpoint, Resolution, Service, ServicePort
from meshagent.model.source import Provenance
from meshagent.normalize.convert.services import ConvertedServiceEntry
from meshagent.normalize.schema.core import Issues

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_APP_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "GRPC-WEB",
    "https": "HTTPS",
    "tls": "TLS",
    "tcp": "TCP",
    "mongo": "MONGO",
    "redis": "REDIS",
    "mysql": "MYSQL",
    "kubernetes.io/h2c": "HTTP2",
    "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "HTTPS",
}


@dataclass(frozen=True, slots=True)
class KubeMapping:
    """Choices the normalizer makes for Kubernetes Services (agent config
    `sources.kubernetes`): the cluster domain, the region for localities, and where Kubernetes
    stands against the other sources (`precedence`: "kubernetes" or "files")."""

    cluster_domain: str = "cluster.local"
    region: str = ""
    precedence: str = "kubernetes"


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def port_protocol(port: Mapping[str, Any]) -> str:
    """Istio's protocol of a Service (or EndpointSlice) port; see the module docstring."""
    app = str(port.get("appProtocol") or "").lower()
    if app in _APP_PROTOCOLS:
        return _APP_PROTOCOLS[app]
    prefix = str(port.get("name") or "").lower().split("-", 1)[0]
    return _APP_PROTOCOLS.get(prefix, "TCP") if not prefix.startswith("kubernetes.io") else "TCP"


def service_host(name: str, namespace: str, mapping: KubeMapping) -> str:
    """The mesh host of Service namespace/name."""
    return f"{name}.{namespace}.svc.{mapping.cluster_domain}"


def _ports(spec: Mapping[str, Any], issues: Issues) -> tuple[ServicePort, ...]:
    out = []
    for i, port in enumerate(spec.get("ports") or ()):
        port = _map(port)
        if str(port.get("protocol") or "TCP").upper() != "TCP":
            issues.warn(f"spec.ports[{i}].protocol", "only TCP ports are served; port skipped")
            continue
        number = port.get("port")
        if not isinstance(number, int) or not 0 < number < 65536:
            issues.error(f"spec.ports[{i}].port", "must be a port number")
            continue
        target = port.get("targetPort")
        name = str(port.get("name") or number)
        out.append(
            ServicePort(
                number, name, port_protocol(port), target if isinstance(target, int) else None
            )
        )
    return tuple(out)


def convert_kube_service(
    service: Mapping[str, Any],
    slices: list[Mapping[str, Any]],
    mapping: KubeMapping,
    provenance: Provenance,
    issues: Issues,
) -> ConvertedServiceEntry:
    """The Service and its endpoints (see the module docstring)."""
    meta, spec = _map(service.get("metadata")), _map(service.get("spec"))
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    ports = _ports(spec, issues)
    # A stable provenance: a new resourceVersion that changes nothing keeps an equal Service.
    stable = Provenance(
        provenance.source, f"Service {namespace}/{name}", "Service", namespace, name
    )
    if spec.get("type") == "ExternalName":
        external = str(spec.get("externalName") or "")
        svc = Service(service_host(name, namespace, mapping), namespace, ports, Resolution.DNS,
                      provenance=stable)  # fmt: skip
        named = (Endpoint(external, provenance=stable),) if external else ()
        return ConvertedServiceEntry(namespace, (svc,), named, None)
    ips = [str(ip) for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip]
    addresses = tuple(ip for ip in ips if ip != "None")
    svc = Service(
        service_host(name, namespace, mapping),
        namespace,
        ports,
        Resolution.STATIC,
        addresses=addresses,
        provenance=stable,
    )
    # A Service with one port may leave it unnamed; its slices then name it "".
    unnamed = next((p.name for p in ports if p.name == str(p.number)), "")
    endpoints = slice_endpoints(slices, mapping, unnamed)
    return ConvertedServiceEntry(namespace, (svc,), endpoints, None)


def slice_endpoints(
    slices: list[Mapping[str, Any]], mapping: KubeMapping, unnamed: str = ""
) -> tuple[Endpoint, ...]:
    """Endpoints of a Service's slices: the ready ones, else the serving terminating ones.

    unnamed: the name the Service gave its unnamed port (its number), for slice ports named "".
    """
    # Keyed by address and ports: one address may serve other ports in another slice.
    ready: dict[tuple[str, tuple[tuple[str, int], ...]], Endpoint] = {}
    fallback: dict[tuple[str, tuple[tuple[str, int], ...]], Endpoint] = {}
    for body in slices:
        if str(body.get("addressType") or "IPv4") not in ("IPv4", "IPv6"):
            continue
        meta = _map(body.get("metadata"))
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        where = Provenance("kubernetes", f"EndpointSlice {ns}/{name}", "EndpointSlice", ns, name)
        ports = tuple(
            (str(_map(p).get("name") or unnamed), int(_map(p)["port"]))
            for p in body.get("ports") or ()
            if isinstance(_map(p).get("port"), int)
        )
        for item in body.get("endpoints") or ():
            item = _map(item)
            addresses = item.get("addresses") or ()
            if not addresses:
                continue
            state = _condition(_map(item.get("conditions")))
            target = ready if state == "ready" else fallback if state == "terminating" else None
            if target is not None:
                key = (str(addresses[0]), ports)
                target.setdefault(key, _endpoint(item, ports, mapping, where))
    chosen = ready or fallback
    return tuple(chosen[a] for a in sorted(chosen))


def _condition(conditions: Mapping[str, Any]) -> str:
    """ "ready", "terminating" (serving while terminating) or "down"."""
    ready = conditions.get("ready")
    serving = conditions.get("serving", ready)
    terminating = bool(conditions.get("terminating", False))
    if (ready is None or ready is True) and not terminating:
        return "ready"
    if terminating and serving is not False and serving is not None:
        return "terminating"
    return "down"


def _endpoint(
    item: Mapping[str, Any],
    ports: tuple[tuple[str, int], ...],
    mapping: KubeMapping,
    provenance: Provenance,
) -> Endpoint:
    zone = str(item.get("zone") or "")
    labels = {}
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    if item.get("nodeName"):
        labels["kubernetes.io/hostname"] = str(item["nodeName"])
    return Endpoint(
        address=str((item.get("addresses") or [""])[0]),
        ports=ports,
        labels=labels_of(labels),
        locality=f"{mapping.region}/{zone}" if zone else "",
        provenance=provenance,
    )
