"""The YAML document loader: documents, line maps, located load errors."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from meshagent.adapters import yamldocs
from meshagent.adapters.yamldocs import load_documents, load_documents_with_meta, load_file
from meshagent.agent.config import load_config
from meshagent.errors import ConfigError

TWO_DOCS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
---
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
"""


def test_multi_document_yaml_yields_one_resource_per_non_empty_document() -> None:
    # given two resources separated by an empty document
    # when loading
    resources, diagnostics = load_documents(TWO_DOCS, "mesh.yaml")
    # then both come back, in order, with their identity
    assert diagnostics == []
    assert [(r.kind, r.namespace, r.name) for r in resources] == [
        ("VirtualService", "prod", "reviews"),
        ("DestinationRule", "", "reviews"),
    ]
    assert resources[0].api_version == "networking.istio.io/v1"
    assert resources[0].source == "files"
    assert resources[0].key == ("files", "VirtualService", "prod", "reviews")


def test_line_map_records_every_key_and_sequence_item() -> None:
    # given the two-document text
    resources, _ = load_documents(TWO_DOCS, "mesh.yaml")
    lines = resources[0].lines
    # then keys and items are located, 1-based
    assert lines["spec"] == 6
    assert lines["spec.hosts[0]"] == 8
    assert lines["spec.http[0]"] == 10
    assert lines["spec.http[0].route[1]"] == 14
    assert lines["spec.http[0].route[1].weight"] == 17
    assert lines["spec.http[0].route[1].destination.subset"] == 16


def test_provenance_location_is_the_document_start() -> None:
    resources, _ = load_documents(TWO_DOCS, "conf/mesh.yaml")
    assert resources[0].provenance.location == "conf/mesh.yaml:1"
    assert resources[1].provenance.location == "conf/mesh.yaml:20"
    assert resources[1].lines["spec.host"] == 25


def test_document_that_is_not_a_mapping_is_a_located_error() -> None:
    text = "apiVersion: v1\nkind: X\nmetadata: {name: a}\n---\n- 1\n- 2\n"
    resources, diagnostics = load_documents(text, "bad.yaml")
    assert [r.name for r in resources] == ["a"]
    assert len(diagnostics) == 1
    assert diagnostics[0].severity == "error"
    assert diagnostics[0].location == "bad.yaml:5"
    assert "mapping" in diagnostics[0].reason


def test_missing_identity_fields_are_named() -> None:
    text = "apiVersion: networking.istio.io/v1\nmetadata:\n  namespace: x\nspec: {}\n"
    resources, diagnostics = load_documents(text, "bad.yaml")
    assert resources == []
    assert diagnostics[0].location == "bad.yaml:1"
    assert "kind" in diagnostics[0].reason and "metadata.name" in diagnostics[0].reason


def test_syntax_error_yields_no_documents_and_the_line() -> None:
    text = TWO_DOCS + "---\nkind: [unclosed\n"
    resources, diagnostics = load_documents(text, "broken.yaml")
    assert resources == []
    assert len(diagnostics) == 1
    assert diagnostics[0].location.startswith("broken.yaml:")
    assert int(diagnostics[0].location.split(":")[1]) >= 26
    assert "YAML syntax error" in diagnostics[0].reason


def test_duplicate_key_is_an_error() -> None:
    text = "apiVersion: v1\nkind: A\nmetadata: {name: a}\nspec:\n  x: 1\n  x: 2\n"
    resources, diagnostics = load_documents(text, "dup.yaml")
    assert resources == []
    assert diagnostics[0].location == "dup.yaml:6"
    assert "duplicate key 'x'" in diagnostics[0].reason


def test_numeric_keys_become_strings_and_dates_stay_strings() -> None:
    text = "apiVersion: v1\nkind: A\nmetadata: {name: a}\nspec:\n  8080: {day: 2024-01-02}\n"
    resources, _ = load_documents(text, "k.yaml")
    assert resources[0].body["spec"] == {"8080": {"day": "2024-01-02"}}


def test_recursive_alias_is_an_error_not_a_crash() -> None:
    text = "apiVersion: v1\nkind: A\nmetadata: {name: a}\nspec: &s\n  self: *s\n"
    resources, diagnostics = load_documents(text, "r.yaml")
    assert resources == []
    assert "recursive" in diagnostics[0].reason


def test_strip_keys_removes_and_returns_the_stripped_values() -> None:
    text = "_err: 'spec.host: Required value'\napiVersion: v1\nkind: A\nmetadata: {name: a}\n"
    documents, diagnostics = load_documents_with_meta(text, "c.yaml", strip_keys=("_err",))
    assert diagnostics == []
    assert documents[0].meta == {"_err": "spec.host: Required value"}
    assert "_err" not in documents[0].resource.body
    assert "_err" not in documents[0].resource.lines
    # without strip_keys, the key stays
    resources, _ = load_documents(text, "c.yaml")
    assert "_err" in resources[0].body


def test_load_file_reads_and_reports_unreadable_files(tmp_path: Path) -> None:
    good = tmp_path / "m.yaml"
    good.write_text(TWO_DOCS)
    resources, diagnostics = load_file(good)
    assert len(resources) == 2 and diagnostics == []
    assert resources[0].provenance.location == f"{good}:1"
    resources, diagnostics = load_file(tmp_path / "absent.yaml")
    assert resources == [] and diagnostics[0].severity == "error"
    assert "cannot read file" in diagnostics[0].reason


# --- bounds on what a text may expand to ---------------------------------------------------


def laughs(levels: int) -> str:
    """A "billion laughs" document: each level aliases the previous one nine times."""
    rows = "".join(
        f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, levels + 1)
    )
    return f"apiVersion: v1\nkind: A\nmetadata: {{name: a}}\nspec:\n  l0: &l0 [lol, lol]\n{rows}"


def test_billion_laughs_is_one_located_error_for_the_whole_file() -> None:
    # given a valid document, then a 10^9-node alias bomb of under 1 KB
    text = "apiVersion: v1\nkind: A\nmetadata: {name: ok}\n---\n" + laughs(9)
    assert len(text) < 1000
    # when loading
    tracemalloc.start()
    try:
        resources, diagnostics = load_documents(text, "lol.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # then the whole file is rejected with one error located in the bomb, in bounded memory
    assert peak < 20 * 1024 * 1024
    assert resources == []
    [error] = diagnostics
    assert error.severity == "error" and "billion laughs" in error.reason
    assert int(error.location.split(":")[1]) >= 5


def test_expansion_bound_holds_across_documents() -> None:
    # each document alone stays under the floor; together they go past it
    text = "---\n".join(laughs(4).replace("name: a", f"name: a{i}") for i in range(4))
    resources, diagnostics = load_documents(text, "many.yaml")
    assert resources == [] and "billion laughs" in diagnostics[0].reason


def test_ordinary_aliases_and_merge_keys_still_load() -> None:
    text = (
        "apiVersion: v1\nkind: A\nmetadata: {name: a, labels: &l {app: x, version: v1}}\n"
        "spec:\n  base: &b {port: 80, protocol: HTTP}\n  one: {<<: *b, name: one}\n"
        "  two: *b\n  labels: *l\n" + laughs(3).split("spec:\n", 1)[1]
    )
    resources, diagnostics = load_documents(text, "ok.yaml")
    assert diagnostics == []
    spec = resources[0].body["spec"]
    assert spec["one"] == {"port": 80, "protocol": "HTTP", "name": "one"}
    assert spec["two"] == spec["base"] and spec["labels"] == {"app": "x", "version": "v1"}
    assert len(spec["l3"]) == 9


def test_deep_nesting_is_rejected() -> None:
    text = "apiVersion: v1\nkind: A\nmetadata: {name: a}\nspec:\n" + "".join(
        " " * (i + 1) + "k:\n" for i in range(150)
    )
    resources, diagnostics = load_documents(text, "deep.yaml")
    assert resources == []
    assert "nested deeper than 100 levels" in diagnostics[0].reason
    assert diagnostics[0].location == "deep.yaml:104"  # the 101st level


def test_oversized_text_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamldocs, "MAX_TEXT_CHARS", 100)
    resources, diagnostics = load_documents(TWO_DOCS, "big.yaml")
    assert resources == [] and diagnostics[0].location == "big.yaml:1"
    assert "larger than 100 bytes" in diagnostics[0].reason


def test_agent_config_uses_the_same_bounds(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(laughs(9).split("spec:\n", 1)[1].replace("\n  ", "\n")[2:])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "billion laughs" in str(caught.value) and f"{path}:" in str(caught.value)


# --- identity: what names a resource must be readable, or the document is an error ---------


def test_unreadable_or_invalid_identity_is_a_located_error() -> None:
    cases = {
        "metadata: {name: a, namespace: 5}": ("namespace must be a string", 3),
        "metadata: [a]": ("metadata must be a mapping", 3),
        "metadata: {name: Reviews_v1}": ("not a valid Kubernetes name", 3),
        "metadata:\n  name: a\n  namespace: prod.eu": ("not a valid Kubernetes namespace", 5),
        "metadata: {name: " + "a" * 254 + "}": ("not a valid Kubernetes name", 3),
    }
    for meta, (reason, line) in cases.items():
        resources, diagnostics = load_documents(f"apiVersion: v1\nkind: A\n{meta}\n", "id.yaml")
        assert resources == [], meta
        assert reason in diagnostics[0].reason and diagnostics[0].location == f"id.yaml:{line}"


def test_valid_kubernetes_names_load() -> None:
    text = "apiVersion: v1\nkind: A\nmetadata: {name: reviews.v1-2, namespace: team-a1}\n"
    resources, diagnostics = load_documents(text, "ok.yaml")
    assert diagnostics == [] and resources[0].key == ("files", "A", "team-a1", "reviews.v1-2")


def test_merge_keys_may_be_overridden_but_keys_not_repeated() -> None:
    text = (
        "apiVersion: v1\nkind: A\nmetadata: {name: a}\nspec:\n"
        "  base: &b {port: 80, protocol: HTTP}\n"
        "  tls: &t {port: 443, mode: SIMPLE}\n"
        "  one: &o {<<: [*b, *t], port: 81}\n"
        "  again: *o\n"
    )
    resources, diagnostics = load_documents(text, "merge.yaml")
    assert diagnostics == []
    spec = resources[0].body["spec"]
    assert spec["one"] == {"port": 81, "protocol": "HTTP", "mode": "SIMPLE"} == spec["again"]
    assert resources[0].lines["spec.one.port"] == 7
    resources, diagnostics = load_documents(text + "  two: {port: 1, port: 2}\n", "dup.yaml")
    assert resources == [] and "duplicate key 'port'" in diagnostics[0].reason


def test_documents_of_one_shape_share_their_key_strings() -> None:
    # given the same shape loaded from two texts (two files)
    first, _ = load_documents(TWO_DOCS, "a.yaml")
    second, _ = load_documents(TWO_DOCS.replace("reviews", "ratings"), "b.yaml")
    # then their bodies hold one copy of each key (a 10k-service mesh: ~10 MB less)
    for a, b in ((first[0].body, second[0].body), (first[0].body["spec"], second[0].body["spec"])):
        assert [k for k in a] == [k for k in b]
        assert all(ka is kb for ka, kb in zip(a, b, strict=True))
