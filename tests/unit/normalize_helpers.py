"""Helpers for the normalizer tests: YAML in, resources and diagnostics out."""

from __future__ import annotations

from meshagent.adapters.yamldocs import load_documents
from meshagent.model.source import Diagnostic, RawResource, SourceEvent
from meshagent.normalize import validate_resource


def raw(text: str, path: str = "mesh.yaml") -> RawResource:
    """The single resource in text (which must load cleanly)."""
    resources, problems = load_documents(text, path)
    assert problems == [] and len(resources) == 1, problems
    return resources[0]


def diagnostics(text: str, path: str = "mesh.yaml") -> list[Diagnostic]:
    """validate_resource's diagnostics for the single resource in text."""
    return validate_resource(raw(text, path))


def errors(text: str, path: str = "mesh.yaml") -> list[tuple[str, str]]:
    """(location, field) of every error for the single resource in text."""
    return [(d.location, d.field) for d in diagnostics(text, path) if d.severity == "error"]


def warnings(text: str) -> list[str]:
    """The field of every warning for the single resource in text."""
    return [d.field for d in diagnostics(text) if d.severity == "warning"]


def upsert(*texts: str, path: str = "mesh.yaml") -> SourceEvent:
    """One files event upserting the resources of texts."""
    return SourceEvent("files", upserts=tuple(raw(t, path) for t in texts))


def delete(text: str) -> SourceEvent:
    """One files event deleting the resource of text."""
    return SourceEvent("files", deletes=(raw(text).key,))
