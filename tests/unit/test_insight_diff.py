"""`meshagent diff` offline: what candidate files change in this host's Envoy config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.insight.diff import diff_resources, field_changes
from tests.unit.test_insight_explain import HOST, ROUTE, RULE, SERVICE, mesh


@pytest.fixture(autouse=True)
def _no_default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHAGENT_CONFIG", raising=False)


def candidate(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "candidate"
    shutil.copytree(root, copy)
    return copy


def test_one_weight_edit_is_exactly_that_route_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = mesh(tmp_path, se=SERVICE, dr=RULE, vs=ROUTE)
    edited = candidate(root, tmp_path)
    text = (edited / "vs.yaml").read_text()
    (edited / "vs.yaml").write_text(
        text.replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30")
    )
    assert main(["diff", str(edited), "--against", str(root), "-o", "json"]) == 1
    [change] = json.loads(capsys.readouterr().out)
    assert (change["op"], change["type"], change["name"]) == ("~", "rds", "9080")
    clusters = (
        f"virtualHosts[{HOST}:9080].routes[1].route.weightedClusters.clusters"
        f"[outbound|9080|{{}}|{HOST}].weight"
    )
    assert [(f["path"], f["before"], f["after"]) for f in change["fields"]] == [
        (clusters.format("v1"), 80, 70),
        (clusters.format("v2"), 20, 30),
    ]
    assert main(["diff", str(edited), "--against", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("~ rds 9080\n") and ".weight: 80 -> 70" in out
    assert out.endswith("1 changed, 0 added, 0 removed\n")


def test_an_unchanged_tree_reports_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = mesh(tmp_path, se=SERVICE, dr=RULE, vs=ROUTE)
    assert main(["diff", str(candidate(root, tmp_path)), "--against", str(root)]) == 0
    assert capsys.readouterr().out == "no change\n"


def test_added_and_removed_resources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = mesh(tmp_path, se=SERVICE)
    edited = candidate(root, tmp_path)
    (edited / "dr.yaml").write_text(RULE)
    assert main(["diff", str(edited), "--against", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"+ cds outbound|9080|v1|{HOST}\n" in out and f"+ eds outbound|9080|v2|{HOST}\n" in out
    assert main(["diff", str(root), "--against", str(edited)]) == 1
    assert f"- cds outbound|9080|v1|{HOST}\n" in capsys.readouterr().out


def test_invalid_candidate_is_an_error_not_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = mesh(tmp_path, se=SERVICE)
    edited = candidate(root, tmp_path)
    (edited / "bad.yaml").write_text("kind: [\n")
    assert main(["diff", str(edited), "--against", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{edited}/bad.yaml:" in err and "nothing compared" in err
    assert main(["diff", str(tmp_path / "missing"), "--against", str(root)]) == 2


def test_named_lists_are_matched_by_name() -> None:
    before = {"routes": [{"name": "a", "w": 1}, {"name": "b", "w": 2}]}
    after = {"routes": [{"name": "b", "w": 2}, {"name": "a", "w": 1}, {"name": "c", "w": 3}]}
    paths = [(c.path, c.before, c.after) for c in field_changes(before, after)]
    assert paths == [
        ("routes[c]", None, {"name": "c", "w": 3}),
        ("routes (order)", ["a", "b"], ["b", "a", "c"]),
    ]
    same = {"cds": [{"name": "x", "version": "1", "resource": {"a": 1}}]}
    moved = {"cds": [{"name": "x", "version": "2", "resource": {"a": 1}}]}
    assert diff_resources(same, moved) == []  # versions are not config
