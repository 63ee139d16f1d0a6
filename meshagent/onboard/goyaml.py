"""YAML text as Go's sigs.k8s.io/yaml (go-yaml v2) writes it, for files istioctl also writes.

`istioctl x workload entry configure` marshals mesh.yaml with go-yaml v2; byte-for-byte equal
output needs its key order and its quoting, which differ from PyYAML's defaults:

- mapping keys are sorted "naturally": rune by rune, a non-letter sorts before a letter, and
  runs of digits compare as numbers (so `ISTIO_META_X` sorts before `ISTIO_METAJSON_X`);
- a string that YAML 1.1 would read as something else (`"true"`, `""`, `"8080"`, a date) is
  double-quoted; a string that cannot be plain (`{"a":1}`) is single-quoted; multi-line
  strings use the literal block style.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import yaml

_NON_STRINGS = frozenset(
    [
        "~",
        "null",
        "Null",
        "NULL",
        "y",
        "Y",
        "yes",
        "Yes",
        "YES",
        "n",
        "N",
        "no",
        "No",
        "NO",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
        ".inf",
        ".Inf",
        ".INF",
        "+.inf",
        "+.Inf",
        "+.INF",
        "-.inf",
        "-.Inf",
        "-.INF",
        ".nan",
        ".NaN",
        ".NAN",
        "<<",
    ]
)
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ].*)?$")
_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


def go_reads_as_non_string(s: str) -> bool:
    """Whether go-yaml v2 would resolve the plain scalar s to a non-string (so it quotes it)."""
    if s == "" or s in _NON_STRINGS:
        return True
    if s[0] not in "+-.0123456789":
        return False
    plain = s.replace("_", "")
    try:
        int(plain, 0)  # Go's ParseInt(base 0): 0x.., 0o.., 0b.., decimal
        return True
    except ValueError:
        pass
    return bool(_FLOAT.match(plain) or _DATE.match(s) or _BASE60.match(s))


def natural_less(a: str, b: str) -> bool:
    """go-yaml v2's order of mapping keys (keyList.Less for two strings)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x == y:
            continue
        xl, yl = x.isalpha(), y.isalpha()
        if xl and yl:
            return x < y
        if xl or yl:
            return yl
        xn, xe = _number_at(a, i)
        yn, ye = _number_at(b, i)
        if xn != yn:
            return xn < yn
        if xe != ye:
            return xe < ye
        return x < y
    return len(a) < len(b)


def _number_at(s: str, i: int) -> tuple[int, int]:
    """The value of the digit run starting at i (0 when none) and where it ends."""
    end, value = i, 0
    while end < len(s) and s[end].isdigit():
        value = value * 10 + int(s[end])
        end += 1
    return value, end


def _compare(a: object, b: object) -> int:
    x, y = str(a), str(b)
    return -1 if natural_less(x, y) else (1 if natural_less(y, x) else 0)


_NATURAL = functools.cmp_to_key(_compare)


class _GoDumper(yaml.SafeDumper):
    """A SafeDumper that keeps the (already sorted) key order and quotes like go-yaml v2."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style: str | None = None
    if "\n" in value:
        style = "|"
    elif go_reads_as_non_string(value):
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_dict(dumper: yaml.SafeDumper, value: Mapping[Any, Any]) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", list(value.items()))


_GoDumper.add_representer(str, _represent_str)
_GoDumper.add_representer(dict, _represent_dict)


def _sorted(value: Any) -> Any:
    """value with every mapping's keys in go-yaml's natural order."""
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value, key=_NATURAL)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def dump(value: Any) -> str:
    """value (mappings, lists, strings, numbers, bools) as go-yaml v2 block YAML."""
    text: str = yaml.dump(
        _sorted(value),
        Dumper=_GoDumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=1 << 30,  # go-yaml as used by istioctl does not fold long lines
    )
    return text
