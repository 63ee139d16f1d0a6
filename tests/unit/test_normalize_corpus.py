"""The normalizer against real Istio documents from ../shared/corpus (never copied here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.adapters.yamldocs import load_documents_with_meta, load_file
from meshagent.model.source import RawResource, SourceEvent
from meshagent.normalize import Normalizer, validate_resource

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus" / "istio"
KINDS = {"ServiceEntry", "WorkloadEntry", "VirtualService", "DestinationRule"}


def _corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("corpus absent: ../shared/corpus not found")
    return CORPUS


def _valid_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    folders = ("bookinfo", "config", "dataset")
    files = [p for d in folders for p in sorted((CORPUS / d).glob("*.yaml"))]
    return [*files, CORPUS / "validation" / "destinationrule-valid.yaml"]


def _params() -> list[object]:
    files: list[object] = list(_valid_files())
    if not files:  # keep one skipped case so that the reason shows in the report
        reason = "corpus absent: ../shared/corpus not found"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return files


def _resources(path: Path) -> list[RawResource]:
    resources, problems = load_file(path)
    assert problems == [], [str(p) for p in problems]
    return [r for r in resources if r.kind in KINDS]


@pytest.mark.parametrize("path", _params(), ids=lambda p: f"{p.parent.name}/{p.name}" if p else "-")
def test_corpus_documents_validate_without_errors(path: Path) -> None:
    _corpus()
    for resource in _resources(path):
        found = [str(d) for d in validate_resource(resource) if d.severity == "error"]
        assert found == [], found


def test_corpus_has_documents_of_every_kind() -> None:
    _corpus()
    kinds = {r.kind for p in _valid_files() for r in _resources(p)}
    assert kinds == KINDS


def test_whole_corpus_normalizes_into_one_snapshot() -> None:
    _corpus()
    upserts = tuple(r for p in _valid_files() for r in load_file(p)[0])
    snapshot, diagnostics = Normalizer().apply([SourceEvent("files", upserts=upserts)])
    assert [str(d) for d in diagnostics if d.severity == "error"] == []
    assert snapshot.services and snapshot.virtual_services and snapshot.destination_rules
    assert snapshot.workloads


def test_invalid_destination_rules_are_rejected_at_the_expected_field() -> None:
    path = _corpus() / "validation" / "destinationrule-invalid.yaml"
    documents, problems = load_documents_with_meta(
        path.read_text(), str(path), strip_keys=("_err",)
    )
    assert problems == [] and documents
    for document in documents:
        expected_field = str(document.meta["_err"]).split(":", 1)[0]
        found = [d for d in validate_resource(document.resource) if d.severity == "error"]
        assert found, f"{document.resource.provenance.location}: accepted"
        assert expected_field in [d.field for d in found]


def test_meshagent_validate_accepts_the_valid_corpus_from_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from meshagent.agent.cli import main

    corpus = _corpus()
    paths = [str(corpus / d) for d in ("bookinfo", "config", "dataset")]

    code = main(["validate", "-q", *paths, str(corpus / "validation/destinationrule-valid.yaml")])

    assert (code, capsys.readouterr().out) == (0, "")


def test_meshagent_validate_rejects_the_invalid_destination_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from meshagent.agent.cli import main

    code = main(["validate", "-q", str(_corpus() / "validation/destinationrule-invalid.yaml")])

    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert all(line.count(": ") >= 3 and "DestinationRule/" in line for line in lines)


def test_every_dataset_kind_and_version_is_accepted() -> None:
    """One valid example of every Istio kind and version: none may be an error, including
    the kinds that are validated but not translated (EnvoyFilter, ProxyConfig, ...)."""
    files = sorted((_corpus() / "dataset").glob("*.yaml"))
    assert files
    for path in files:
        resources, problems = load_file(path)
        assert problems == [] and resources, path
        for resource in resources:
            found = [str(d) for d in validate_resource(resource) if d.severity == "error"]
            assert found == [], found
