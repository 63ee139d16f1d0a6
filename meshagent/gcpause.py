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

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Iterator
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


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to release this way
    return trim


# glibc's malloc_trim(pad), or None where the C library has none (musl, macOS): the one
# platform-dependent part of this module, which release_free_memory calls when present.
malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's malloc_trim).

    A pass that runs in a worker thread allocates in that thread's malloc arena; what it frees
    stays mapped there, fragmented, so every re-read, normalization and translation would raise
    RSS a little more (issue 17: +55% after 100 changes at 10k services, of which a tenth was
    this). About 1 ms at 10k services, 12 ms at worst; call it off the event loop, after the
    pass that published.
    """
    if malloc_trim is not None:
        malloc_trim(0)
