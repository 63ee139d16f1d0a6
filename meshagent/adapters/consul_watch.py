"""The mechanics of watching Consul: index rules, a token bucket, backoff, blocking calls.

Pure parts (index handling, the bucket's arithmetic, the backoff sequence) are plain functions
and classes with an injectable clock, so they are tested without sockets. `run_blocking` runs a
synchronous py-consul call on a daemon thread (service registration; the watches use the
asyncio client and need no thread): a blocking query can hold its thread for the
whole `wait`, and a daemon thread never keeps the agent from exiting when the watch is
cancelled on shutdown (the call's answer is then dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def next_index(previous: int, reported: int) -> int:
    """The `index` for the next blocking query, after a response reported `reported`.

    Consul's documented rules: an index that went backwards (a snapshot restore, a new leader)
    resets to 0, so that the next query does a full non-blocking read; otherwise the index must
    be at least 1, since index 0 (or a missing header) would never block and spin the loop.
    """
    if reported < 1:
        return 1  # a Consul bug, not a restore: do not turn it into a full read every time
    if reported < previous:
        return 0
    return reported


class TokenBucket:
    """At most `burst` queries at once, refilled at `qps` per second (shared by all watches)."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self.qps, self.burst, self._clock = qps, burst, clock
        self._tokens = float(burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take a token; how many seconds the caller must wait before using it (0: now)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.qps)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self) -> None:
        """Wait for a token (tokens are reserved in order, so waiters are served fairly)."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class Backoff:
    """Exponential backoff with full jitter: delays in [0, min(cap, base * 2**n)]."""

    def __init__(
        self, base: float = 0.1, cap: float = 5.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.base, self.cap, self._rand = base, cap, rand
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return float(max(self.base / 2, ceiling * self._rand()))

    def reset(self) -> None:
        """A success: start again from the base delay."""
        self.failures = 0


async def run_blocking(call: Callable[[], T]) -> T:
    """call() on a daemon thread; cancelling the await abandons the thread's answer."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if future.done():
            return  # cancelled meanwhile
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)

    def work() -> None:
        try:
            result: object = call()
            ok = True
        except BaseException as exc:  # handed to the awaiting task, which decides
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed while we were blocked
            loop.call_soon_threadsafe(deliver, ok, result)

    threading.Thread(target=work, name="consul-query", daemon=True).start()
    return await future
