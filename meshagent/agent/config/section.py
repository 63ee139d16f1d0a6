"""What every section of the agent config is read with: a mapping that locates its errors, and
the checks sections share (durations, ports, addresses, names, paths).

`Section` wraps one mapping of the config with the dotted field path it sits at and the line of
each field, so every error is a `ConfigError` with file:line and field. Each section module
(`node`'s keys in core.py, `dns` in dns.py, ...) reads its keys through it and the functions
below; none of them imports another section's private helpers. This module imports nothing of
the package, so any module of it can use it without an import cycle.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from meshagent.durations import EXAMPLES, NS_PER_MS, format_ms, parse_duration_ns
from meshagent.errors import ConfigError

T = TypeVar("T")

_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


class Section:
    """One mapping of the config, with what is needed to locate an error in it."""

    def __init__(self, data: Any, prefix: str, lines: Mapping[str, int], filename: str) -> None:
        self.prefix, self.lines, self.filename = prefix, lines, filename
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("must be a mapping", "")
        self.data: dict[str, Any] = data

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)

    def error(self, reason: str, key: str) -> ConfigError:
        field_path = self.path(key)
        probe = field_path
        while probe not in self.lines and probe:
            probe = probe.rpartition(".")[0]
        return ConfigError(
            reason, location=f"{self.filename}:{self.lines.get(probe, 1)}", field=field_path
        )

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown key (expected one of: {', '.join(allowed)})", str(key))

    def section(self, key: str) -> Section:
        return Section(self.data.get(key), self.path(key), self.lines, self.filename)

    def child(self, key: str, data: Any) -> Section:
        """data (a list item, e.g. key "tcp[0]") read as the mapping at this section's key."""
        return Section(data, self.path(key), self.lines, self.filename)

    def get(self, key: str, kind: type[T], default: T) -> T:
        value = self.data.get(key, default)
        if value is None and default is None:
            return value  # type: ignore[return-value]
        # bool is an int to Python, never to an operator.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"must be {_KIND_NAMES.get(kind, kind.__name__)}", key)
        return value

    def opt(self, key: str, kind: type[T]) -> T | None:
        value = self.data.get(key)
        return None if value is None else self.get(key, kind, value)

    def port(self, key: str, default: int, *, zero_ok: bool = True) -> int:
        value = self.get(key, int, default)
        if not (0 if zero_ok else 1) <= value <= 65535:
            raise self.error(
                "must be a port number (0-65535)" if zero_ok else "must be 1-65535", key
            )
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default).lower()
        if value not in choices:
            raise self.error(f"must be one of: {', '.join(choices)}", key)
        return value


def duration_ms(
    s: Section,
    key: str,
    default: str,
    low_ms: int,
    high_ms: int | None = None,
    *,
    bare_ms: int | None = None,
) -> int:
    """A duration key in whole milliseconds, within [low_ms, high_ms] (None: no upper bound).

    Every duration key of the agent config is read here, in the one grammar of
    meshagent/durations.py ("500ms", "30s", "1h30m", "7d"); with bare_ms, a plain integer
    counts in that unit, which is what `debounce_ms: 100` or `drain_seconds: 5` always meant.
    """
    value = s.data.get(key, default)
    ms: int | None = None
    if isinstance(value, int) and not isinstance(value, bool) and bare_ms is not None:
        ms = value * bare_ms
    elif isinstance(value, str):
        ns = parse_duration_ns(value.strip())
        ms = None if ns is None else ns // NS_PER_MS
    if ms is None:
        raise s.error(f"{value!r} is not a duration with a unit (e.g. {EXAMPLES})", key)
    if ms < low_ms or (high_ms is not None and ms > high_ms):
        upper = f" to {format_ms(high_ms)}" if high_ms is not None else " or more"
        raise s.error(f"must be a duration from {format_ms(low_ms)}{upper}", key)
    return ms


def whole_seconds(s: Section, key: str, default: str, low_s: int, high_s: int) -> int:
    """A duration key in whole seconds (a plain integer counts in seconds)."""
    ms = duration_ms(s, key, default, low_s * 1000, high_s * 1000, bare_ms=1000)
    if ms % 1000:
        raise s.error("must be whole seconds", key)
    return ms // 1000


def bounded(s: Section, key: str, default: int, low: int, high: int) -> int:
    """An integer key within [low, high]."""
    value = s.get(key, int, default)
    if not low <= value <= high:
        raise s.error(f"must be between {low} and {high}", key)
    return value


def hostname(s: Section, key: str, default: str) -> str:
    """A non-empty name without spaces (a host, a namespace, a provider's name)."""
    value = s.get(key, str, default).strip()
    if not value or any(c.isspace() for c in value):
        raise s.error("must be a non-empty name without spaces", key)
    return value


def ip(s: Section, key: str, value: str) -> str:
    """value, checked to be an IP address (reported at key)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise s.error(f"{value!r} is not an IP address", key) from None
    return value


def host_port(s: Section, key: str, value: str) -> tuple[str, int]:
    """value "IP:port" (IPv6 in brackets) as (IP, port); port 1-65535."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise s.error('must be "host:port", e.g. "127.0.0.1:15010"', key)
    ip(s, key, host)
    return host, int(port)


def is_port(value: Any) -> bool:
    """Whether value is a port number 1-65535 (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65535


def loopback_unless_allowed(s: Section, key: str, host: str, allowed: bool) -> None:
    """A listener on a non-loopback address must be asked for with `allow_remote: true`."""
    if not allowed and not ipaddress.ip_address(host).is_loopback:
        raise s.error(
            f"{host} is not a loopback address: anyone who can reach it could use it; "
            f"set {s.path('allow_remote')}: true to listen there anyway",
            key,
        )


def resolve_path(base: Path, value: str) -> Path:
    """A configured path: `~` expanded, relative ones against base (the config's directory)."""
    return (base / Path(value).expanduser()).absolute()


def optional_path(s: Section, key: str, base: Path) -> Path | None:
    """The path at key resolved against base; None when the key is unset or empty."""
    value = s.opt(key, str)
    return resolve_path(base, value) if value else None


def is_locality(value: str) -> bool:
    """Whether value is a locality: 1 to 3 non-empty parts joined by "/", without spaces or
    wildcards (those belong in DestinationRule patterns, not in a place)."""
    parts = value.split("/")
    return len(parts) <= 3 and all(
        p and p != "*" and not any(c.isspace() for c in p) for p in parts
    )


__all__ = [
    "Section",
    "bounded",
    "duration_ms",
    "host_port",
    "hostname",
    "ip",
    "is_locality",
    "is_port",
    "loopback_unless_allowed",
    "optional_path",
    "resolve_path",
    "whole_seconds",
]
