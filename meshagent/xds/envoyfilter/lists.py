"""The list operations of EnvoyFilter patches on named siblings (filters, listener filters,
routes), with Istio's rules: without a match, INSERT_BEFORE inserts first and INSERT_AFTER
appends; REPLACE and REMOVE need a match; a relative insert without a matching element has
no effect.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from typing import Any, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


def _copy(items: Any) -> list[Any]:
    out = []
    for item in items:
        clone = type(item)()
        clone.CopyFrom(item)
        out.append(clone)
    return out


def _set(items: MutableSequence[Any], values: list[Any]) -> None:
    del items[:]
    items.extend(values)


def apply_list_op(
    items: MutableSequence[M],
    operation: str,
    value: Callable[[], M],
    matches: Callable[[M], bool] | None,
) -> bool:
    """Apply operation to items (a repeated field); matches None: the patch names no
    element. Whether the list changed."""
    current = _copy(items)
    if operation == "ADD" or (operation == "INSERT_AFTER" and matches is None):
        current.append(value())
    elif operation == "INSERT_FIRST" or (operation == "INSERT_BEFORE" and matches is None):
        current.insert(0, value())
    elif matches is None:
        return False  # REPLACE, REMOVE: nothing named
    elif operation == "REMOVE":
        kept = [i for i in current if not matches(i)]
        if len(kept) == len(current):
            return False
        current = kept
    elif operation in ("INSERT_BEFORE", "INSERT_AFTER", "REPLACE"):
        at = next((n for n, i in enumerate(current) if matches(i)), None)
        if at is None:
            return False
        if operation == "INSERT_BEFORE":
            current.insert(at, value())
        elif operation == "INSERT_AFTER":
            current.insert(at + 1, value())
        else:
            current[at] = value()
    else:
        return False
    _set(items, current)
    return True
