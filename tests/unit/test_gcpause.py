"""paused_gc: the collector is off inside, what was made is frozen after, and frozen cyclic
garbage is collected by the periodic full collection."""

from __future__ import annotations

import gc
import weakref

import pytest

from meshagent import gcpause
from meshagent.gcpause import paused_gc


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_paused_then_frozen_then_collected_at_the_next_full_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert gc.isenabled()
    monkeypatch.setattr(gcpause, "FULL_COLLECTION_S", 1e9)  # none due, however long tests ran
    try:
        with paused_gc():
            assert not gc.isenabled()
            with paused_gc():  # re-entrant: the inner one changes nothing
                assert not gc.isenabled()
            assert not gc.isenabled()
            garbage = _cycle()  # unreachable at once, freed only by the cyclic collector
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.collect()
        assert garbage() is not None  # frozen: skipped by collections

        # a full collection is due
        monkeypatch.setattr(gcpause, "FULL_COLLECTION_S", 0.0)
        with paused_gc():
            assert gc.get_freeze_count() == 0  # unfrozen while paused
        assert garbage() is None
    finally:
        gc.unfreeze()
        gc.enable()


def test_release_free_memory_is_safe_with_or_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(gcpause, "malloc_trim", calls.append)
    gcpause.release_free_memory()
    assert calls == [0]
    monkeypatch.setattr(gcpause, "malloc_trim", None)
    gcpause.release_free_memory()  # musl, macOS: nothing to do
