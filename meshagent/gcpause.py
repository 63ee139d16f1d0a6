"""Pausing Python's cyclic garbage collector around big, cycle-free passes.

Loading, normalizing and translating a large mesh allocates hundreds of thousands of objects
that live on (the model, the Envoy resources). Every allocation burst triggers collections
that rescan all of them, which costs about 40% of a full 10k-service translation, while neither
pass creates reference cycles: their garbage is freed by reference counting. So the agent
pauses the collector for the pass and lets it run normally in between.

Re-enabling the collector alone would hand all those objects to the next young collection,
which would scan every one of them only to find them alive (~60 ms for a 10k-service mesh),
and later full collections would rescan the whole long-lived mesh (~100 ms with 1000 Consul
services). So the outermost pause ends by freezing what is tracked (gc.freeze: a permanent
generation that collections skip; the next pause unfreezes it first). Cyclic garbage that is
frozen with it is not lost: at most every FULL_COLLECTION_S, a pause ends with one full
collection of everything before freezing again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

FULL_COLLECTION_S = 600.0
_last_full = time.monotonic()


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the duration of the block (re-entrant safe)."""
    global _last_full
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
        gc.unfreeze()  # back to the oldest generation; nothing scans it while paused
    try:
        yield
    finally:
        if was_enabled:
            now = time.monotonic()
            if now - _last_full >= FULL_COLLECTION_S:
                _last_full = now
                gc.collect()  # what earlier passes froze with their garbage cycles
            gc.freeze()
            gc.enable()
