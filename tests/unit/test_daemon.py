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
from tests.polling import async_wait_for

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
    await async_wait_for(condition, timeout=DEADLINE_S, what=what)


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


class RecordingTranslator(FakeTranslator):
    """Keeps the ProxySpec of every translation."""

    def __init__(self) -> None:
        super().__init__()
        self.proxies: list[ProxySpec] = []

    def generate(self, snapshot: Any, proxy: ProxySpec) -> ResourceSet:
        self.proxies.append(proxy)
        return super().generate(snapshot, proxy)


async def test_sighup_reload_applies_what_the_readme_says(tmp_path: Path) -> None:
    """README, Agent configuration: a reload applies outbound and the translation's keys
    (workloads' ports, extension_providers...), and keeps node (it needs a restart)."""
    (tmp_path / "mesh").mkdir()
    config_path = write_config(tmp_path, "mesh")
    translator = RecordingTranslator()
    agent = Agent(
        load_config(config_path),
        adapter_factory=files_factory,
        translator=translator,
    )

    async def body() -> None:
        await until(lambda: bool(translator.proxies), "a first translation")
        with config_path.open("a") as f:
            f.write(
                "outbound: {port_offset: 10000}\n"
                "workloads: [{name: web, ports: [{port: 8080}]}]\n"
                "trust_domain_aliases: [old.example]\n"
            )
        config_path.write_text(config_path.read_text().replace("vm-1", "vm-2"))
        await agent.reload()
        await until(lambda: translator.proxies[-1].port_offset == 10000, "the reloaded proxy")
        proxy = translator.proxies[-1]
        assert [p.port for w in proxy.workloads for p in w.ports] == [8080]
        assert proxy.trust_domain_aliases == ("old.example",)
        assert proxy.node_id == "vm-1"  # node needs a restart
        assert agent.config.node.id == "vm-1"

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


# --- with the real files adapter and normalizer: a missing path, and a restart --------------

SE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
  endpoints: [{{address: 10.0.0.{ip}}}]
"""


def service_entry(name: str, ip: int = 1, resolution: str = "STATIC") -> str:
    return SE.format(name=name, ip=ip, resolution=resolution)


def real_agent(tmp_path: Path) -> Agent:
    """An agent with the real files adapter (polling fast) and the real normalizer."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        "node: {id: vm-1}\nstate_dir: state\nadmin: {port: 0}\n"
        "sources: {files: {paths: [mesh], debounce_ms: 20, poll_interval_ms: 20}}\n"
    )
    return Agent(load_config(path), translator=FakeTranslator())


def hosts(agent: Agent) -> dict[str, str]:
    """host -> the address of its first endpoint, as served."""
    snapshot = agent.snapshot
    return {h: snapshot.endpoints[h][0].address for h in snapshot.services}


async def test_missing_mesh_dir_keeps_serving_and_is_not_ready(tmp_path: Path) -> None:
    # given an agent serving two files of a mesh directory
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(service_entry("a"))
    (mesh / "b.yaml").write_text(service_entry("b"))
    agent = real_agent(tmp_path)

    async def body() -> None:
        assert agent.admin is not None
        await until(lambda: len(hosts(agent)) == 2, "both services")
        version = agent.snapshot.version
        # when the directory is renamed away (a tool about to replace it)
        mesh.rename(tmp_path / "mesh.old")
        reason = f"source files: {mesh} does not exist; its last good configuration keeps serving"
        await until(lambda: reason in agent.ready_reasons(), "the path named in /readyz")
        # then the last good config keeps serving, unchanged, and /readyz names the path
        assert hosts(agent) == {"a.example.com": "10.0.0.1", "b.example.com": "10.0.0.1"}
        assert agent.snapshot.version == version
        status, text = await asyncio.to_thread(http_get, agent.admin.port, "/readyz")
        assert status == 503 and str(mesh) in text
        # and when it comes back changed, it is diffed against what was served
        mesh.mkdir()
        (mesh / "a.yaml").write_text(service_entry("a", ip=2))
        await until(lambda: hosts(agent) == {"a.example.com": "10.0.0.2"}, "the new directory")
        assert reason not in agent.ready_reasons()
        # and its error is no longer a current problem
        assert not [e for e in agent.diagnostics.entries() if e.diagnostic.location == str(mesh)]

    await running(agent, body)


async def test_last_good_config_survives_a_restart(tmp_path: Path) -> None:
    # given an agent that served three files
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    for name in ("a", "b", "c"):
        (mesh / f"{name}.yaml").write_text(service_entry(name))
    first = real_agent(tmp_path)

    async def serve_all() -> None:
        await until(lambda: len(hosts(first)) == 3, "three services")
        state = tmp_path / "state" / "last-good.json"
        await until(lambda: state.exists() and "c.example.com" in state.read_text(), "saved")
        assert state.stat().st_mode & 0o777 == 0o600

    await running(first, serve_all)
    # when, while it is down, one file becomes invalid, one unparsable and one is deleted
    (mesh / "a.yaml").write_text(service_entry("a", ip=9, resolution="BOGUS"))
    (mesh / "b.yaml").write_text("kind: [unclosed\n")
    (mesh / "c.yaml").unlink()
    second = real_agent(tmp_path)

    async def after_restart() -> None:
        await until(lambda: "c.example.com" not in hosts(second), "c deleted")
        # then the invalid and the unparsable files serve their last good version
        assert hosts(second) == {"a.example.com": "10.0.0.1", "b.example.com": "10.0.0.1"}
        # and that is reported, located; the deleted file's resource is not brought back
        messages = [d["message"] for d in second.config_errors()["diagnostics"]]
        restored = [m for m in messages if "last good version saved before the restart" in m]
        assert sorted(m.split(":")[0] for m in restored) == [
            str(mesh / "a.yaml"),
            str(mesh / "b.yaml"),
        ]
        assert any("spec.resolution" in m for m in messages)
        assert second.ready_reasons() == ["envoy vm-1 is not connected"]
        # and once a file is fixed, it serves its new version
        (mesh / "b.yaml").write_text(service_entry("b", ip=3))
        await until(lambda: hosts(second).get("b.example.com") == "10.0.0.3", "b fixed")
        current = [str(e.diagnostic) for e in second.diagnostics.entries()]
        assert not [m for m in current if m.startswith(str(mesh / "b.yaml"))], current

    await running(second, after_restart)


async def test_sighup_to_a_missing_path_keeps_serving_and_is_not_ready(tmp_path: Path) -> None:
    # given an agent serving one/ (a typo in a reloaded config must not empty the mesh)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.yaml").write_text("name: a\n")
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
        write_config(tmp_path, "typo")
        await agent.reload()
        missing = f"{tmp_path / 'typo'} does not exist"
        await until(lambda: any(missing in r for r in agent.ready_reasons()), "typo named")
        assert {k[3] for k in normalizer.keys} == {"a"}
        # once the path exists, its contents replace what was served
        (tmp_path / "typo").mkdir()
        (tmp_path / "typo" / "b.yaml").write_text("name: b\n")
        await until(lambda: {k[3] for k in normalizer.keys} == {"b"}, "files from typo/ only")
        assert not any(missing in r for r in agent.ready_reasons())

    await running(agent, body)


async def test_sighup_keeps_what_a_broken_file_served(tmp_path: Path) -> None:
    # given an agent serving a.yaml, which then breaks
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "a.yaml").write_text(service_entry("a"))
    agent = real_agent(tmp_path)

    async def body() -> None:
        await until(lambda: len(hosts(agent)) == 1, "a served")
        (mesh / "a.yaml").write_text("kind: [unclosed\n")
        messages = lambda: [str(e.diagnostic) for e in agent.diagnostics.entries()]  # noqa: E731
        await until(lambda: any("YAML syntax" in m for m in messages()), "the error")
        # when a reload restarts the files source (its settings changed)
        config = tmp_path / "agent.yaml"
        config.write_text(config.read_text().replace("debounce_ms: 20", "debounce_ms: 30"))
        await agent.reload()
        await until(lambda: agent._sources["files"].complete, "the new adapter listed")
        # then what the broken file served still serves
        assert hosts(agent) == {"a.example.com": "10.0.0.1"}

    await running(agent, body)


async def test_a_listener_rejected_earlier_keeps_the_agent_not_ready_after_later_acks(
    tmp_path: Path,
) -> None:
    adapter = QueueAdapter()
    agent = Agent(
        load_config(write_config(tmp_path, "mesh")),
        adapter_factory=lambda _: [adapter],
        normalizer=FakeNormalizer(),
        translator=FakeTranslator(),
    )

    async def body() -> None:
        await adapter.events.put(SourceEvent("files", upserts=(raw("a"),), synced=True))
        await until(lambda: agent.cache.get("vm-1")[0] == 1, "first publish")
        error = "Error adding/updating listener(s) l2: cannot bind '127.0.0.1:81': in use"
        lds = "type.googleapis.com/envoy.config.listener.v3.Listener"
        agent.cache.update_status(
            "vm-1",
            lambda s: (
                s.with_connected("delta")
                .with_pushed(lds, "1", 1.0)
                .with_nacked(lds, "1", error, 1.1)
                .with_pushed(lds, "2", 2.0)
                .with_acked(lds, "2", 2.1)  # an ACK of other listeners, not of l2
                .with_rejected(lds, ("l2",))
                .with_settled(1)
            ),
        )
        [reason] = agent.ready_reasons()
        assert "has not applied lds l2" in reason and "cannot bind '127.0.0.1:81'" in reason

        agent.cache.update_status("vm-1", lambda s: s.with_rejected(lds, ()))
        assert agent.ready_reasons() == []

    await running(agent, body)
