"""Versioned Envoy resources: what the translator produces and the xDS cache serves.

A resource's version is a hash of its deterministic serialization, so an unchanged resource
keeps its version across snapshots and is never resent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class Resource:
    """One named Envoy resource, packed. The Any must not be mutated by anyone."""

    name: str
    version: str
    body: any_pb2.Any

    @classmethod
    def pack(cls, name: str, message: Message) -> Resource:
        packed = any_pb2.Any()
        packed.Pack(message)
        data = packed.SerializeToString(deterministic=True)
        return cls(name=name, version=hashlib.blake2b(data, digest_size=8).hexdigest(), body=packed)


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """All resources for one proxy, by type URL, then by name. Read-only mappings."""

    by_type: Mapping[str, Mapping[str, Resource]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.by_type.get(type_url, MappingProxyType({}))

    @classmethod
    def build(cls, groups: Mapping[str, Iterable[Resource]]) -> ResourceSet:
        """A ResourceSet from resources grouped by type URL; later duplicates of a name win."""
        return cls(
            by_type=MappingProxyType(
                {t: MappingProxyType({r.name: r for r in rs}) for t, rs in groups.items()}
            )
        )
