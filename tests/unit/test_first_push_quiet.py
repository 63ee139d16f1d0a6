"""The analysis and the last-good save wait while Envoy applies the first push of a start
(issue 17): at 10k services they take a core for half a second that the push's later responses
and Envoy need more. The xDS status is set by hand here, as the ADS server sets it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshagent.agent import daemon
from meshagent.agent.lastgood import FILE_NAME
from meshagent.insight.context import AnalysisInput
from meshagent.xds import typeurls
from tests.unit.test_agent_analysis import SE, agent_for
from tests.unit.test_daemon import running, until

QUIET_S = 1.6  # past the analysis' quiet time (0.3 s) and the save's delay (1 s)


def _mesh(tmp_path: Path) -> None:
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "shop.yaml").write_text(SE)


async def test_analysis_and_save_wait_for_envoy_to_answer_the_first_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "ANALYSIS_INTERVAL_S", 0.0)
    _mesh(tmp_path)
    agent = agent_for(tmp_path)
    node = agent.proxy.node_id
    runs: list[int] = []
    real = agent.analysis.analyze

    def counted(captured: AnalysisInput) -> None:
        runs.append(captured.snapshot.version)
        real(captured)

    agent.analysis.analyze = counted  # type: ignore[method-assign]
    # given an Envoy connected before the first publish, which has not answered yet
    agent.cache.update_status(node, lambda s: s.with_connected("delta"))
    saved = tmp_path / "state" / FILE_NAME

    async def body() -> None:
        await until(lambda: agent.cache.get(node)[0] > 0, "the first publish")
        # then neither the analysis nor the save runs while the push is unanswered
        await asyncio.sleep(QUIET_S)
        assert runs == [] and not saved.exists()
        assert agent.ready_reasons()  # (and the agent is not ready)
        # when Envoy answers every response of the push
        version = agent.cache.get(node)[0]
        agent.cache.update_status(
            node,
            lambda s: (
                s.with_pushed(typeurls.CLUSTER, str(version), 1.0)
                .with_acked(typeurls.CLUSTER, str(version), 2.0)
                .with_settled(version)
            ),
        )
        # then both run
        await until(lambda: runs == [agent.snapshot.version], "the analysis")
        await until(saved.exists, "the last-good save")

    await running(agent, body)


async def test_without_an_envoy_connected_nothing_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "ANALYSIS_INTERVAL_S", 0.0)
    _mesh(tmp_path)
    agent = agent_for(tmp_path)
    saved = tmp_path / "state" / FILE_NAME

    async def body() -> None:
        await until(lambda: agent.analysis.report()["analyzed_at"] is not None, "the analysis")
        await until(saved.exists, "the last-good save")

    await running(agent, body)


async def test_an_envoy_that_never_answers_holds_them_back_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "ANALYSIS_INTERVAL_S", 0.0)
    monkeypatch.setattr(daemon, "FIRST_PUSH_WAIT_S", 0.5)
    _mesh(tmp_path)
    agent = agent_for(tmp_path)
    agent.cache.update_status(agent.proxy.node_id, lambda s: s.with_connected("delta"))
    saved = tmp_path / "state" / FILE_NAME

    async def body() -> None:
        await until(lambda: agent.analysis.report()["analyzed_at"] is not None, "the analysis")
        await until(saved.exists, "the last-good save")

    await running(agent, body)
