"""Istio durations: Go's time.ParseDuration syntax, as Istio's API accepts it ("1.5s", "1h30m").

The grammar lives in meshagent/durations.py (shared with the agent config and the CLI); Istio
resources get it without the "d" unit, which Go and Istio reject.
"""

from __future__ import annotations

from meshagent.durations import NS_PER_MS, parse_duration_ns


def parse_duration_ms(text: str) -> int | None:
    """Whole milliseconds in text (truncated), or None when it is not a valid duration.

    "0" alone is valid (Go accepts it); negative durations are not valid anywhere in Istio's API.
    """
    ns = parse_duration_ns(text, days=False)
    return None if ns is None else ns // NS_PER_MS
