"""The snapshot cache and the proxy status it keeps."""

from __future__ import annotations

import asyncio

from meshagent.xds.cache import SnapshotCache
from meshagent.xds.status import ProxyStatus
from meshagent.xds.typeurls import CLUSTER, ENDPOINT
from tests.xds_builders import eds_cluster, resource_set


def test_get_before_set_is_version_zero_and_empty() -> None:
    version, resources = SnapshotCache().get("vm-1")
    assert version == 0
    assert resources.by_type == {}


def test_set_bumps_the_version_only_when_the_content_changes() -> None:
    cache = SnapshotCache()
    first = cache.set("vm-1", resource_set(clusters=[eds_cluster("a")]))
    same = cache.set("vm-1", resource_set(clusters=[eds_cluster("a")], endpoints=[]))
    changed = cache.set("vm-1", resource_set(clusters=[eds_cluster("a", timeout_ms=3)]))
    assert (first, same, changed) == (1, 1, 2)
    assert cache.nodes() == ["vm-1"]


async def test_wait_newer_returns_once_a_newer_version_is_set() -> None:
    cache = SnapshotCache()
    cache.set("vm-1", resource_set(clusters=[eds_cluster("a")]))
    waiter = asyncio.ensure_future(cache.wait_newer("vm-1", 1))
    await asyncio.sleep(0)
    assert not waiter.done()

    cache.set("vm-1", resource_set(clusters=[eds_cluster("b")]))

    assert await asyncio.wait_for(waiter, 5) == 2
    assert await asyncio.wait_for(cache.wait_newer("vm-1", 0), 5) == 2


def test_status_follows_pushes_acks_and_nacks() -> None:
    cache = SnapshotCache()
    cache.update_status("vm-1", lambda s: s.with_connected("delta"))
    cache.update_status("vm-1", lambda s: s.with_pushed(CLUSTER, "1", 10.0))
    assert not cache.status("vm-1").acked_all([CLUSTER])

    cache.update_status("vm-1", lambda s: s.with_acked(CLUSTER, "1", 10.5))
    cache.update_status("vm-1", lambda s: s.with_pushed(ENDPOINT, "1", 11.0))
    cache.update_status("vm-1", lambda s: s.with_nacked(ENDPOINT, "1", "bad", 11.1))

    status = cache.status("vm-1")
    assert status.acked_all([CLUSTER])
    assert not status.acked_all([CLUSTER, ENDPOINT])
    assert status.of(ENDPOINT).last_nack_error == "bad"
    assert (status.connected, status.stream) == (True, "delta")


def test_a_new_stream_resets_type_status_and_disconnect_keeps_history() -> None:
    status = ProxyStatus().with_connected("sotw").with_pushed(CLUSTER, "v", 1.0)
    reconnected = status.with_connected("delta")
    assert reconnected.types == {}
    assert reconnected.streams == 2

    gone = status.with_disconnected()
    assert (gone.connected, gone.stream, gone.of(CLUSTER).last_sent_version) == (False, "", "v")
    assert not gone.acked_all([])


def test_unknown_nodes_have_a_disconnected_status() -> None:
    assert SnapshotCache().status("nobody") == ProxyStatus()


def test_content_equality_from_the_change_hint_is_the_full_comparison() -> None:
    import random

    from meshagent.xds.cache import same_content
    from meshagent.xds.resources import Resource, ResourceSet

    def fingerprint(rs: ResourceSet) -> dict[str, dict[str, str]]:
        return {t: {n: r.version for n, r in m.items()} for t, m in rs.by_type.items() if m}

    # given sets derived one from another (each with its change hint), as the translator makes
    rng = random.Random(7)
    names = [f"c{i}" for i in range(6)]
    current: dict[str, Resource] = {}
    base = ResourceSet()
    for _ in range(300):
        after = dict(current)
        for name in rng.sample(names, rng.randrange(1, 3)):
            if name in after and rng.random() < 0.3:
                del after[name]
            else:  # a new object, with the same version or another one
                after[name] = Resource(name, rng.choice("ab"), CLUSTER, b"")
        changed = {n for n in names if after.get(n) is not current.get(n)}
        by_type = {CLUSTER: after} if after or rng.random() < 0.5 else {}
        new = ResourceSet.derive(base, by_type, {CLUSTER: frozenset(changed)})
        # then what the hint says is what comparing every name and version says
        assert new.changed_since(base) is not None
        assert same_content(base, new) == (fingerprint(base) == fingerprint(new))
        base, current = new, after
