"""Durations: the one grammar of the agent config, the CLI and (without days) Istio resources.

Go's time.ParseDuration syntax, which Istio's API uses: one or more decimal numbers, each with
a unit, "1h30m", "1.5s", ".5s", "300ms", "10us", "7ns", and "0" alone. Everywhere except
Istio resources the unit "d" (24h) is also accepted, so that certificate lifetimes read "7d".
There is no sign: a negative duration is valid nowhere.

normalize/durations.py (Istio's grammar, whole milliseconds) and ca/durations.py (seconds, for
the CA's CLI flags) are thin views of this module; the agent config reads every duration key
through agent/config/section.py's `duration_ms`, which also takes a bare integer in the unit
a key's name states (`debounce_ms: 100`, `drain_seconds: 5`).
"""

from __future__ import annotations

import re

NS_PER_MS = 1_000_000
UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign, as Go accepts
    "μs": 1_000,  # U+03BC Greek mu
    "ms": NS_PER_MS,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNITS = "ns|us|µs|μs|ms|s|m|h|d"  # longest first where one is a prefix of another
_PART = re.compile(rf"({_NUMBER})({_UNITS})")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:{_UNITS}))+")
EXAMPLES = '"500ms", "30s", "5m", "1h30m" or "7d"'


def parse_duration_ns(text: str, *, days: bool = True) -> int | None:
    """Whole nanoseconds in text (truncated), or None when text is not a duration.

    days=False is Istio's (Go's) grammar exactly: no "d" unit.
    """
    if text == "0":
        return 0
    if not _WHOLE.fullmatch(text):
        return None
    total = 0
    for number, unit in _PART.findall(text):
        if unit == "d" and not days:
            return None
        whole, _, fraction = number.partition(".")
        size = UNIT_NS[unit]
        total += int(whole or 0) * size  # integers only: exact, and fast on hot paths
        if fraction:
            total += int(fraction) * size // 10 ** len(fraction)
    return total


def format_duration(seconds: float) -> str:
    """A short human form that parses back (to the second): "23h59m", "2d3h", "42s"."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def format_ms(ms: int) -> str:
    """Milliseconds in the largest unit that states them exactly: "10m", "1500ms", "0s"."""
    for unit in ("d", "h", "m", "s"):
        size = UNIT_NS[unit] // NS_PER_MS
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms" if ms else "0s"
