"""Test-only construction of model objects from small YAML documents.

The normalizer owns the real conversion from Istio YAML; translator tests need model objects
directly, so this builds any model dataclass from a mapping of its own field names, following
the field types. Shorthands: a StringMatch may be written `{exact: v}` / `{prefix: v}` /
`{regex: v}`; pairs (labels, endpoint ports, header edits) may be written as mappings.

Document layout: description, proxy, services (list), endpoints (host -> list),
destination_rules (list, keyed by host), virtual_services (list, keyed by namespace/name),
peer_authentications, authorization_policies and request_authentications (lists, keyed by
namespace/name), gateways and credentials (lists, keyed by namespace/name).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from meshagent.model import (
    Credential,
    DestinationRule,
    Endpoint,
    Gateway,
    MatchKind,
    MeshSnapshot,
    ProxySpec,
    Service,
    StringMatch,
    VirtualService,
    frozen_map,
)
from meshagent.model.security import AuthzPolicy, PeerAuthn, RequestAuthn
from meshagent.xds import typeurls
from meshagent.xds.resources import ResourceSet


def _build_tuple(args: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    item = args[0]
    if isinstance(data, dict):
        # Pairs written as a mapping: sorted, as the model's canonical label form is.
        return tuple(sorted((k, v) for k, v in data.items()))
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(build(item, d) for d in data)
    return tuple(build(a, d) for a, d in zip(args, data, strict=True))


def build(kind: Any, data: Any) -> Any:
    """An instance of kind (a model type, possibly Optional or a tuple) from plain data."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        return build(next(a for a in typing.get_args(kind) if a is not type(None)), data)
    if origin is tuple:
        return _build_tuple(typing.get_args(kind), data)
    if kind is StringMatch and isinstance(data, dict) and len(data) == 1:
        ((match_kind, value),) = data.items()
        return StringMatch(MatchKind(match_kind), value)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        hints = typing.get_type_hints(kind)
        return kind(**{k: build(hints[k], v) for k, v in (data or {}).items()})
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    if kind is float and isinstance(data, int):
        return float(data)
    return data


def snapshot_from(doc: dict[str, Any]) -> MeshSnapshot:
    """The MeshSnapshot a test document describes."""
    services = [build(Service, s) for s in doc.get("services", [])]
    rules = [build(DestinationRule, r) for r in doc.get("destination_rules", [])]
    routes = [build(VirtualService, v) for v in doc.get("virtual_services", [])]
    endpoints = {
        host: tuple(build(Endpoint, e) for e in items)
        for host, items in (doc.get("endpoints") or {}).items()
    }
    peer = [build(PeerAuthn, p) for p in doc.get("peer_authentications", [])]
    authz = [build(AuthzPolicy, p) for p in doc.get("authorization_policies", [])]
    authn = [build(RequestAuthn, p) for p in doc.get("request_authentications", [])]
    gateways = [build(Gateway, g) for g in doc.get("gateways", [])]
    credentials = [build(Credential, c) for c in doc.get("credentials", [])]
    return MeshSnapshot(
        version=1,
        peer_authentications=frozen_map({f"{p.namespace}/{p.name}": p for p in peer}),
        authorization_policies=frozen_map({f"{p.namespace}/{p.name}": p for p in authz}),
        request_authentications=frozen_map({f"{p.namespace}/{p.name}": p for p in authn}),
        services=frozen_map({s.host: s for s in services}),
        endpoints=frozen_map(endpoints),
        destination_rules=frozen_map({r.host: r for r in rules}),
        virtual_services=frozen_map({f"{v.namespace}/{v.name}": v for v in routes}),
        gateways=frozen_map({g.key: g for g in gateways}),
        credentials=frozen_map({c.key: c for c in credentials}),
    )


def load_case(
    path: Path, substitutions: dict[str, str] | None = None
) -> tuple[MeshSnapshot, ProxySpec]:
    """The snapshot and proxy of an NN-name.input.yaml file."""
    text = path.read_text()
    for old, new in (substitutions or {}).items():
        text = text.replace(old, new)
    doc = yaml.safe_load(text)
    proxy = build(ProxySpec, doc.get("proxy") or {"node_id": "test"})
    return snapshot_from(doc), proxy


def resources_as_dict(resources: ResourceSet) -> dict[str, dict[str, Any]]:
    """Envoy resources as plain data: {"sds"|"cds"|"eds"|"lds"|"rds": {name: resource}}."""
    out: dict[str, dict[str, Any]] = {}
    for type_url in typeurls.PUSH_ORDER:
        group = resources.of(type_url)
        if group:
            out[typeurls.SHORT_NAMES[type_url]] = {
                name: json.loads(json_format.MessageToJson(group[name].body))
                for name in sorted(group)
            }
    return out
