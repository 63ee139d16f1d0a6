"""What every converter needs to know besides the document: namespace, domain, provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshagent.model.source import Provenance
from meshagent.normalize.durations import parse_duration_ms
from meshagent.normalize.hosts import resolve_host


@dataclass(frozen=True, slots=True)
class Context:
    """The resource's effective namespace, the cluster domain and the resource's provenance."""

    namespace: str
    domain_suffix: str
    provenance: Provenance

    def host(self, name: str) -> str:
        """name resolved to an FQDN relative to this resource's namespace."""
        return resolve_host(name, self.namespace, self.domain_suffix)


def ms(value: Any) -> int | None:
    """A validated duration string in whole milliseconds; None when not set."""
    if value is None:
        return None
    parsed = parse_duration_ms(value)
    if parsed is None:  # the schema rejects these first; this guards direct callers
        raise ValueError(f"invalid duration {value!r}")
    return parsed


def sub(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """obj[key] as a mapping, {} when absent or null."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def items(obj: Mapping[str, Any], key: str) -> list[Any]:
    """obj[key] as a list, [] when absent or null."""
    value = obj.get(key)
    return value if isinstance(value, list) else []


def percent(obj: Mapping[str, Any], key: str = "percentage") -> float | None:
    """A Percent message's value ({"value": 12.5}), None when not set."""
    value = obj.get(key)
    if not isinstance(value, Mapping):
        return None
    return float(value.get("value") or 0.0)
