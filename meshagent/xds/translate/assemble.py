"""Assembling generator outputs into a ResourceSet that knows what changed since the last one.

A type whose generators returned the very same lists as last time keeps its mapping object;
a type whose one generator returned a Patch gets one copy of the previous mapping with the
replaced resources swapped in (names and order unchanged); any other type is rebuilt from the
lists and compared with the previous mapping by identity. So an endpoint change costs one
dict copy of the endpoint type, not a rebuild of every mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from meshagent.xds.resources import Resource, ResourceSet, duplicated
from meshagent.xds.translate.generators import Patch, identical

Output = Patch | list[Resource]
Mapped = Mapping[str, Resource]

_EMPTY: Mapped = MappingProxyType({})


def changed_names(old: Mapped, new: Mapped) -> frozenset[str]:
    """Names added, removed, or bound to another Resource object in new."""
    changed = {name for name, resource in new.items() if old.get(name) is not resource}
    changed.update(name for name in old if name not in new)
    return frozenset(changed)


class Assembler:
    """Keeps the last ResourceSet and the generator lists it was built from."""

    def __init__(self) -> None:
        self._last: ResourceSet | None = None
        self._lists: dict[str, tuple[list[Resource], ...] | None] = {}
        # Names built more than once, by type URL, as found when the mapping was last built
        # (a reused mapping or a patch keeps the names, so the finding stands).
        self._duplicates: dict[str, Mapping[str, tuple[Resource, ...]]] = {}

    def assemble(self, outputs: Mapping[str, list[Output]]) -> ResourceSet:
        """The ResourceSet of outputs (by type URL, in generator order)."""
        by_type: dict[str, Mapped] = {}
        changed: dict[str, frozenset[str]] = {}
        previous = self._last
        for type_url, outs in outputs.items():
            before = previous.of(type_url) if previous is not None else _EMPTY
            mapping, names = self._type(type_url, outs, before)
            if mapping:
                by_type[type_url] = mapping
            if names:
                changed[type_url] = names
        duplicates = MappingProxyType(
            {t: d for t, d in self._duplicates.items() if d and t in outputs}
        )
        result = (
            ResourceSet(by_type=MappingProxyType(by_type), duplicates=duplicates)
            if previous is None
            else ResourceSet.derive(previous, by_type, changed, duplicates)
        )
        self._last = result
        return result

    def _type(
        self, type_url: str, outs: list[Output], before: Mapped
    ) -> tuple[Mapped, frozenset[str]]:
        if len(outs) == 1 and isinstance(outs[0], Patch) and self._last is not None:
            self._lists[type_url] = None
            return _patched(before, outs[0].replaced)
        lists = tuple(o if isinstance(o, list) else o.resources() for o in outs)
        last = self._lists.get(type_url)
        self._lists[type_url] = lists
        if self._last is not None and last is not None and identical(last, lists):
            return before, frozenset()
        mapping = MappingProxyType({r.name: r for rs in lists for r in rs})
        if len(mapping) < sum(map(len, lists)):  # two resources of one name: one is lost
            self._duplicates[type_url] = duplicated(r for rs in lists for r in rs)
        else:
            self._duplicates.pop(type_url, None)
        if self._last is None:  # the first set: no change hint to give
            return mapping, frozenset()
        names = changed_names(before, mapping)
        if not names and list(mapping) == list(before):
            return before, names  # same objects in the same order: keep the mapping
        return mapping, names


def _patched(before: Mapped, replaced: Mapping[str, Resource]) -> tuple[Mapped, frozenset[str]]:
    if not replaced:
        return before, frozenset()
    mapping = dict(before)
    mapping.update(replaced)
    return MappingProxyType(mapping), frozenset(replaced)
