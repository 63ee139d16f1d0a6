"""The running agent's analysis is incremental (agent/analysis_runtime.py): a check runs
again only when what it read changed, and the messages are always those of a whole
analysis of the same snapshot (issue 17: the agent's CPU per change at 10k services)."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from yaml import safe_load

from meshagent.adapters.yamldocs import load_documents
from meshagent.agent import analysis_runtime
from meshagent.agent.analysis_runtime import CONFIG_SOURCES, SNAPSHOT_CHECKS, AgentAnalysis
from meshagent.insight.analysis import Check, analyze
from meshagent.insight.context import AnalysisInput
from meshagent.insight.messages import Message
from meshagent.model.source import RawResource, SourceEvent
from meshagent.normalize.normalizer import Normalizer
from tests.unit.test_insight_analyze import CASES, SHOP, SHOP_V1, se, we


def _pool() -> list[str]:
    """Documents that give (and do not give) every message code, several versions of most
    names: upserting one of them adds, replaces or changes a resource."""
    docs = {text for positive, negative in CASES.values() for text in (*positive, *negative)}
    docs.update(
        we(f"w{i}", {"app": "shop", "version": f"v{i % 3}"}, f"10.0.0.{i}") for i in range(4)
    )
    docs.update(
        se(f"s{i}", f"s{i}.example.com", protocol=("HTTP", "TCP", None)[i % 3]) for i in range(3)
    )
    return sorted(docs)


def _load(text: str, line: int) -> RawResource:
    """The document of text, as if it started at line of mesh.yaml (documents move)."""
    resources, problems = load_documents("#\n" * line + text, "mesh.yaml", source="files")
    assert len(resources) == 1 and not problems, problems
    return resources[0]


def _whole(normalizer: Normalizer) -> list[Message]:
    documents = {}
    for source in CONFIG_SOURCES:
        documents.update(normalizer.accepted(source))
    inp = AnalysisInput(
        snapshot=normalizer.snapshot, documents=documents, references=normalizer.references()
    )
    return analyze(inp, SNAPSHOT_CHECKS)


@pytest.mark.parametrize("seed", range(30))
def test_incremental_messages_equal_a_whole_analysis_over_random_changes(seed: int) -> None:
    rng = random.Random(seed)
    pool = _pool()
    normalizer = Normalizer()
    analysis = AgentAnalysis(None, lambda: [])
    present: dict[tuple[str, str, str, str], RawResource] = {}
    seen_codes: set[str] = set()
    for step in range(60):
        upserts: list[RawResource] = []
        deletes: list[tuple[str, str, str, str]] = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if present and rng.random() < 0.3:
                key = rng.choice(sorted(present))
                deletes.append(key)
                present.pop(key)
            else:
                raw = _load(rng.choice(pool), rng.randrange(3))
                upserts = [u for u in upserts if u.key != raw.key] + [raw]
                deletes = [d for d in deletes if d != raw.key]
                present[raw.key] = raw
        normalizer.apply([SourceEvent("files", upserts=tuple(upserts), deletes=tuple(deletes))])
        if rng.random() < 0.3:
            continue  # some snapshots are not analyzed: the next analysis covers their changes
        analysis.run(normalizer.snapshot, normalizer)
        whole = _whole(normalizer)
        assert analysis.messages() == whole, (seed, step)
        seen_codes.update(m.code for m in whole)
    assert len(seen_codes) >= 5, seen_codes  # the sequences do exercise the checks


def test_a_workload_entry_change_reruns_only_the_checks_that_read_workloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given an analyzed mesh of ServiceEntries selecting WorkloadEntries
    calls: list[str] = []

    def counted(name: str, check: Check) -> Check:
        def run(inp: AnalysisInput) -> Iterable[Message]:
            calls.append(name)
            return check(inp)

        return run

    checks = tuple((name, counted(name, check)) for name, check in SNAPSHOT_CHECKS)
    monkeypatch.setattr(analysis_runtime, "SNAPSHOT_CHECKS", checks)
    normalizer = Normalizer()
    analysis = AgentAnalysis(None, lambda: [])
    docs = [SHOP, SHOP_V1, se("db", "db.example.com", 5432, protocol=None)]
    normalizer.apply([SourceEvent("files", upserts=tuple(_load(d, 0) for d in docs))])
    analysis.run(normalizer.snapshot, normalizer)
    assert len(calls) == len(SNAPSHOT_CHECKS)
    # when the WorkloadEntry's address changes
    calls.clear()
    moved = SHOP_V1.replace("10.0.0.1", "10.0.0.2")
    assert safe_load(moved)["spec"]["address"] == "10.0.0.2"
    normalizer.apply([SourceEvent("files", upserts=(_load(moved, 0),))])
    analysis.run(normalizer.snapshot, normalizer)
    # then the ServiceEntry checks keep their messages, and the messages are a whole analysis'
    assert "service_entry_protocols" not in calls and "unset_protocols" not in calls, calls
    assert "selectors" in calls and "subsets" in calls, calls
    assert analysis.messages() == _whole(normalizer)
    assert [m.code for m in analysis.messages()] == ["MA0002"]
