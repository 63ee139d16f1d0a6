"""The fast scalar path of the YAML reader (plain tags built directly, the per-text tag cache)
gives the values, keys and errors of the constructor it stands in for."""

from __future__ import annotations

import yaml

from meshagent.adapters.yamldocs import load_documents

HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"


def _data(body: str) -> tuple[dict[str, object], dict[str, int], list[str]]:
    docs, diags = load_documents(HEAD + body, "f.yaml")
    if not docs:
        return {}, {}, [d.reason for d in diags]
    return dict(docs[0].body["data"]), dict(docs[0].lines), [d.reason for d in diags]


def test_plain_and_quoted_scalars_keep_their_types() -> None:
    data, lines, diags = _data(
        "data:\n"
        "  a: 8080\n  b: '8080'\n  c: true\n  d: 'true'\n  e: null\n  f: ~\n  g: 1.5\n"
        '  h: 0x10\n  i: 2024-01-02\n  j: yes\n  k: .inf\n  l: ""\n'
        "  m: [8080, '8080', on, 'x']\n"
    )
    assert diags == []
    assert data == {
        "a": 8080, "b": "8080", "c": True, "d": "true", "e": None, "f": None, "g": 1.5,
        "h": 16, "i": "2024-01-02", "j": True, "k": float("inf"), "l": "",
        "m": [8080, "8080", True, "x"],  # YAML 1.1, as before
    }  # fmt: skip
    assert lines["data.a"] == 5 and lines["data.m[1]"] == 17


def test_keys_of_every_scalar_type_become_strings() -> None:
    data, _, diags = _data("data:\n  8080: a\n  true: b\n  null: c\n  '9': d\n  1.5: e\n")
    assert diags == []
    assert data == {"8080": "a", "true": "b", "null": "c", "9": "d", "1.5": "e"}


def test_repeated_text_in_another_style_is_resolved_again() -> None:
    # The same text plain and quoted, many times over: the cache is keyed by style too.
    body = "data:\n" + "".join(f"  k{i}: {'80' if i % 2 else repr('80')}\n" for i in range(50))
    data, _, _ = _data(body)
    assert [data[f"k{i}"] for i in range(4)] == ["80", 80, "80", 80]


def test_unknown_tag_and_duplicate_key_are_still_errors() -> None:
    assert _data("data:\n  a: !custom x\n")[2] != []
    _, _, diags = _data("data:\n  a: 1\n  a: 2\n")
    assert diags == ["duplicate key 'a'"]


def _typed(value: object) -> object:
    """value with each scalar's type next to it (5, 5.0 and True compare equal otherwise)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def test_the_resolver_shortcuts_read_every_scalar_as_pyyaml_does() -> None:
    # plain, quoted, block and non-specific (!) scalars, the same text in several styles (the
    # tag cache is by text), merges, aliases and flow collections: the values PyYAML's own
    # SafeLoader reads (no dates here: the reader keeps those as text on purpose)
    body = (
        "a: 5\nb: '5'\nc: \"5\"\nd: ! 5\ne: |\n  5\nf: >\n  5\ng: 5\nh: yes\ni: 'yes'\n"
        "k: ~\nl: 0x1F\nm: 1.5e3\nn: .inf\no: !!str 7\np: [5, '5', {q: 5}]\n"
        "r: &anchor {s: 1, t: '1'}\nu:\n  <<: *anchor\n  v: 1\nw: *anchor\n'5': 5\n"
        "x: [~, '', null, 'null', on, 'off']\n"
    )
    data, _, diags = _data("data:\n" + "".join(f"  {line}\n" for line in body.splitlines()))
    assert diags == []
    assert _typed(data) == _typed(yaml.safe_load(body))
