"""Config errors are a current-state table: first seen, gone once fixed; reload failures count.

The table alone, then a real Agent (files adapter, normalizer, translator) on a temporary dir.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.agent.diagnostics import DiagnosticTable
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent
from tests.polling import async_wait_for

GOOD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: NAME, namespace: demo}
spec:
  hosts: [NAME.demo.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""
AGENT = "node: {id: vm-1}\nstate_dir: state\nadmin: {port: 0}\n"
AGENT += "sources: {files: {paths: [mesh], debounce_ms: 20ms, poll_interval_ms: 20ms}}\n"


def raw(name: str) -> RawResource:
    return RawResource(
        "files", "ServiceEntry", "v1", "demo", name, {}, Provenance("files", f"{name}.yaml:1"),
    )  # fmt: skip


def problem(name: str, field: str = "spec", location: str = "") -> Diagnostic:
    kind = "ServiceEntry" if name else ""
    return Diagnostic("error", "files", location or f"{name}.yaml:3", kind,
                      f"demo/{name}" if name else "", field, "bad")  # fmt: skip


def test_table_keeps_first_seen_and_clears_on_accept_delete_and_fix() -> None:
    now = [100.0]
    table = DiagnosticTable(clock=lambda: now[0])
    table.update([SourceEvent("files", upserts=(raw("a"), raw("b")))], [problem("a"), problem("b")])
    now[0] = 200.0
    # a is rewritten, still wrong at the same field: one entry, first seen kept.
    table.update([SourceEvent("files", upserts=(raw("a"),))], [problem("a")])
    assert [(e.diagnostic.name, e.first_seen, e.last_seen) for e in table.entries()] == [
        ("demo/b", 100.0, 100.0), ("demo/a", 100.0, 200.0)
    ]  # fmt: skip
    table.update([SourceEvent("files", upserts=(raw("a"),))], [])  # accepted
    table.update([SourceEvent("files", deletes=(raw("b").key,))], [])  # deleted
    assert table.entries() == []

    broken = problem("", "", "/m/c.yaml:4")
    table.update([SourceEvent("files", errors=(broken,))], [broken])
    table.update([SourceEvent("files", upserts=(raw("z"),))], [])  # other files: kept
    assert table.invalid_subjects() == {"files": 1}
    table.update([SourceEvent("files", fixed=("/m/c.yaml",))], [])
    assert table.entries() == [] and table.invalid_subjects() == {}


def test_platform_errors_clear_with_the_next_clean_event() -> None:
    table = DiagnosticTable()
    down = Diagnostic("error", "consul", "consul 127.0.0.1:8500", "", "", "", "refused")
    table.update([SourceEvent("consul", errors=(down,))], [down])
    table.update([SourceEvent("consul", errors=(down,))], [down])
    assert len(table.entries()) == 1
    table.update([SourceEvent("consul", upserts=())], [])
    assert table.entries() == []


def metric(agent: Agent, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    return value if value is not None else 0.0


def errors(agent: Agent) -> list[dict[str, Any]]:
    return list(agent.config_errors()["diagnostics"])


async def test_agent_shows_current_errors_until_fixed(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(GOOD.replace("NAME", "a"))
    (mesh / "b.yaml").write_text(GOOD.replace("NAME", "b").replace("STATIC", "STATICK"))
    config = tmp_path / "agent.yaml"
    config.write_text(AGENT)
    agent = Agent(load_config(config))
    await agent.start()
    try:
        # A rejected resource: one entry, located, with when it was first seen.
        found = await async_wait_for(lambda: errors(agent), what="b's error")
        assert [(d["name"], d["field"]) for d in found] == [("demo/b", "spec.resolution")]
        assert found[0]["first_seen"].endswith("Z")
        assert metric(agent, "meshagent_invalid_resources", source="files") == 1

        # A file that does not parse, broken twice: one entry, first seen kept.
        (mesh / "c.yaml").write_text("kind: [\n")
        await async_wait_for(lambda: len(errors(agent)) == 2, what="c's error")
        first = errors(agent)[1]["first_seen"]
        (mesh / "c.yaml").write_text("kind: [\n\n")
        await async_wait_for(lambda: errors(agent)[1]["location"].endswith(":3"), what="c again")
        assert len(errors(agent)) == 2 and errors(agent)[1]["first_seen"] == first

        # Fixed: both disappear, the gauge drops to 0.
        (mesh / "b.yaml").write_text(GOOD.replace("NAME", "b"))
        (mesh / "c.yaml").write_text(GOOD.replace("NAME", "c"))
        await async_wait_for(lambda: errors(agent) == [], what="errors cleared")
        assert metric(agent, "meshagent_invalid_resources", source="files") == 0

        # A refused reload: counted, shown, and gone after a good reload.
        config.write_text(AGENT + "outbound: {port_offset: 1}\noutbound: {port_offset: 2}\n")
        await agent.reload()
        assert metric(agent, "meshagent_config_reload_failures_total") == 1
        [refused] = errors(agent)
        assert "reload refused: duplicate key 'outbound'" in refused["message"]
        assert refused["location"] == f"{config}:6"  # the second `outbound`
        # Broken differently: one problem, the current one.
        config.write_text(AGENT + "outbound: {port_offset: x}\n")
        await agent.reload()
        [again] = errors(agent)
        assert "outbound.port_offset: reload refused: must be an integer" in again["message"]
        assert metric(agent, "meshagent_invalid_resources", source="agent-config") == 1
        config.write_text(AGENT)
        await agent.reload()
        assert errors(agent) == [] and metric(agent, "meshagent_config_reload_failures_total") == 2
        assert metric(agent, "meshagent_invalid_resources", source="agent-config") == 0
    finally:
        await asyncio.wait_for(agent.stop(), 10)


def test_status_command_and_page_show_errors_with_first_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.agent import opscli
    from meshagent.agent.cli import main
    from meshagent.agent.statuspage import render_html

    entry = {
        "severity": "error", "source": "files", "location": "/m/b.yaml:7", "kind": "ServiceEntry",
        "name": "demo/b", "field": "spec.resolution", "reason": "bad",
        "message": "/m/b.yaml:7: ServiceEntry/demo/b: spec.resolution: bad",
        "first_seen": "2026-12-06T12:00:00Z", "last_seen": "2026-12-06T12:05:00Z",
    }  # fmt: skip
    report = {
        "node": "vm-1", "not_ready": [], "sources": [], "certificates": [],
        "mesh": {"version": 1, "routes": [], "services": []}, "diagnostics": [entry],
        "xds": {"connected": False, "stream": None, "types": {}},
    }  # fmt: skip
    answer = json.dumps(report).encode()
    monkeypatch.setattr(opscli, "fetch_admin", lambda config, path, **_: answer)
    config = tmp_path / "agent.yaml"
    config.write_text("{}\n")
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "config errors: 1\n" in out
    assert f"  {entry['message']} (since 2026-12-06T12:00:00Z)\n" in out
    page = render_html(report)
    assert "2026-12-06T12:00:00Z" in page.split('id="errors"', 1)[1]


def test_reload_command_refuses_a_broken_config_before_signalling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.agent import opscli
    from meshagent.agent.cli import main

    def no_fetch(config: Any, path: str, **_: Any) -> bytes:
        raise AssertionError(f"the agent was asked to reload: {path}")

    monkeypatch.setattr(opscli, "fetch_admin", no_fetch)
    config = tmp_path / "agent.yaml"
    config.write_text("envoy: {drain_seconds: 1}\nenvoy: {drain_seconds: 2}\n")
    assert main(["reload", "-c", str(config)]) == 2
    assert capsys.readouterr().err == f"meshagent: {config}:2: duplicate key 'envoy'\n"


async def test_a_restarted_files_adapter_clears_errors_of_files_fixed_meanwhile(
    tmp_path: Path,
) -> None:
    """SIGHUP with new source settings restarts the adapter, which knows nothing of earlier
    errors: its first full listing decides which file errors still hold."""
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text("kind: [\n")
    (mesh / "b.yaml").write_text("kind: [\n")
    config = tmp_path / "agent.yaml"
    config.write_text(AGENT)
    agent = Agent(load_config(config))
    await agent.start()
    try:
        await async_wait_for(lambda: len(errors(agent)) == 2, what="two broken files")
        first_b = errors(agent)[1]["first_seen"]
        # An adapter too slow to notice the fix, then a fast one: only the restart can tell.
        config.write_text(AGENT.replace("poll_interval_ms: 20ms", "poll_interval_ms: 1m"))
        await agent.reload()  # sources changed: the files adapter restarts
        await async_wait_for(lambda: agent._sources["files"].seen_first, what="slow adapter")
        (mesh / "a.yaml").write_text(GOOD.replace("NAME", "a"))
        config.write_text(AGENT)
        await agent.reload()
        await async_wait_for(lambda: len(errors(agent)) == 1, what="a's error gone")
        [b] = errors(agent)
        assert b["location"].endswith("b.yaml:2") and b["first_seen"] == first_b
    finally:
        await asyncio.wait_for(agent.stop(), 10)
