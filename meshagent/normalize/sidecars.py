"""Sidecars that rival each other: Istio applies one per namespace and selector."""

from __future__ import annotations

from collections.abc import Mapping

from meshagent.model.sidecar import Sidecar


def sidecar_conflict(mine: Sidecar, sidecars: Mapping[str, Sidecar]) -> tuple[str, str] | None:
    """(field path, reason) when another Sidecar of mine's namespace has the same selector
    (or, like mine, none): Istio uses one of them, the oldest, and its analyzers report the
    rest (IST0109, IST0110). Files carry no creation time, so here the first by name wins."""
    rivals = sorted(
        other.name
        for other in sidecars.values()
        if other.namespace == mine.namespace
        and other.name != mine.name
        and other.workload_selector == mine.workload_selector
    )
    if not rivals:
        return None
    what = "no workloadSelector" if mine.workload_selector is None else "the same workloadSelector"
    winner = min([*rivals, mine.name])
    outcome = (
        f"only {winner} (the first by name) applies, this one is ignored"
        if winner != mine.name
        else "this one (the first by name) applies, the others are ignored"
    )
    path = "spec" if mine.workload_selector is None else "spec.workloadSelector"
    return (
        path,
        f"Sidecars {', '.join(rivals)} in namespace {mine.namespace} also have {what}: {outcome}",
    )
