"""The versioned snapshot cache: one ResourceSet per node id, and each node's xDS status.

The cache knows nothing of gRPC. The ADS server reaches it through `get`, `wait_newer` and
`update_status`; the agent publishes through `set`. Every method must be called from the
event loop's thread (asyncio.Event is not thread-safe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from meshagent.xds.resources import ResourceSet
from meshagent.xds.status import ProxyStatus


def _fingerprint(resources: ResourceSet) -> dict[str, dict[str, str]]:
    """Names and versions by type, ignoring empty types: equal fingerprints, equal content."""
    return {
        t: {name: r.version for name, r in rs.items()} for t, rs in resources.by_type.items() if rs
    }


def same_content(old: ResourceSet, new: ResourceSet) -> bool:
    """Whether new has the names and versions of old: from new's change hint when its base
    is old (the cost of the change), else by comparing them all."""
    changed = new.changed_since(old)
    if changed is None:
        return _fingerprint(old) == _fingerprint(new)
    for type_url, names in changed.items():
        before, after = old.of(type_url), new.of(type_url)
        for name in names:
            a, b = before.get(name), after.get(name)
            if a is None or b is None:
                if a is not b:
                    return False
            elif a.version != b.version:
                return False
    return True


@dataclass(slots=True)
class _Entry:
    version: int = 0
    resources: ResourceSet = field(default_factory=ResourceSet)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    status: ProxyStatus = field(default_factory=ProxyStatus)


class SnapshotCache:
    """Holds the latest ResourceSet per node id and wakes that node's streams on change."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def _entry(self, node_id: str) -> _Entry:
        entry = self._entries.get(node_id)
        if entry is None:
            entry = self._entries[node_id] = _Entry()
        return entry

    def set(self, node_id: str, resources: ResourceSet) -> int:
        """Publish `resources` for a node; returns the node's cache version.

        Setting content equal to the current one (same names and versions) keeps the version
        and wakes nobody. The cache keeps a reference: the ResourceSet must not be mutated.
        """
        entry = self._entry(node_id)
        if entry.version and same_content(entry.resources, resources):
            return entry.version
        entry.version += 1
        entry.resources = resources
        # Waiters hold the old event; swap first so that nobody misses the next change.
        woken, entry.changed = entry.changed, asyncio.Event()
        woken.set()
        return entry.version

    def get(self, node_id: str) -> tuple[int, ResourceSet]:
        """The node's (version, resources); (0, empty) before the first `set`."""
        entry = self._entries.get(node_id)
        if entry is None:
            return 0, ResourceSet()
        return entry.version, entry.resources

    async def wait_newer(self, node_id: str, version: int) -> int:
        """Wait until the node's version is greater than `version`; returns the new version."""
        entry = self._entry(node_id)
        while entry.version <= version:
            await entry.changed.wait()
        return entry.version

    def status(self, node_id: str) -> ProxyStatus:
        """The node's xDS status (a default, disconnected one for unknown nodes)."""
        entry = self._entries.get(node_id)
        return entry.status if entry is not None else ProxyStatus()

    def update_status(self, node_id: str, change: Callable[[ProxyStatus], ProxyStatus]) -> None:
        """Replace the node's status with `change(old)`; used by the ADS server only."""
        entry = self._entry(node_id)
        entry.status = change(entry.status)

    def statuses(self) -> Mapping[str, ProxyStatus]:
        """Status of every node seen so far, by node id (a copy)."""
        return {node: e.status for node, e in self._entries.items()}

    def nodes(self) -> list[str]:
        """Node ids that have a snapshot or have connected, sorted."""
        return sorted(self._entries)
