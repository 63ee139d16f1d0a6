"""The agent holds its first publish until the credentials source has listed (bounded), so
that a restart never publishes gateway servers without their credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent import daemon
from meshagent.agent.config import load_config
from meshagent.agent.daemon import Agent
from meshagent.model.source import SourceEvent
from tests.unit.test_daemon import (
    FakeNormalizer,
    FakeTranslator,
    QueueAdapter,
    raw,
    running,
    until,
    write_config,
)


def _agent(tmp_path: Path) -> tuple[Agent, QueueAdapter, QueueAdapter]:
    files, credentials = QueueAdapter(), QueueAdapter()
    credentials.name = "credentials"
    agent = Agent(
        load_config(write_config(tmp_path, "mesh")),
        adapter_factory=lambda _: [files, credentials],
        normalizer=FakeNormalizer(),
        translator=FakeTranslator(),
    )
    return agent, files, credentials


async def test_the_first_publish_waits_for_the_credentials_listing(tmp_path: Path) -> None:
    agent, files, credentials = _agent(tmp_path)

    async def body() -> None:
        await files.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        # once the snapshot is set, the processor has decided (it does not yield in between)
        await until(lambda: agent._snapshot is not None, "the files applied")
        assert agent.cache.get("vm-1")[0] == 0
        await credentials.events.put(SourceEvent("credentials", synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "the publish")

    await running(agent, body)


async def test_a_credentials_source_that_never_lists_holds_nothing_for_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "CREDENTIALS_WAIT_S", 0.3)
    agent, files, _ = _agent(tmp_path)

    async def body() -> None:
        await files.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "the publish after the wait")

    await running(agent, body)


def test_a_kubernetes_source_carries_credentials_when_it_watches_secrets() -> None:
    from meshagent.adapters.kubernetes import KubeOptions, KubernetesAdapter

    assert daemon.carries_credentials(KubernetesAdapter(KubeOptions(secret_namespaces=("gw",))))
    assert not daemon.carries_credentials(KubernetesAdapter(KubeOptions()))
    assert not daemon.carries_credentials(QueueAdapter())
