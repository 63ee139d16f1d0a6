"""The Agent's wiring with a fake normalizer and translator, real cache, ADS server and admin."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from meshagent.adapters.base import Adapter
from meshagent.adapters.files import FilesAdapter
from meshagent.agent.config import AgentConfig, load_config
from meshagent.agent.daemon import Agent
from meshagent.agent.opscli import admin_request
from meshagent.model.proxy import ProxySpec
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent
from meshagent.xds.resources import ResourceSet

DEADLINE_S = 10.0


def raw(name: str) -> RawResource:
    return RawResource(
        "files", "ServiceEntry", "v1", "default", name, {"n": name},
        Provenance("files", f"{name}.yaml:1", "ServiceEntry", "default", name),
    )  # fmt: skip


class FakeNormalizer:
    def __init__(self) -> None:
        self.keys: set[tuple[str, str, str, str]] = set()
        self.calls = 0

    def apply(self, events: Iterable[SourceEvent]) -> tuple[Any, list[Diagnostic]]:
        self.calls += 1
        diagnostics: list[Diagnostic] = []
        for event in events:
            self.keys.difference_update(event.deletes)
            self.keys.update(r.key for r in event.upserts)
            diagnostics.extend(event.errors)
        return frozenset(self.keys), diagnostics


class FakeTranslator:
    def __init__(self) -> None:
        self.fail = False

    def generate(self, snapshot: Any, proxy: ProxySpec) -> ResourceSet:
        if self.fail:
            raise RuntimeError("translator bug")
        return ResourceSet.build({})


class QueueAdapter:
    name = "files"

    def __init__(self) -> None:
        self.events: asyncio.Queue[SourceEvent] = asyncio.Queue()

    async def __aenter__(self) -> QueueAdapter:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def watch(self) -> AsyncIterator[SourceEvent]:
        while True:
            yield await self.events.get()


def yaml_loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
    return [raw(d["name"]) for d in yaml.safe_load_all(text) if d], []


def files_factory(config: AgentConfig) -> Sequence[Adapter]:
    assert config.sources.files is not None
    return [FilesAdapter(config.sources.files.paths, debounce_ms=20, poll_interval_ms=20,
                         loader=yaml_loader)]  # fmt: skip


def write_config(tmp_path: Path, mesh_dir: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"node: {{id: vm-1}}\nstate_dir: state\nadmin: {{port: 0}}\n"
        f"sources: {{files: {{paths: [{mesh_dir}]}}}}\n"
    )
    return path


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def running(agent: Agent, body: Callable[[], Awaitable[None]]) -> None:
    await agent.start()
    try:
        await body()
    finally:
        await asyncio.wait_for(agent.stop(), DEADLINE_S)


async def test_events_are_published_and_translator_bug_keeps_last_set(tmp_path: Path) -> None:
    adapter, normalizer, translator = QueueAdapter(), FakeNormalizer(), FakeTranslator()
    agent = Agent(
        load_config(write_config(tmp_path, "mesh")),
        adapter_factory=lambda _: [adapter],
        normalizer=normalizer,
        translator=translator,
    )

    async def body() -> None:
        assert agent.admin is not None
        status, text = await asyncio.to_thread(http_get, agent.admin.port, "/readyz")
        assert status == 503 and "source files has not synced" in text

        await adapter.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "first publish")
        assert agent.ready_reasons() == ["envoy vm-1 is not connected"]

        translator.fail = True
        bad = Diagnostic("error", "files", "b.yaml:2", "ServiceEntry", "b", "spec", "bad")
        await adapter.events.put(SourceEvent("files", upserts=(raw("b"),), errors=(bad,)))
        await until(lambda: agent.metrics.translate_failures._value.get() == 1, "failure")
        assert agent.cache.get("vm-1")[0] == 1
        status, body = await asyncio.to_thread(
            admin_request, agent.config.admin.socket, "/debug/config_errors"
        )
        assert status == 200 and "b.yaml:2" in body.decode()

    await running(agent, body)


async def test_sighup_reload_switches_file_paths(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a.yaml").write_text("name: a\n")
    (tmp_path / "two" / "b.yaml").write_text("name: b\n")
    config_path = write_config(tmp_path, "one")
    normalizer = FakeNormalizer()
    agent = Agent(
        load_config(config_path),
        adapter_factory=files_factory,
        normalizer=normalizer,
        translator=FakeTranslator(),
    )

    async def body() -> None:
        await until(lambda: {k[3] for k in normalizer.keys} == {"a"}, "files from one/")
        write_config(tmp_path, "two")
        await agent.reload()
        await until(lambda: {k[3] for k in normalizer.keys} == {"b"}, "files from two/ only")

    await running(agent, body)


class BlockingNormalizer(FakeNormalizer):
    """Holds its first apply until released, as a long 10k-service load would."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, events: Iterable[SourceEvent]) -> tuple[Any, list[Diagnostic]]:
        self.entered.set()
        # Never forever: with the work on the event loop's thread, nothing could release it.
        self.release.wait(DEADLINE_S)
        return super().apply(events)


async def test_a_long_normalization_does_not_stop_admin_or_ads(tmp_path: Path) -> None:
    adapter, normalizer = QueueAdapter(), BlockingNormalizer()
    agent = Agent(
        load_config(write_config(tmp_path, "mesh")),
        adapter_factory=lambda _: [adapter],
        normalizer=normalizer,
        translator=FakeTranslator(),
    )

    async def body() -> None:
        assert agent.admin is not None
        await adapter.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        await until(normalizer.entered.is_set, "the normalizer to start")
        # While it works, the admin server (on the same loop as the ADS server) answers.
        status, text = await asyncio.to_thread(http_get, agent.admin.port, "/readyz")
        released_in_time = not normalizer.release.is_set()
        normalizer.release.set()
        assert released_in_time and status == 503 and "no configuration published" in text
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "the publish after the load")

    await running(agent, body)
