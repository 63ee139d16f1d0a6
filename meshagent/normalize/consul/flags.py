"""Boolean fields of Consul config entries, read as Consul reads them.

Consul decodes config entries weakly typed (mapstructure's WeaklyTypedInput): a boolean field
may be written as a string ("false", "0", "F", ...: Go's strconv.ParseBool, "" for false) or a
number (0 for false). Python's truthiness would read the string "false" as true, which turns
`TLS.Enabled: "false"` on and `Invert: "false"` into an inverted match.
"""

from __future__ import annotations

from typing import Any

from meshagent.normalize.schema.core import Issues

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"", "0", "f", "F", "FALSE", "false", "False"})


def flag(value: Any, path: str, issues: Issues) -> bool:
    """value of a boolean field (None: unset, False); anything else is an error at path,
    read as False (the feature stays off)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value in _TRUE | _FALSE:
        return value in _TRUE
    issues.error(path, f"must be true or false, not {value!r}")
    return False
