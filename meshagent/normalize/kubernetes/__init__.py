"""Kubernetes Services and EndpointSlices (from adapters.kubernetes) to the mesh model.

The Istio kinds the Kubernetes adapter emits go to the same converters as files; this package
handles the two core kinds. A Service and its EndpointSlices are several resources that make one
mesh Service, so `KubeJoin` keeps them and rebuilds the ConvertedServiceEntry of a Service
whenever it or one of its slices (joined through the `kubernetes.io/service-name` label)
changes. The normalizer files that entry under the Service's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshagent.model.source import RawResource
from meshagent.normalize.convert.services import ConvertedServiceEntry
from meshagent.normalize.kubernetes.services import (
    SERVICE_NAME_LABEL,
    KubeMapping,
    convert_kube_service,
)
from meshagent.normalize.schema.core import Issues

SOURCE = "kubernetes"
CORE_KINDS = ("Service", "EndpointSlice")
Ref = tuple[str, str]  # (namespace, name)


def is_kube_core(kind_or_raw: RawResource | tuple[str, str, str, str]) -> bool:
    """True for a Service or EndpointSlice from the Kubernetes adapter (a raw or a key)."""
    if isinstance(kind_or_raw, RawResource):
        return kind_or_raw.source == SOURCE and kind_or_raw.kind in CORE_KINDS
    return kind_or_raw[0] == SOURCE and kind_or_raw[1] in CORE_KINDS


def _service_of(raw: RawResource) -> Ref | None:
    labels = (raw.body.get("metadata") or {}).get("labels") or {}
    name = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    return (raw.namespace, str(name)) if name else None


class KubeJoin:
    """Services and their slices; which Services a change touches, and their conversion."""

    def __init__(self, mapping: KubeMapping) -> None:
        self.mapping = mapping
        self.services: dict[Ref, RawResource] = {}
        self._slices: dict[Ref, RawResource] = {}
        self._slice_owner: dict[Ref, Ref] = {}
        self._by_service: dict[Ref, set[Ref]] = {}
        self._last: dict[Ref, ConvertedServiceEntry] = {}

    def upsert(self, raw: RawResource) -> list[Ref]:
        """Record raw; the Services to rebuild."""
        ref = (raw.namespace, raw.name)
        if raw.kind == "Service":
            self.services[ref] = raw
            return [ref]
        touched = self._drop_slice(ref)
        owner = _service_of(raw)
        self._slices[ref] = raw
        if owner is not None:
            self._slice_owner[ref] = owner
            self._by_service.setdefault(owner, set()).add(ref)
            touched.append(owner)
        return touched

    def delete(self, key: tuple[str, str, str, str]) -> list[Ref]:
        """Forget the resource of key; the Services to rebuild."""
        ref = (key[2], key[3])
        if key[1] == "Service":
            self.services.pop(ref, None)
            self._last.pop(ref, None)
            return [ref]
        self._slices.pop(ref, None)
        return self._drop_slice(ref)

    def _drop_slice(self, ref: Ref) -> list[Ref]:
        owner = self._slice_owner.pop(ref, None)
        if owner is None:
            return []
        self._by_service.get(owner, set()).discard(ref)
        return [owner]

    def convert(self, ref: Ref) -> tuple[ConvertedServiceEntry | None, Issues]:
        """The entry of Service ref (None when the Service is not known) and its issues.

        Endpoints equal to the last ones are returned as the same objects, so that the
        normalizer sees no endpoint change when a slice's write changed nothing that matters.
        """
        issues = Issues()
        raw = self.services.get(ref)
        if raw is None:
            return None, issues
        slices: list[Mapping[str, Any]] = [
            self._slices[s].body for s in sorted(self._by_service.get(ref, ()))
        ]
        try:
            entry = convert_kube_service(raw.body, slices, self.mapping, raw.provenance, issues)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            issues.error("", f"cannot convert ({type(exc).__name__}: {exc})")
            return None, issues
        last = self._last.get(ref)
        if last is not None and last.endpoints == entry.endpoints:
            entry = ConvertedServiceEntry(entry.namespace, entry.services, last.endpoints, None)
        if last is not None and last.services == entry.services:
            entry = ConvertedServiceEntry(entry.namespace, last.services, entry.endpoints, None)
        self._last[ref] = entry
        return entry, issues


__all__ = ["CORE_KINDS", "KubeJoin", "KubeMapping", "is_kube_core"]
