"""JSON of any nesting depth (adapters/deepjson): the same values as the json module, also where
the json module stops with RecursionError."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from meshagent.adapters import deepjson


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"a": value, "n": [1, 2.5, None, True, 'q"\\é']} if i % 2 else [value, {}, []]
    return value


def arbitrary(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 4 or pick < 0.3:
        return rng.choice([0, -7, 1.5e-9, 2**70, "", 'tab\t"quote"', "snow☃", None, True, False])
    if pick < 0.65:
        return {f"k{i}é": arbitrary(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [arbitrary(rng, depth + 1) for _ in range(rng.randint(0, 4))]


WRAP = 1500  # arrays around a value: beyond the json module, so deepjson parses it itself


def test_the_stack_parser_and_encoder_agree_with_the_json_module() -> None:
    rng = random.Random(17)
    for _ in range(300):
        value = arbitrary(rng)
        for text in (json.dumps(value), json.dumps(value, indent=2, ensure_ascii=False)):
            wrapped = deepjson.loads("[" * WRAP + text + "]" * WRAP)
            for _ in range(WRAP):
                (wrapped,) = wrapped
            assert wrapped == json.loads(text), text
        for sort_keys in (False, True):
            expected = json.dumps(value, sort_keys=sort_keys)
            got = deepjson.dumps(_wrapped(value), sort_keys=sort_keys)
            assert got == "[" * WRAP + expected + "]" * WRAP
        assert deepjson.copy(value) == value


def _wrapped(value: Any) -> Any:
    for _ in range(WRAP):
        value = [value]
    return value


def test_values_too_deep_for_the_json_module() -> None:
    value = nested(3000)
    with pytest.raises(RecursionError):
        json.dumps(value)
    text = deepjson.dumps(value)
    with pytest.raises(RecursionError):
        json.loads(text)
    back = deepjson.loads(text.encode())
    assert deepjson.dumps(deepjson.copy(back), sort_keys=True) == deepjson.dumps(
        value, sort_keys=True
    )


@pytest.mark.parametrize(
    "text", ["", "{", "[1,]", '{"a" 1}', "[1] x", "[" * 3000 + "]" * 2999,
             "[" * 3000 + "1" + "]" * 3000 + "x", "[" * 3000 + "tru" + "]" * 3000],
)  # fmt: skip
def test_what_is_not_json_is_a_value_error_at_any_depth(text: str) -> None:
    with pytest.raises(ValueError):
        deepjson.loads(text)


def test_depth_is_counted_in_objects_and_arrays() -> None:
    assert not deepjson.exceeds_depth("scalar", 0)
    assert deepjson.exceeds_depth([], 0) and not deepjson.exceeds_depth([], 1)
    assert deepjson.exceeds_depth({"a": {}}, 1) and not deepjson.exceeds_depth({"a": {}}, 2)
    assert deepjson.exceeds_depth(nested(101), 100) and not deepjson.exceeds_depth(nested(99), 100)
