"""Durations of the CA's CLI flags ("90s", "30m", "24h", "7d", "1h30m"), in seconds.

The grammar lives in meshagent/durations.py, shared with the agent config.
"""

from __future__ import annotations

from meshagent.durations import EXAMPLES, format_duration, parse_duration_ns

__all__ = ["format_duration", "parse_duration"]


def parse_duration(text: str) -> float:
    """Seconds in text; ValueError unless it is a positive duration like "24h" or "1h30m"."""
    ns = parse_duration_ns(text.strip())
    if ns is None:
        raise ValueError(f"{text!r} is not a duration (examples: {EXAMPLES})")
    if ns <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return ns / 1e9
