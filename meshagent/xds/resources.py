"""Versioned Envoy resources: what the translator produces and the xDS cache serves.

A resource's version is a hash of its deterministic serialization, so an unchanged resource
keeps its version across snapshots and is never resent.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshagent.construct import slots_constructor
from meshagent.xds.wire import varint

TYPE_URL_PREFIX = "type.googleapis.com/"


@dataclass(frozen=True, slots=True)
class Resource:
    """One named Envoy resource: the deterministic serialization of a message of type_url.

    `body` packs it as an Any, built anew on each use and not kept: each Any has an arena of
    its own (about 1.2 KB with the value's copy), and the 80,000 clusters and endpoints of a
    10k-service mesh kept ~100 MB that way once pushed. The xDS responses set type_url and
    value in place instead (delta.py, sotw.py). The value must not be mutated.
    """

    name: str
    version: str
    type_url: str
    value: bytes = field(repr=False)  # may hold a private key (SDS): never in a log line

    @property
    def body(self) -> any_pb2.Any:
        """The resource packed as an Any (a new one each time: the caller's to keep or drop)."""
        return any_pb2.Any(type_url=self.type_url, value=self.value)

    @classmethod
    def pack(cls, name: str, message: Message) -> Resource:
        """message, serialized deterministically, as the resource name."""
        type_url = TYPE_URL_PREFIX + message.DESCRIPTOR.full_name
        return cls.from_value(name, type_url, message.SerializeToString(deterministic=True))

    @classmethod
    def from_value(cls, name: str, type_url: str, value: bytes) -> Resource:
        """A resource from the deterministic serialization of a message of type_url."""
        # The hash is of the Any's serialization, assembled here rather than re-serialized:
        # type_url (field 1, hashed once per type URL), then value (field 2, absent when
        # empty, as protobuf writes it).
        digest = (_SEEDED.get(type_url) or _seeded(type_url)).copy()
        if value:
            size = len(value)
            digest.update(_VALUE_HEADS.get(size) or _value_head(size))
            digest.update(value)  # not joined to the above: that would copy the value
        return _make_resource(name, digest.hexdigest(), type_url, value)


# Tens of thousands per full translation: the positional constructor (meshagent/construct.py).
_make_resource = slots_constructor(Resource, "name", "version", "type_url", "value")
_NO_CHANGES: Mapping[str, frozenset[str]] = MappingProxyType({})
_NO_DUPLICATES: Mapping[str, Mapping[str, tuple[Resource, ...]]] = MappingProxyType({})
_NO_PATCHES: Mapping[tuple[str, str], tuple[str, ...]] = MappingProxyType({})
_blake2b = hashlib.blake2b
_SEEDED: dict[str, hashlib.blake2b] = {}
_VALUE_HEADS: dict[int, bytes] = {}


def _value_head(size: int) -> bytes:
    """The tag and length of an Any's value of size bytes, kept for sizes below 16 KiB (they
    repeat a lot; at most 16384 small entries)."""
    found = b"\x12" + varint(size)
    if size < 0x4000:
        _VALUE_HEADS[size] = found
    return found


def _seeded(type_url: str) -> hashlib.blake2b:
    """A hash that has seen the serialized type_url field of an Any (few type URLs exist)."""
    found = _SEEDED.get(type_url)
    if found is None:
        encoded = type_url.encode()
        found = _blake2b(
            b"\x0a" + varint(len(encoded)) + encoded if encoded else b"", digest_size=8
        )
        _SEEDED[type_url] = found
    return found


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ResourceSet:
    """All resources for one proxy, by type URL, then by name. Read-only mappings.

    A change hint, for consumers that hold an earlier set (the xDS streams): when `base` is
    that set, `changed[type_url]` names every resource added, replaced (by another Resource
    object) or removed since it, and a type URL missing from `changed` holds the very same
    mapping object as in base. `base` is held weakly, so sets never chain up in memory; once
    nobody holds the base it reads None and consumers compare the mappings themselves.
    The hint is not part of equality.
    """

    by_type: Mapping[str, Mapping[str, Resource]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    changed: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: _NO_CHANGES, compare=False, repr=False
    )
    base_ref: weakref.ReferenceType[ResourceSet] | None = field(
        default=None, compare=False, repr=False
    )
    # Resources that shared a name with another of their type (by type URL, then name): a
    # mapping keeps one of them, so the consistency check (consistency.py) reports the rest.
    duplicates: Mapping[str, Mapping[str, tuple[Resource, ...]]] = field(
        default_factory=lambda: _NO_DUPLICATES, compare=False, repr=False
    )
    # (type URL, name) -> the EnvoyFilters/WasmPlugins ("EnvoyFilter/ns/name (file:line)")
    # that changed or added the resource (xds/envoyfilter), for attribution.
    patched_by: Mapping[tuple[str, str], tuple[str, ...]] = field(
        default_factory=lambda: _NO_PATCHES, compare=False, repr=False
    )

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.by_type.get(type_url, MappingProxyType({}))

    @property
    def base(self) -> ResourceSet | None:
        """The set `changed` is relative to, if it is still alive; None: no hint."""
        return self.base_ref() if self.base_ref is not None else None

    def changed_since(self, other: ResourceSet) -> Mapping[str, frozenset[str]] | None:
        """Names per type URL that differ from other when known without comparing (other is
        this set's base, or this set itself); None when unknown."""
        if other is self:
            return _NO_CHANGES
        return self.changed if self.base is other else None

    @classmethod
    def derive(
        cls,
        base: ResourceSet,
        by_type: Mapping[str, Mapping[str, Resource]],
        changed: Mapping[str, frozenset[str]],
        duplicates: Mapping[str, Mapping[str, tuple[Resource, ...]]] = _NO_DUPLICATES,
        patched_by: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
    ) -> ResourceSet:
        """A set that differs from base exactly by changed (see the class docstring)."""
        return cls(
            by_type=MappingProxyType(dict(by_type)),
            changed=MappingProxyType({t: n for t, n in changed.items() if n}),
            base_ref=weakref.ref(base),
            duplicates=duplicates,
            patched_by=_NO_PATCHES if patched_by is None else patched_by,
        )

    @classmethod
    def build(cls, groups: Mapping[str, Iterable[Resource]]) -> ResourceSet:
        """A ResourceSet from resources grouped by type URL; later duplicates of a name win
        (and are listed in `duplicates`)."""
        by_type: dict[str, Mapping[str, Resource]] = {}
        duplicates: dict[str, Mapping[str, tuple[Resource, ...]]] = {}
        for type_url, resources in groups.items():
            listed = list(resources)
            by_type[type_url] = MappingProxyType({r.name: r for r in listed})
            if len(by_type[type_url]) < len(listed):
                duplicates[type_url] = duplicated(listed)
        return cls(
            by_type=MappingProxyType(by_type),
            duplicates=MappingProxyType(duplicates) if duplicates else _NO_DUPLICATES,
        )


def duplicated(resources: Iterable[Resource]) -> Mapping[str, tuple[Resource, ...]]:
    """Every resource of a name that occurs more than once, by name, in order."""
    by_name: dict[str, list[Resource]] = {}
    for resource in resources:
        by_name.setdefault(resource.name, []).append(resource)
    return MappingProxyType({n: tuple(rs) for n, rs in by_name.items() if len(rs) > 1})
