"""Every document of Istio's corpus (../shared/corpus/istio, never copied here) whose kind is
one of Gateway, Sidecar, Telemetry, EnvoyFilter or WasmPlugin validates and normalizes
without an error or an "unknown field": Istio's own examples are valid Istio."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.yamldocs import load_file
from meshagent.model.source import RawResource, SourceEvent
from meshagent.normalize import Normalizer, validate_resource

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"
NEW_KINDS = {"Gateway", "Sidecar", "Telemetry", "EnvoyFilter", "WasmPlugin"}


def _documents() -> list[RawResource]:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus not found")
    found = []
    for path in sorted(CORPUS.rglob("*.y*ml")):
        resources, _ = load_file(path)  # files that are not resources are other tests' care
        found += [r for r in resources if r.kind in NEW_KINDS]
    if not found:
        pytest.skip("the corpus has no Gateway, Sidecar, Telemetry, EnvoyFilter or WasmPlugin")
    return found


def test_every_new_kind_document_of_the_corpus_validates_cleanly() -> None:
    problems = []
    for resource in _documents():
        for diagnostic in validate_resource(resource):
            if diagnostic.severity == "error" or "unknown field" in diagnostic.reason:
                problems.append(str(diagnostic))
    assert problems == []


def test_the_new_kind_documents_normalize_together_without_errors() -> None:
    documents = _documents()
    _, diagnostics = Normalizer().apply([SourceEvent("files", upserts=tuple(documents))])
    assert [str(d) for d in diagnostics if d.severity == "error"] == []
    assert {r.kind for r in documents} >= {"Gateway", "Sidecar", "EnvoyFilter"}
