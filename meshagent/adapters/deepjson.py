"""JSON of any nesting depth: parse, encode, copy and measure without recursion.

Python's json module recurses once per level and stops at the interpreter's recursion limit
(about 1,000 levels, fewer on a deep stack) with RecursionError. The Kubernetes API server
accepts objects nested up to 10,000 levels in free-form fields, so one such object must not
make a whole listing or watch unreadable: `loads` parses it anyway (json.loads when it can,
an explicit stack when it cannot), and the adapter then rejects it by `exceeds_depth`, alone.
The same values come out either way: strings, numbers and constants are decoded by json's own
scanners.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, TypeVar

T = TypeVar("T")

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9]\d*))(\.\d+)?([eE][-+]?\d+)?")
_CONTAINERS = (dict, list)
_CONSTANTS = {
    "null": None,
    "true": True,
    "false": False,
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}


def loads(data: bytes | str) -> Any:
    """json.loads(data), also for documents nested too deep for it; ValueError when data is
    not JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _loads_with_a_stack(text)


def _loads_with_a_stack(text: str) -> Any:
    """The value of text, containers kept on an explicit stack (a list of [container, key])."""
    stack: list[list[Any]] = []
    pos = _skip(text, 0)
    while True:
        value, pos, opened = _value_or_open(text, pos)
        if opened is not None:
            stack.append(opened)
            continue
        while True:  # hand value to its container; close the containers that end here
            if not stack:
                if _skip(text, pos) != len(text):
                    raise ValueError(f"extra data at char {pos}")
                return value
            container, key = stack[-1]
            if isinstance(container, dict):
                container[key] = value
            else:
                container.append(value)
            pos = _skip(text, pos)
            char = text[pos : pos + 1]
            if char == ",":
                pos = _skip(text, pos + 1)
                if isinstance(container, dict):
                    stack[-1][1], pos = _member_name(text, pos)
                break
            if char != ("}" if isinstance(container, dict) else "]"):
                raise ValueError(f"expected ',' or the end of a container at char {pos}")
            stack.pop()
            value, pos = container, pos + 1


def _value_or_open(text: str, pos: int) -> tuple[Any, int, list[Any] | None]:
    """(value, end, None) for a complete value at pos (scalars, empty containers); for the
    start of a non-empty container, (None, where its first item starts, [container, key])."""
    char = text[pos : pos + 1]
    if char in ("{", "["):
        inner = _skip(text, pos + 1)
        if text[inner : inner + 1] == ("}" if char == "{" else "]"):
            return ({} if char == "{" else []), inner + 1, None
        if char == "[":
            return None, inner, [[], None]
        key, inner = _member_name(text, inner)
        return None, inner, [{}, key]
    if char == '"':
        value, end = scanstring(text, pos + 1)
        return value, end, None
    number = _NUMBER.match(text, pos)
    if number:
        whole, fraction, exponent = number.groups()
        if fraction or exponent:
            return float(whole + (fraction or "") + (exponent or "")), number.end(), None
        return int(whole), number.end(), None
    for word, constant in _CONSTANTS.items():
        if text.startswith(word, pos):
            return constant, pos + len(word), None
    raise ValueError(f"expecting a value at char {pos}")


def _member_name(text: str, pos: int) -> tuple[str, int]:
    """A member name and its colon at pos; where its value starts."""
    if text[pos : pos + 1] != '"':
        raise ValueError(f"expecting a member name at char {pos}")
    name, pos = scanstring(text, pos + 1)
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise ValueError(f"expecting ':' at char {pos}")
    return name, _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]


def exceeds_depth(value: Any, limit: int) -> bool:
    """Whether value nests objects and arrays more than limit levels deep (a scalar is 0
    levels, {"a": 1} and [] are 1). A level at a time: ~0.9 us per value, about a third of
    what json.loads took to make it."""
    if not isinstance(value, _CONTAINERS):
        return False
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        add = below.append
        for node in level:
            for child in node.values() if isinstance(node, dict) else node:
                if isinstance(child, _CONTAINERS):
                    add(child)
        level, depth = below, depth + 1
    return False


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """json.dumps(value, sort_keys=...), also for values nested too deep for it."""
    try:
        return json.dumps(value, sort_keys=sort_keys)
    except RecursionError:
        return "".join(_pieces(value, sort_keys))


class _Text(str):
    """Text already encoded (punctuation, member names), as opposed to a string value."""

    __slots__ = ()


def _pieces(value: Any, sort_keys: bool) -> list[str]:
    """The text of value in pieces, as json.dumps writes it, from an explicit stack of what is
    left to write (values, and _Text)."""
    out: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            out.append(item)
            continue
        if isinstance(item, dict) and item:
            keys = sorted(item) if sort_keys else list(item)
            sequence: list[Any] = [_Text("{")]
            for i, key in enumerate(keys):
                name = key if isinstance(key, str) else json.dumps(key)
                sequence += [_Text((", " if i else "") + json.dumps(name) + ": "), item[key]]
            todo += reversed([*sequence, _Text("}")])
        elif isinstance(item, list) and item:
            sequence = [_Text("[")]
            for i, element in enumerate(item):
                sequence += [_Text(", "), element] if i else [element]
            todo += reversed([*sequence, _Text("]")])
        else:
            out.append(json.dumps(item))
    return out


def copy(value: T) -> T:
    """A deep copy of JSON data (dicts, lists, scalars), of any depth."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in pairs:
            if isinstance(item, dict | list):
                item_copy: Any = {} if isinstance(item, dict) else []
                stack.append((item, item_copy))
            else:
                item_copy = item
            if isinstance(target, dict):
                target[key] = item_copy
            else:
                target.append(item_copy)
    return root  # type: ignore[no-any-return]
