"""The running agent's analysis: /debug/analyze on the admin socket, the gauge per code, the
status page section; re-run only when the snapshot changes, schema messages at once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from meshagent.agent import daemon
from meshagent.agent.cli import main
from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.agent.opscli import admin_request
from meshagent.agent.statuspage import render_html
from meshagent.insight.context import AnalysisInput
from tests.unit.test_daemon import FakeTranslator, running, until

SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: [shop.example.com]
  http:
  - route:
    - destination: {{host: {host}}}
"""


def agent_for(tmp_path: Path) -> Agent:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "node: {id: vm-1}\nstate_dir: state\n"
        f"admin: {{port: 0, socket: {tmp_path}/admin.sock}}\n"
        "sources: {files: {paths: [mesh], debounce_ms: 20, poll_interval_ms: 20}}\n"
    )
    return Agent(load_config(path), translator=FakeTranslator())


def codes(agent: Agent) -> list[str]:
    return [m["code"] for m in agent.analysis.report()["messages"]]


def gauge(agent: Agent, code: str, level: str) -> float:
    text = agent.metrics.exposition().decode()
    found = re.search(
        rf'^meshagent_analysis_messages\{{code="{code}",level="{level}"\}} (\S+)$', text, re.M
    )
    assert found is not None, text
    return float(found.group(1))


async def test_the_agent_serves_the_analysis_and_follows_changes(tmp_path: Path) -> None:
    # given an agent whose VirtualService routes to a host no service declares
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "shop.yaml").write_text(SE + "---\n" + VS.format(host="nope.example.com"))
    agent = agent_for(tmp_path)
    runs: list[int] = []
    real = agent.analysis.analyze

    def counted(captured: AnalysisInput) -> None:
        runs.append(captured.snapshot.version)
        real(captured)

    agent.analysis.analyze = counted  # type: ignore[method-assign]

    async def body() -> None:
        await until(lambda: "IST0101" in codes(agent), "the IST0101 message")
        # then /debug/analyze on the admin socket has istioctl's fields and file:line
        status, raw = await asyncio.to_thread(
            admin_request, tmp_path / "admin.sock", "/debug/analyze"
        )
        report = json.loads(raw)
        (message,) = report["messages"]
        assert status == 200 and report["counts"] == {"Error": 1, "Warning": 0, "Info": 0}
        assert message["origin"] == "VirtualService default/shop"
        assert message["reference"] == f"{mesh / 'shop.yaml'}:{len(SE.splitlines()) + 9}"
        # and the gauge counts it, every other code at 0
        assert gauge(agent, "IST0101", "Error") == 1
        assert gauge(agent, "IST0173", "Error") == 0
        # and `meshagent analyze --agent` and `meshagent status` show it
        args = ["--config", str(tmp_path / "agent.yaml")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(main, ["analyze", *args, "--agent", "-o", "json"])
        assert code == 79 and json.loads(out.getvalue())[0]["message"] == message["message"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            await asyncio.to_thread(main, ["status", *args])
        assert "analysis: 1 error (meshagent analyze --agent)" in out.getvalue()
        # and the status page shows it
        html = render_html(agent.status_report())
        assert 'id="analysis"' in html and "IST0101" in html and "nope.example.com" in html
        # when an edit is rejected (the snapshot does not change), its schema error shows at
        # once, without a new analysis of the snapshot
        version, done = agent.snapshot.version, len(runs)
        (mesh / "bad.yaml").write_text(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: d, namespace: default}\nspec: {subsets: [{name: v1}]}\n"
        )
        await until(lambda: "IST0106" in codes(agent), "the IST0106 message")
        assert agent.snapshot.version == version and len(runs) == done
        assert gauge(agent, "IST0106", "Error") == 1
        # when both are fixed, the messages and the gauge go back to nothing
        (mesh / "bad.yaml").unlink()
        (mesh / "shop.yaml").write_text(SE + "---\n" + VS.format(host="shop.example.com"))
        await until(lambda: codes(agent) == [], "no messages")
        assert gauge(agent, "IST0101", "Error") == 0
        # each snapshot analyzed once at most, and the last one analyzed
        assert runs == sorted(set(runs)) and runs[-1] == agent.snapshot.version

    await running(agent, body)


async def test_a_burst_of_changes_is_analyzed_once_after_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (an interval far longer than the burst takes, so that the count does not depend on load)
    monkeypatch.setattr(daemon, "ANALYSIS_INTERVAL_S", 3.0)
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "shop.yaml").write_text(SE)
    agent = agent_for(tmp_path)
    runs: list[int] = []
    real = agent.analysis.analyze

    def counted(captured: AnalysisInput) -> None:
        runs.append(captured.snapshot.version)
        real(captured)

    agent.analysis.analyze = counted  # type: ignore[method-assign]

    async def body() -> None:
        await until(lambda: len(runs) == 1, "the first analysis")
        # when four changes are applied one after the other, right after it
        for n in range(4):
            version = agent.snapshot.version
            (mesh / "shop.yaml").write_text(SE.replace("10.0.0.1", f"10.0.1.{n}"))
            await until(lambda v=version: agent.snapshot.version > v, f"change {n}")
        last = agent.snapshot.version
        # then the latest snapshot is analyzed, once, after the interval
        await until(lambda: runs[-1] == last, "the last snapshot analyzed")
        assert len(runs) == 2, runs

    await running(agent, body)


async def test_the_analysis_waits_for_a_quiet_moment_after_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (no interval: only the wait for a quiet moment can hold the analysis back)
    monkeypatch.setattr(daemon, "ANALYSIS_INTERVAL_S", 0.0)
    monkeypatch.setattr(daemon, "ANALYSIS_QUIET_S", 1.0)
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "shop.yaml").write_text(SE)
    agent = agent_for(tmp_path)
    runs: list[tuple[int, float]] = []  # (version, loop time of the start)
    real = agent.analysis.analyze
    loop = asyncio.get_running_loop()

    def timed(captured: AnalysisInput) -> None:  # (in a worker thread: the loop's clock)
        runs.append((captured.snapshot.version, loop.time()))
        real(captured)

    agent.analysis.analyze = timed  # type: ignore[method-assign]

    async def body() -> None:
        await until(lambda: len(runs) == 1, "the first analysis")
        version = agent.snapshot.version
        (mesh / "shop.yaml").write_text(SE.replace("10.0.0.1", "10.0.1.1"))
        await until(lambda: agent.snapshot.version > version, "the change")
        seen = loop.time()  # (a poll after the change was applied)
        await until(lambda: runs[-1][0] == agent.snapshot.version, "the change analyzed")
        # then the analysis of the change started once the mesh was quiet, not with the publish
        assert runs[-1][1] - seen >= 0.5, (runs, seen)

    await running(agent, body)


def test_consul_objects_are_analyzed_with_the_files_that_name_them() -> None:
    from meshagent.agent.analysis_runtime import AgentAnalysis
    from meshagent.model.source import SourceEvent
    from meshagent.normalize.normalizer import Normalizer
    from tests.unit.normalize_helpers import raw as yaml_raw
    from tests.unit.test_consul_normalize import entry, instance, service

    # given a Consul service with a resolver and a router, and a file routing to a subset
    # the resolver does not define
    consul = SourceEvent(
        "consul",
        upserts=(
            service("web", [instance("web-1", meta={"version": "v1"})]),
            entry({"Kind": "service-resolver", "Name": "web", "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"},
                "v2": {"Filter": "Service.Meta.version == v2"}}}),
            entry({"Kind": "service-router", "Name": "web", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/a"}},
                 "Destination": {"ServiceSubset": "v1"}}]}),
        ),
    )  # fmt: skip
    vs = yaml_raw(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: front, namespace: default}\nspec:\n  hosts: [front.example.com]\n"
        "  http:\n  - route:\n    - destination: {host: web.service.consul, subset: v9}\n"
    )
    normalizer = Normalizer()
    snapshot, _ = normalizer.apply([consul, SourceEvent("files", upserts=(vs,))])
    analysis = AgentAnalysis(None, lambda: [])
    analysis.run(snapshot, normalizer)
    # then the analysis runs over both: the missing subset, the resolver's empty subset
    found = [(m["code"], m["origin"], m["field"]) for m in analysis.report()["messages"]]
    assert found == [
        ("IST0173", "ConsulConfigEntry service-resolver/web", "Subsets.v2"),
        ("IST0101", "VirtualService default/front", "spec.http[0].route[0].destination.subset"),
    ], found
