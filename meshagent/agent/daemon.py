"""The Agent: sources -> normalizer -> translator -> xDS cache, plus admin, ADS and Envoy.

One asyncio task per source pumps SourceEvents into a queue; one processing task drains the
whole queue, applies it to the normalizer, translates once, and publishes the ResourceSet for
the local node. Bad input is reported, never fatal; a translator exception is a bug that is
logged while the previous ResourceSet keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from meshagent.adapters.base import Adapter
from meshagent.adapters.files import FilesAdapter
from meshagent.agent.admin import AdminServer, standard_pages
from meshagent.agent.config import AgentConfig, load_config
from meshagent.agent.convergence import ConvergenceObserver, ConvergenceTracker
from meshagent.agent.envoy import EnvoySupervisor, bootstrap_for
from meshagent.agent.logs import configure_logging
from meshagent.agent.metrics import AgentMetrics
from meshagent.agent.opspages import install_ops_pages
from meshagent.agent.publishing import NackExplainer
from meshagent.agent.sdnotify import SystemdNotifier
from meshagent.errors import MeshAgentError
from meshagent.gcpause import paused_gc
from meshagent.model.identity import WorkloadCertificate
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, SourceEvent
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.consistency import ConsistencyChecker, Inconsistency
from meshagent.xds.resources import ResourceSet
from meshagent.xds.typeurls import SHORT_NAMES

log = structlog.get_logger("meshagent.agent")

Key = tuple[str, str, str, str]
_T = TypeVar("_T")
MAX_KEPT_DIAGNOSTICS = 1000
SOURCE_RETRY_MAX_S = 30.0


def build_adapters(config: AgentConfig) -> list[Adapter]:
    """The adapters the config turns on."""
    adapters: list[Adapter] = []
    files = config.sources.files
    if files is not None:
        adapters.append(
            FilesAdapter(
                files.paths,
                debounce_ms=files.debounce_ms,
                poll_interval_ms=files.poll_interval_ms,
            )
        )
    if config.sources.consul is not None:
        from meshagent.adapters.consul import ConsulAdapter

        adapters.append(ConsulAdapter(config.sources.consul.options))
    if config.sources.kubernetes is not None:
        from meshagent.adapters.kubernetes import KubernetesAdapter

        adapters.append(KubernetesAdapter(config.sources.kubernetes.options))
    return adapters


class NormalizerLike(Protocol):
    """What the agent needs of the normalizer."""

    def apply(self, events: Iterable[SourceEvent]) -> tuple[Any, list[Diagnostic]]: ...


class TranslatorLike(Protocol):
    """What the agent needs of the translator."""

    def generate(self, snapshot: Any, proxy: ProxySpec) -> ResourceSet: ...


def _default_normalizer(config: AgentConfig) -> NormalizerLike:
    from meshagent.normalize.normalizer import Normalizer

    return Normalizer(
        domain_suffix=config.domain_suffix,
        default_namespace=config.node.namespace,
        root_namespace=config.root_namespace,
        consul=config.sources.consul.mapping if config.sources.consul else None,
        kubernetes=config.sources.kubernetes.mapping if config.sources.kubernetes else None,
    )


def _default_translator() -> TranslatorLike:
    from meshagent.xds.translate import Translator

    return Translator()


@dataclasses.dataclass(slots=True)
class _Source:
    adapter: Adapter
    generation: int
    task: asyncio.Task[None] | None = None
    synced: bool = False
    seen_first: bool = False


class Agent:
    """The daemon. `start()`, then `stop()`; or `run()`, which does both around the signals.

    adapter_factory builds the adapters from a config (tests pass fakes).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        metrics: AgentMetrics | None = None,
        adapter_factory: Callable[[AgentConfig], Sequence[Adapter]] = build_adapters,
        normalizer: NormalizerLike | None = None,
        translator: TranslatorLike | None = None,
        envoy_output: Any = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self.cache = SnapshotCache()
        self.consistency = ConsistencyChecker()
        self._inconsistent: tuple[Inconsistency, ...] = ()  # why the last set was not published
        self._nacks = NackExplainer()
        self.normalizer = normalizer or _default_normalizer(config)
        self.translator = translator or _default_translator()
        self.admin: AdminServer | None = None
        self.envoy: EnvoySupervisor | None = None
        self._adapter_factory = adapter_factory
        self._envoy_output = envoy_output
        self._ads: Any = None
        self._proxy = config.proxy_spec()
        self._queue: asyncio.Queue[tuple[str, int, SourceEvent]] = asyncio.Queue()
        self._sources: dict[str, _Source] = {}
        self._known: dict[str, set[Key]] = {}
        self._generation = 0
        self._snapshot: Any = None
        self._published = False
        self._diagnostics: deque[Diagnostic] = deque(maxlen=MAX_KEPT_DIAGNOSTICS)
        self._custom_problems: set[tuple[str, str]] = set()  # (workload, reason), logged once
        self._custom_checked: tuple[object, ...] = ()  # what _custom_problems was found from
        self._processor: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.ca: Any = None  # CaRuntime when `ca:` is configured
        self.consul_registrar: Any = None  # ConsulRegistrar when sources.consul.register
        self.workload_entry: Any = None  # WorkloadEntryRegistrar when join.workload_group
        self.notifier = SystemdNotifier.from_environment()  # inert outside systemd
        self._notify_task: asyncio.Task[None] | None = None
        self.convergence = ConvergenceTracker(
            self.metrics, lambda: self.cache.status(self._proxy.node_id)
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start admin, ADS, the sources and (when managed) Envoy."""
        from meshagent.xds.server import AdsServer

        cfg = self.config
        self.admin = AdminServer(
            cfg.admin.address, cfg.admin.port, self._pages(), socket_path=cfg.admin.socket
        )
        install_ops_pages(self.admin, self)
        await self.admin.start()
        cfg.xds.uds.parent.mkdir(parents=True, exist_ok=True)
        observer = ConvergenceObserver(self.metrics, self.convergence, self._nacked)
        self._ads = AdsServer(self.cache, observer)
        tcp = f"{cfg.xds.tcp[0]}:{cfg.xds.tcp[1]}" if cfg.xds.tcp else None
        await self._ads.start(uds_path=str(cfg.xds.uds), tcp_address=tcp)
        if cfg.ca is not None:  # before the first publish, so that it carries the certificates
            from meshagent.agent.security import CaRuntime

            self.ca = CaRuntime(cfg, self.metrics, self._certificates_rotated)
            await self.ca.start()
        self._processor = asyncio.create_task(self._process_loop(), name="agent-processor")
        for adapter in self._adapter_factory(cfg):
            self._start_source(adapter)
        self._start_consul_registration()
        if cfg.join is not None:  # `join.workload_group`: this VM's WorkloadEntry
            from meshagent.agent.join_runtime import start_workload_entry

            self.workload_entry = await start_workload_entry(cfg)
        if cfg.envoy.manage:
            self.envoy = EnvoySupervisor(
                cfg.envoy, bootstrap_for(cfg), cfg.state_dir, output=self._envoy_output
            )
            await self.envoy.start()

    async def stop(self) -> None:
        """Stop sources, Envoy, the ADS server and admin, in that order; safe to call twice."""
        self._stop.set()
        if self._notify_task is not None:
            self.notifier.stopping()
            await _cancel(self._notify_task)
            self._notify_task = None
        if self.consul_registrar is not None:  # first, while /readyz still answers
            await self.consul_registrar.stop()
            self.consul_registrar = None
        if self.workload_entry is not None:  # disconnected now, deleted after the grace
            await self.workload_entry.stop()
            self.workload_entry = None
        for source in list(self._sources.values()):
            await _cancel(source.task)
        self._sources.clear()
        await _cancel(self._processor)
        for task in list(self._background):
            await _cancel(task)
        if self.ca is not None:
            await self.ca.stop()
            self.ca = None
        if self.envoy is not None:
            await self.envoy.stop()
            self.envoy = None
        if self._ads is not None:
            await self._ads.stop()
            self._ads = None
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        log.info("agent_stopped")

    def _start_consul_registration(self) -> None:
        consul, cfg = self.config.sources.consul, self.config
        if consul is None or not consul.register.enabled or not cfg.workloads:
            return
        from meshagent.adapters.consul import TokenFile
        from meshagent.agent.consul_register import ConsulRegistrar, registration_body

        port = self.admin.port if self.admin is not None else cfg.admin.port
        check = f"http://{cfg.admin.address}:{port}/readyz"
        bodies = [
            registration_body(w, cfg.node.id, consul.register.address, check) for w in cfg.workloads
        ]
        token = TokenFile(consul.options.token_file)
        self.consul_registrar = ConsulRegistrar(consul.options, token, bodies)
        self.consul_registrar.start()

    @property
    def snapshot(self) -> MeshSnapshot:
        """The mesh as last normalized (empty before the first source event)."""
        return self._snapshot if self._snapshot is not None else MeshSnapshot()

    def request_stop(self) -> None:
        """Ask run() to return (signal handlers call this)."""
        self._stop.set()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop; the exit code."""
        loop = asyncio.get_running_loop()
        try:
            await self.start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._reload_in_background)
            log.info("agent_started", proxy=self.config.node.id)
            self._notify_task = asyncio.create_task(
                self.notifier.run(self.ready_reasons, self._healthy), name="agent-sd-notify"
            )
            await self._stop.wait()
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()

    # --- sources ------------------------------------------------------------------------

    def _start_source(self, adapter: Adapter) -> None:
        self._generation += 1
        source = _Source(adapter, self._generation)
        self._sources[adapter.name] = source
        self.metrics.source_synced.labels(source=adapter.name).set(0)
        source.task = asyncio.create_task(self._pump(source), name=f"source-{adapter.name}")

    async def _pump(self, source: _Source) -> None:
        """Feed the queue from one adapter; restart it with backoff when it fails."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                async with source.adapter:
                    async for event in source.adapter.watch():
                        await self._queue.put((source.adapter.name, source.generation, event))
                        delay = 1.0
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("source_failed", source=source.adapter.name, retry_in_s=delay)
                self.metrics.source_restarts.labels(source=source.adapter.name).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, SOURCE_RETRY_MAX_S)

    async def _restart_source(self, adapter: Adapter) -> None:
        old = self._sources.pop(adapter.name, None)
        if old is not None:
            await _cancel(old.task)
        self._start_source(adapter)

    # --- processing ---------------------------------------------------------------------

    async def _process_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():  # coalesce a burst into one translation
                batch.append(self._queue.get_nowait())
            events = [e for e in (self._admit(*item) for item in batch) if e is not None]
            if events:
                await self._apply(events)

    def _admit(self, name: str, generation: int, event: SourceEvent) -> SourceEvent | None:
        """Drop events of replaced adapters; complete a restarted adapter's first listing."""
        source = self._sources.get(name)
        if source is None or source.generation != generation:
            return None
        known = self._known.setdefault(event.source, set())
        if not source.seen_first:
            # A new adapter (first start or SIGHUP) lists everything it has: whatever the
            # previous one had and this one lacks is gone.
            source.seen_first = True
            listed = {r.key for r in event.upserts}
            stale = tuple(k for k in sorted(known - listed) if k not in event.deletes)
            event = dataclasses.replace(event, deletes=(*event.deletes, *stale))
        known.difference_update(event.deletes)
        known.update(r.key for r in event.upserts)
        if event.synced and not source.synced:
            source.synced = True
            self.metrics.source_synced.labels(source=name).set(1)
            log.info("source_synced", source=name, resources=len(known))
        return event

    async def _apply(self, events: list[SourceEvent]) -> None:
        self.convergence.changed()
        try:
            # In a worker thread, as translation is: a 10k-service load takes seconds, and
            # the ADS streams and the admin pages must keep being served meanwhile. Only
            # this task calls the normalizer, so it is never used from two threads at once.
            snapshot, diagnostics = await asyncio.to_thread(
                _gc_paused, self.normalizer.apply, events
            )
        except Exception:
            log.exception("normalize_failed_bug", sources=sorted({e.source for e in events}))
            return
        self._snapshot = snapshot
        self._report(diagnostics)
        await self._publish()

    def _report(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.metrics.count_diagnostics(diagnostics)
        for d in diagnostics:
            self._diagnostics.append(d)
            emit = log.error if d.severity == "error" else log.warning
            emit(
                "config_" + d.severity,
                source=d.source,
                location=d.location,
                kind=d.kind,
                name=d.name,
                field=d.field,
                reason=d.reason,
            )

    async def _publish(self) -> None:
        """Translate the current snapshot for the local proxy and hand it to the cache.

        The translation runs in a worker thread; the lock keeps the translator to one
        thread and the publishes in order (sources, reloads and certificate rotations).
        """
        async with self._publish_lock:
            if self._snapshot is None:
                return
            snapshot, proxy = self._snapshot, self._proxy
            try:
                resources = await asyncio.to_thread(
                    _gc_paused, self.translator.generate, snapshot, proxy
                )
            except Exception:
                self.metrics.translate_failures.inc()
                log.exception("translate_failed_bug", proxy=proxy.node_id)
                return  # the previous ResourceSet keeps serving
            if await self._consistent(resources):  # else the last consistent set keeps serving
                self._serve(resources)

    def _serve(self, resources: ResourceSet) -> None:
        """Hand a translated ResourceSet to the cache (on the event loop's thread)."""
        previous = self.cache.get(self._proxy.node_id)[0]
        version = self.cache.set(self._proxy.node_id, resources)
        self.convergence.published(pushes=version != previous)
        self._published = True
        self._warn_unservable_custom_policies()
        self.metrics.snapshot_version.set(getattr(self._snapshot, "version", 0))
        counts = {t: len(resources.of(t)) for t in SHORT_NAMES}
        self.metrics.set_resources(counts)
        log.info(
            "snapshot_published",
            proxy=self._proxy.node_id,
            version=version,
            **{SHORT_NAMES[t]: n for t, n in counts.items()},
        )

    async def _consistent(self, resources: ResourceSet) -> bool:
        """Check resources before publishing (in a worker thread, as translation); report
        each new set of problems once. A bug in the check does not hold configuration back."""
        from meshagent.agent.publishing import inconsistency_diagnostics

        try:
            found = tuple(await asyncio.to_thread(self.consistency.check, resources))
        except Exception:
            log.exception("consistency_check_failed_bug", proxy=self._proxy.node_id)
            return True
        if found:
            self.convergence.published(pushes=False)
        if found and found != self._inconsistent:
            self._report(inconsistency_diagnostics(found, self.snapshot, self._proxy))
        self._inconsistent = found
        return not found

    def _nacked(self, node: str, type_url: str, version: str, error: str) -> None:
        """Envoy rejected a response: report it as an error naming the files responsible."""
        if node != self._proxy.node_id:
            return
        args = (type_url, version, error, self.served_resources(), self.snapshot, self._proxy)
        try:  # called from the ADS stream: a bug here must not end it
            self._report([self._nacks.diagnostic(*args)])
        except Exception:
            log.exception("nack_attribution_failed_bug", proxy=node, type_url=type_url)

    def _blame(self, type_url: str, version: str, error: str) -> str:
        """ " (from <files>)" for a NACK, or "" when its resources are not known."""
        args = (type_url, version, error, self.served_resources(), self.snapshot, self._proxy)
        try:
            origins = self._nacks.explain(*args)[1]
        except Exception:  # readiness must answer whatever attribution does
            log.exception("nack_attribution_failed_bug", type_url=type_url)
            return ""
        return f" (from {'; '.join(origins)})" if origins else ""

    def _warn_unservable_custom_policies(self) -> None:
        """Log once when CUSTOM AuthorizationPolicies cannot reach an authorizer, so their
        rules deny what they match (their provider is not in extension_providers, is invalid
        or not a mesh service, or they name several)."""
        from meshagent.xds.translate.ext_authz import provider_problem
        from meshagent.xds.translate.inbound import authz_policies

        if self._snapshot is None or not self._proxy.workloads:
            return
        snapshot = self._snapshot
        key = (snapshot.authorization_policies, snapshot.services, self._proxy)
        old = self._custom_checked
        if len(old) == len(key) and all(a is b for a, b in zip(key, old, strict=True)):
            return  # most publishes change none of them
        self._custom_checked = key
        problems = set()
        for w in self._proxy.workloads:
            policies = authz_policies(snapshot, self._proxy, w)
            reason = provider_problem(snapshot, self._proxy, policies)
            if reason:
                problems.add((f"{w.namespace}/{w.name}", reason))
        for workload, reason in sorted(problems - self._custom_problems):
            log.warning("authz_custom_rules_deny", workload=workload, reason=reason)
        invalid = {(f"provider:{p.name}", p.problem) for p in self._proxy.extension_providers}
        for provider, reason in sorted(i for i in invalid - self._custom_problems if i[1]):
            log.warning("extension_provider_invalid", provider=provider[9:], reason=reason)
        self._custom_problems = problems | invalid

    # --- reload -------------------------------------------------------------------------

    def _reload_in_background(self) -> None:
        self._spawn(self.reload())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work as a task of its own, kept until it ends (stop() cancels what is left)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._background.discard)

    async def reload(self) -> None:
        """SIGHUP: re-read the config file and apply what can change without a restart.

        Live: log level and format, sources (restarted with the new settings), outbound ports,
        capture and outbound_traffic_policy.
        Everything else is logged as needing a restart.
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                await self._reload()
            finally:
                self.notifier.reloaded()

    async def _reload(self) -> None:
        old, path = self.config, self.config.path
        if path is None:
            log.warning("config_reload_skipped", reason="no config file")
            return
        try:
            new = await asyncio.to_thread(load_config, path)
        except MeshAgentError as exc:
            log.error("config_reload_failed", path=str(path), error=str(exc))
            return
        if new.log != old.log:
            configure_logging(new.log.level, new.log.format)
        self.config = dataclasses.replace(
            old,
            log=new.log,
            sources=new.sources,
            outbound=new.outbound,
            capture=new.capture,
            outbound_traffic_policy=new.outbound_traffic_policy,
        )
        if new.sources != old.sources:
            for adapter in self._adapter_factory(self.config):
                await self._restart_source(adapter)
        proxy = dataclasses.replace(new.proxy_spec(), certificates=self._proxy.certificates)
        if proxy != self._proxy:
            self._proxy = proxy
            await self._publish()
        fixed = [
            f
            for f in ("node", "domain_suffix", "xds", "admin", "envoy", "state_dir", "ca")
            if getattr(new, f) != getattr(old, f)
        ]
        if fixed:
            log.warning("config_change_needs_restart", fields=fixed)
        log.info("config_reloaded", path=str(path))

    def _certificates_rotated(self, certificates: tuple[WorkloadCertificate, ...]) -> None:
        """The CA's callback: serve the new certificates (SDS) through a re-translation."""
        self._proxy = dataclasses.replace(self._proxy, certificates=certificates)
        self._spawn(self._publish())

    def _healthy(self) -> bool:
        """The systemd watchdog's view: the processing task is alive."""
        return self._processor is not None and not self._processor.done()

    # --- admin --------------------------------------------------------------------------

    def _pages(self) -> dict[str, Any]:
        return standard_pages(
            ready_reasons=self.ready_reasons,
            metrics=self.metrics.exposition,
            config_errors=self.config_errors,
        )

    def reload_in_background(self) -> None:
        """Start a reload (as SIGHUP does) without waiting for it."""
        self._reload_in_background()

    def served_resources(self) -> ResourceSet:
        """What the cache serves the local Envoy now."""
        return self.cache.get(self._proxy.node_id)[1]

    def status_report(self) -> dict[str, Any]:
        """Sources, mesh, certificates, Envoy's xDS state and diagnostics (/debug/status)."""
        from meshagent.agent import statuspage

        return {
            "node": self._proxy.node_id,
            "not_ready": self.ready_reasons(),
            "sources": [{"name": n, "synced": s.synced} for n, s in sorted(self._sources.items())],
            "mesh": statuspage.mesh_report(self._snapshot),
            "certificates": statuspage.certificates_report(
                getattr(self._proxy, "certificates", ())
            ),
            "xds": statuspage.xds_report(self.cache.status(self._proxy.node_id)),
            "diagnostics": self.config_errors()["diagnostics"][-50:],
        }

    def config_errors(self) -> dict[str, Any]:
        """/debug/config_errors: the most recent diagnostics, oldest first."""
        return {
            "diagnostics": [{**dataclasses.asdict(d), "message": str(d)} for d in self._diagnostics]
        }

    def ready_reasons(self) -> list[str]:
        """Why the agent is not ready; [] when every source synced and Envoy ACKed all."""
        reasons = [f"source {n} has not synced" for n, s in self._sources.items() if not s.synced]
        if not self._published:
            reasons.append("no configuration published yet")
        reasons += [f"configuration not published: {p.reason}" for p in self._inconsistent[:5]]
        if len(self._inconsistent) > 5:
            reasons.append(f"configuration not published: and {len(self._inconsistent) - 5} more")
        node = self._proxy.node_id
        status = self.cache.status(node)
        if not status.connected:
            return [*reasons, f"envoy {node} is not connected"]
        for type_url, st in sorted(status.types.items()):
            kind = SHORT_NAMES.get(type_url, type_url)
            if st.last_sent_version is None or st.acked:
                continue
            if st.last_nack_version == st.last_sent_version:
                error = st.last_nack_error or ""
                blame = self._blame(type_url, st.last_sent_version, error)
                reasons.append(
                    f"envoy {node} rejected {kind} {st.last_sent_version}: {error}{blame}"
                )
            else:
                reasons.append(f"envoy {node} has not ACKed {kind} {st.last_sent_version}")
        return reasons


def _gc_paused(work: Callable[..., _T], *args: Any) -> _T:
    """work(*args) with the cyclic GC paused (meshagent.gcpause), for a worker thread."""
    with paused_gc():
        return work(*args)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def run_agent(config: AgentConfig) -> int:
    """Run the agent until a stop signal; the process exit code."""
    configure_logging(config.log.level, config.log.format)
    try:
        return asyncio.run(Agent(config).run())
    except MeshAgentError as exc:
        log.error("agent_failed", error=str(exc))
        return 2
