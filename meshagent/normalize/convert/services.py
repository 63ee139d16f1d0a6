"""ServiceEntry and WorkloadEntry to Service, Endpoint and Workload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshagent.construct import slots_constructor
from meshagent.model.labels import NO_LABELS, Labels, labels_of
from meshagent.model.services import Endpoint, Resolution, Service, ServicePort, Workload
from meshagent.normalize.convert.context import Context, items, sub


@dataclass(frozen=True, slots=True)
class ConvertedServiceEntry:
    """One ServiceEntry: a Service per host, and its listed endpoints (shared by all hosts).

    selector is the workloadSelector's labels when the entry selects WorkloadEntries; the
    Normalizer resolves those endpoints, since they depend on other resources.
    """

    namespace: str
    services: tuple[Service, ...]
    endpoints: tuple[Endpoint, ...]
    selector: Labels | None


def _port(port: Mapping[str, Any]) -> ServicePort:
    # Istio sniffs the protocol when none is given; TCP is the safe reading of "unknown".
    return ServicePort(
        number=int(port["number"]),
        name=str(port.get("name") or ""),
        protocol=str(port.get("protocol") or "TCP").upper(),
        target_port=port.get("targetPort") or None,
    )


# Port lists repeat across a mesh's entries (one "http" port on 8080, ...): one shared tuple
# of (frozen) ServicePorts per list. Keyed by the raw items, which the schema has typed.
_PORT_LISTS: dict[tuple[tuple[tuple[str, Any], ...], ...], tuple[ServicePort, ...]] = {}
_PORT_LISTS_MAX = 4096


def _ports(raw: list[Any]) -> tuple[ServicePort, ...]:
    key = tuple([tuple(p.items()) for p in raw])
    found = _PORT_LISTS.get(key)
    if found is None:
        if len(_PORT_LISTS) >= _PORT_LISTS_MAX:
            _PORT_LISTS.clear()
        found = _PORT_LISTS[key] = tuple(_port(p) for p in raw)
    return found


_RESOLUTIONS = {r.value: r for r in Resolution}


def _strs(value: Any) -> tuple[str, ...]:
    """A validated list of strings as a tuple; () when absent (most entries: no work)."""
    return tuple(map(str, value)) if type(value) is list and value else ()


def _port_map(ports: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(k), int(v)) for k, v in ports.items()))


# Label sets repeat across a mesh's endpoints (version: v1, ...): one shared tuple per set
# saves a sort per endpoint and memory per endpoint. Bounded: cleared when it grows large.
_LABEL_SETS: dict[tuple[tuple[Any, Any], ...], Labels] = {}
_LABEL_SETS_MAX = 4096


def _labels(raw: Any) -> Labels:
    if not raw or (type(raw) is not dict and not isinstance(raw, Mapping)):
        return NO_LABELS
    key = tuple(raw.items())
    found = _LABEL_SETS.get(key)
    if found is None:
        if len(_LABEL_SETS) >= _LABEL_SETS_MAX:
            _LABEL_SETS.clear()
        found = _LABEL_SETS[key] = labels_of(raw)
    return found


_USUAL_KEYS = frozenset({"address", "labels"})
# Positional constructors (meshagent/construct.py) for the per-entry and per-endpoint objects.
_make_endpoint = slots_constructor(
    Endpoint,
    "address",
    "ports",
    "labels",
    "weight",
    "locality",
    "network",
    "service_account",
    "healthy",
    "provenance",
)
_make_service = slots_constructor(
    Service,
    "host",
    "namespace",
    "ports",
    "resolution",
    "mesh_external",
    "addresses",
    "workload_selector",
    "export_to",
    "provenance",
    "auto_addresses",
)


def _endpoints(specs: list[Any], ctx: Context) -> tuple[Endpoint, ...]:
    """The listed endpoints; those with only an address and labels (most) take a shortcut,
    with _labels inline, as this runs once per endpoint of the mesh."""
    out: list[Endpoint] = []
    append, make = out.append, _make_endpoint
    provenance = ctx.provenance
    usual, label_sets = _USUAL_KEYS, _LABEL_SETS
    for spec in specs:
        if type(spec) is not dict or not spec.keys() <= usual:
            append(_endpoint(spec, ctx))
            continue
        raw = spec.get("labels")
        labels = (label_sets.get(tuple(raw.items())) if type(raw) is dict else None) or (
            _labels(raw)
        )
        append(make(spec.get("address") or "", (), labels, 1, "", "", "", True, provenance))
    return tuple(out)


def _endpoint(spec: Mapping[str, Any], ctx: Context) -> Endpoint:
    # The schema guarantees the types (strings, an integer weight): no conversions needed.
    get = spec.get
    return Endpoint(
        address=get("address") or "",
        ports=_port_map(sub(spec, "ports")) if get("ports") else (),
        labels=_labels(get("labels")),
        weight=get("weight") or 1,  # 0 means unset: Istio's default weight is 1
        locality=get("locality") or "",
        network=get("network") or "",
        service_account=get("serviceAccount") or "",
        provenance=ctx.provenance,
    )


def convert_service_entry(
    name: str, spec: Mapping[str, Any], ctx: Context
) -> ConvertedServiceEntry:
    """A ServiceEntry spec (validated) as one Service per host plus its listed endpoints."""
    selector_spec = spec.get("workloadSelector")
    selector = labels_of(sub(selector_spec, "labels")) if selector_spec is not None else None
    ports = _ports(items(spec, "ports"))
    given = spec.get("resolution") or "NONE"
    resolution = _RESOLUTIONS.get(given) or Resolution(given)
    external = (spec.get("location") or "MESH_EXTERNAL") == "MESH_EXTERNAL"
    addresses = _strs(spec.get("addresses"))
    export_to = _strs(spec.get("exportTo"))
    namespace, provenance, make = ctx.namespace, ctx.provenance, _make_service
    services = tuple(
        [
            make(
                ctx.host(host),
                namespace,
                ports,
                resolution,
                external,
                addresses,
                selector,
                export_to,
                provenance,
                (),  # auto_addresses: the normalizer allocates them (normalize/vips.py)
            )
            for host in dict.fromkeys(items(spec, "hosts"))  # a repeated host counts once
        ]
    )
    endpoints = _endpoints(items(spec, "endpoints"), ctx)
    return ConvertedServiceEntry(ctx.namespace, services, endpoints, selector)


def convert_workload_entry(name: str, spec: Mapping[str, Any], ctx: Context) -> Workload:
    """A WorkloadEntry spec (validated) as a Workload."""
    return Workload(
        name=name,
        namespace=ctx.namespace,
        address=str(spec.get("address") or ""),
        ports=_port_map(sub(spec, "ports")),
        labels=labels_of(sub(spec, "labels")),
        weight=int(spec.get("weight") or 1),
        locality=str(spec.get("locality") or ""),
        network=str(spec.get("network") or ""),
        service_account=str(spec.get("serviceAccount") or ""),
        provenance=ctx.provenance,
    )


def workload_endpoint(workload: Workload) -> Endpoint:
    """The endpoint a ServiceEntry's workloadSelector gets from a selected WorkloadEntry."""
    return Endpoint(
        address=workload.address,
        ports=workload.ports,
        labels=workload.labels,
        weight=workload.weight,
        locality=workload.locality,
        network=workload.network,
        service_account=workload.service_account,
        provenance=workload.provenance,
    )
