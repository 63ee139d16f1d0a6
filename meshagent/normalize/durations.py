"""Istio durations: Go's time.ParseDuration syntax, as Istio's API accepts it ("1.5s", "1h30m")."""

from __future__ import annotations

import re

_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")


def parse_duration_ms(text: str) -> int | None:
    """Whole milliseconds in text (truncated), or None when it is not a valid duration.

    "0" alone is valid (Go accepts it); negative durations are not valid anywhere in Istio's API.
    """
    if text == "0":
        return 0
    if not _WHOLE.fullmatch(text):
        return None
    total_ns = 0.0
    for number, unit in _PART.findall(text):
        total_ns += float(number) * _UNIT_NS[unit]
    return int(round(total_ns) // 1_000_000)
