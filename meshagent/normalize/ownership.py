"""Which resource owns a host when several claim it: the oldest, as Istio resolves conflicts."""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str, str, str]  # RawResource.key: (source, kind, namespace, name)


@dataclass(slots=True)
class Claims:
    """Hosts claimed by resources, with a first-seen order to pick one winner per host.

    order maps a resource key to (batch number when first seen, namespace, name): the
    smallest wins, so resources that arrive together are ranked by namespace/name.
    """

    by_host: dict[str, set[Key]] = field(default_factory=dict)
    order: dict[Key, tuple[int, str, str]] = field(default_factory=dict)

    def claim(self, key: Key, hosts: tuple[str, ...], batch: int) -> None:
        """key claims hosts; its rank is fixed by the first claim."""
        self.order.setdefault(key, (batch, key[2], key[3]))
        for host in hosts:
            self.by_host.setdefault(host, set()).add(key)

    def release(self, key: Key, hosts: tuple[str, ...], *, forget: bool) -> None:
        """key no longer claims hosts; forget drops its rank too (the resource is deleted)."""
        for host in hosts:
            owners = self.by_host.get(host)
            if owners is not None:
                owners.discard(key)
                if not owners:
                    del self.by_host[host]
        if forget:
            self.order.pop(key, None)

    def winner(self, host: str) -> Key | None:
        """The key that owns host, or None when nobody claims it."""
        owners = self.by_host.get(host)
        if not owners:
            return None
        if len(owners) == 1:
            return next(iter(owners))
        return min(owners, key=self.order.__getitem__)

    def contested(self, host: str) -> bool:
        """Whether more than one resource claims host (only then are there losers)."""
        owners = self.by_host.get(host)
        return owners is not None and len(owners) > 1

    def losers(self, host: str) -> list[Key]:
        """The keys that claim host but do not own it."""
        win = self.winner(host)
        return sorted(k for k in self.by_host.get(host, ()) if k != win)
