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


class LogBudget:
    """At most `lines` log lines per `interval` seconds per key (e.g. per refusal reason), so
    that a flood of bad requests cannot flood the log; what was held back is counted.

    `take(key)` is None when the line must be dropped, else how many lines of key were dropped
    since the last one allowed (to log with it). Memory is one entry per key: keys must come
    from a small fixed set (error class names), never from the caller.
    """

    def __init__(
        self, lines: int = 5, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lines, self.interval, self._clock = lines, interval, clock
        # key -> [window start, lines logged in the window, lines dropped since the last one]
        self._state: dict[str, list[float]] = {}

    def take(self, key: str) -> int | None:
        """Whether a line for key may be logged now; see the class docstring."""
        now = self._clock()
        state = self._state.setdefault(key, [now, 0, 0])
        if now - state[0] >= self.interval:
            state[0], state[1] = now, 0
        if state[1] >= self.lines:
            state[2] += 1
            return None
        state[1] += 1
        dropped, state[2] = int(state[2]), 0
        return dropped
