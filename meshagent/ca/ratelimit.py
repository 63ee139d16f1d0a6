"""Per-caller token buckets: a steady rate with bursts, bounded memory, injectable clock."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucketLimiter:
    """Allows `rate` requests per second per caller, with bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        self.rate, self.burst, self._clock, self._max = rate, burst, clock, max_callers
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, caller: str) -> bool:
        """Take one token from caller's bucket; False when it is empty."""
        now = self._clock()
        tokens, last = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            return False
        if len(self._buckets) >= self._max and caller not in self._buckets:
            self._prune(now)
        self._buckets[caller] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        # Buckets that have refilled are forgotten at no cost to their callers; if every
        # caller is active, the least recently seen half goes.
        full = {
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.burst
        }
        self._buckets = {k: v for k, v in self._buckets.items() if k not in full}
        if len(self._buckets) >= self._max:
            by_age = sorted(self._buckets.items(), key=lambda item: item[1][1])
            self._buckets = dict(by_age[len(by_age) // 2 :])
