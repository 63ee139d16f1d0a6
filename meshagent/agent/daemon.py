"""The Agent: sources -> normalizer -> translator -> xDS cache, plus admin, ADS and Envoy.

One asyncio task per source pumps SourceEvents into a queue; one processing task drains the
whole queue, applies it to the normalizer, translates once, and publishes the ResourceSet for
the local node. Bad input is reported, never fatal; a translator exception is a bug that is
logged while the previous ResourceSet keeps serving.

The accepted raw documents of the files are persisted in the state dir (agent/lastgood.py) and
restored at start, so that a document that is invalid when the agent starts serves its last good
version. A source that cannot see part of its configuration (SourceEvent.unavailable, e.g. a
configured path that is missing) keeps that part serving and makes the agent not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from meshagent import __version__
from meshagent.adapters.base import Adapter, Restorable
from meshagent.adapters.files import FilesAdapter
from meshagent.agent.admin import AdminServer, Response, standard_pages
from meshagent.agent.analysis_runtime import ANALYSIS_INTERVAL_S, AgentAnalysis
from meshagent.agent.config import AgentConfig, load_config
from meshagent.agent.convergence import ConvergenceObserver, ConvergenceTracker
from meshagent.agent.diagnostics import DiagnosticTable
from meshagent.agent.envoy import EnvoySupervisor, bootstrap_for
from meshagent.agent.instancelock import InstanceLock
from meshagent.agent.lastgood import FILE_NAME, PERSISTED_SOURCES, LastGoodKeeper, LastGoodStore
from meshagent.agent.logs import configure_logging
from meshagent.agent.metrics import AgentMetrics
from meshagent.agent.metrics_merge import install_merged_scrape
from meshagent.agent.opspages import install_ops_pages
from meshagent.agent.problems import ServedProblems, probe_wasm_runtime
from meshagent.agent.publishing import CONSISTENCY_SOURCE, NACK_SOURCE, NackExplainer
from meshagent.agent.sdnotify import SystemdNotifier
from meshagent.errors import MeshAgentError
from meshagent.gcpause import paused_gc, release_free_memory
from meshagent.insight.pages import install_insight_pages
from meshagent.model.identity import WorkloadCertificate
from meshagent.model.proxy import ProxySpec
from meshagent.model.snapshot import MeshSnapshot
from meshagent.model.source import Diagnostic, RawResource, SourceEvent
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.consistency import ConsistencyChecker, Inconsistency
from meshagent.xds.resources import ResourceSet
from meshagent.xds.typeurls import SHORT_NAMES

log = structlog.get_logger("meshagent.agent")
# Agent config sections a reload (SIGHUP) does not apply: logged, they wait for a restart.
RESTART_FIELDS = ("node", "domain_suffix", "xds", "admin", "envoy", "state_dir", "ca", "dns")

Key = tuple[str, str, str, str]
_T = TypeVar("_T")
SOURCE_RETRY_MAX_S = 30.0
AGENT_CONFIG = "agent-config"  # the source of a refused reload's diagnostic
CREDENTIALS_SOURCE = "credentials"  # adapters/credentials.py
CREDENTIALS_WAIT_S = 5.0
# The analysis waits for this long without a change (so that it does not slow the next change
# of a burst, issue 17), but at most ANALYSIS_MAX_DEFER_S after it is due.
ANALYSIS_QUIET_S = 0.3
ANALYSIS_MAX_DEFER_S = 5.0
# How long a first start (no last good) lets the sources list before the managed Envoy
# starts, so that its bootstrap gets their BOOTSTRAP EnvoyFilter patches.
BOOTSTRAP_WAIT_S = 2.0
# The analysis and the last-good save wait while the local Envoy applies the first push of a
# start (connected, and not every response of it answered), at most this long after that push
# was published: at 10k services they take a core for half a second that the push's later
# responses (endpoints, listeners, routes) and Envoy need more (issue 17).
FIRST_PUSH_WAIT_S = 60.0
FIRST_PUSH_POLL_S = 0.05


def carries_credentials(adapter: Adapter) -> bool:
    """The credentials adapter, or a Kubernetes adapter that watches Secrets."""
    options = getattr(adapter, "options", None)
    return adapter.name == CREDENTIALS_SOURCE or bool(getattr(options, "secret_namespaces", ()))


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
                loader=mesh_file_loader,
                missing_ok=files.missing_ok,
                default_namespace=config.node.namespace,
            )
        )
    credentials = config.sources.credentials
    if credentials is not None:
        from meshagent.adapters.credentials import CredentialsAdapter

        adapters.append(
            CredentialsAdapter(
                credentials.paths,
                namespace=credentials.namespace or config.node.namespace,
                debounce_ms=credentials.debounce_ms,
                poll_interval_ms=credentials.poll_interval_ms,
            )
        )
    if config.sources.consul is not None:
        from meshagent.adapters.consul import ConsulAdapter

        adapters.append(ConsulAdapter(config.sources.consul.options))
    if config.sources.kubernetes is not None:
        from meshagent.adapters.kubernetes import KubernetesAdapter

        kube = config.sources.kubernetes
        secrets = kube.secret_namespaces(config.node.type, config.node.namespace)
        options = dataclasses.replace(kube.options, secret_namespaces=secrets)
        adapters.append(KubernetesAdapter(options))
    return adapters


def mesh_file_loader(text: str, path: str) -> tuple[list[RawResource], list[Diagnostic]]:
    """yamldocs' resources of a mesh file, less those of a kind that does not exist in their
    Istio group (`VirtualServise`): like an unreadable identity, that is an error of the file,
    which keeps serving what it served (the kind is part of what names a resource)."""
    from meshagent.adapters.yamldocs import load_documents
    from meshagent.normalize.schema.core import Issue
    from meshagent.normalize.validate import diagnostic, unknown_istio_kind

    resources, diagnostics = load_documents(text, path, source="files")
    kept: list[RawResource] = []
    for raw in resources:
        reason = unknown_istio_kind(raw)
        if reason is None:
            kept.append(raw)
        else:  # an error of the file (the resource never serves to clear it), naming it
            located = diagnostic(raw, Issue("error", "kind", f"{raw.provenance.ref}: {reason}"))
            diagnostics.append(dataclasses.replace(located, kind="", name=""))
    return kept, diagnostics


class NormalizerLike(Protocol):
    """What the agent needs of the normalizer."""

    def apply(self, events: Iterable[SourceEvent]) -> tuple[Any, list[Diagnostic]]: ...


class TranslatorLike(Protocol):
    """What the agent needs of the translator."""

    def generate(self, snapshot: Any, proxy: ProxySpec) -> ResourceSet: ...


def _default_normalizer(config: AgentConfig) -> NormalizerLike:
    from meshagent.insight.offline import normalizer_for

    return normalizer_for(config)


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
    complete: bool = False  # has listed everything it has, seeing all of its configuration
    listed: set[Key] = dataclasses.field(default_factory=set)  # keys listed until complete
    unavailable: tuple[str, ...] = ()  # the last event's SourceEvent.unavailable


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
        self.diagnostics = DiagnosticTable()  # current problems, not a history
        # `meshagent analyze` of the served snapshot (agent/analysis_runtime.py)
        self.analysis = AgentAnalysis(
            config, lambda: [e.diagnostic for e in self.diagnostics.entries()]
        )
        self.analysis.register(self.metrics.registry)
        self._analysis_task: asyncio.Task[None] | None = None
        self._analyzed_at = -ANALYSIS_INTERVAL_S  # loop time of the last analysis' start
        self._changed_at = float("-inf")  # loop time of the last change applied
        # Held by whoever uses the normalizer: the processing task and the analysis' capture.
        self._normalizer_lock = asyncio.Lock()
        # What a publish serves badly, reported while it lasts (agent/problems.py).
        self._problems = ServedProblems(self.diagnostics, self._report)
        # Whether the Envoy in use has a Wasm runtime, and why: probed at the first WasmPlugin.
        self._wasm_probe: tuple[bool, str] | None = None
        # The persisted last good documents (agent/lastgood.py).
        self._last_good = LastGoodKeeper(
            LastGoodStore(config.state_dir / FILE_NAME),
            self._report,
            busy=self._first_push_pending,
        )
        self._first_published_at: float | None = None  # time.monotonic() of the first publish
        self._first_push_over = False  # answered, or FIRST_PUSH_WAIT_S passed
        self._credentials_deadline = 0.0  # see _credentials_pending
        self._credential_sources: set[str] = set()
        self._credentials_timer: asyncio.TimerHandle | None = None
        self._processor: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._synced_snapshot = asyncio.Event()  # set once every source's listing is applied
        self._reload_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.ca: Any = None  # CaRuntime when `ca:` is configured
        self.consul_registrar: Any = None  # ConsulRegistrar when sources.consul.register
        self.workload_entry: Any = None  # WorkloadEntryRegistrar when join.workload_group
        self.dns: Any = None  # DnsProxy when dns.enabled (agent/dns_runtime.py)
        self.notifier = SystemdNotifier.from_environment()  # inert outside systemd
        self._notify_task: asyncio.Task[None] | None = None
        self.convergence = ConvergenceTracker(
            self.metrics, lambda: self.cache.status(self._proxy.node_id)
        )
        self._lock = InstanceLock(config.state_dir)  # one agent per state dir
        self._started = time.time()  # the status page's uptime
        self._last_reload: dict[str, Any] | None = None  # when and how the last reload ended

    # --- lifecycle ----------------------------------------------------------------------

    def claim(self) -> None:
        """Lock the state dir and check the xDS socket is not another live agent's; a
        ConfigError (one line, nothing started) when another agent runs there."""
        from meshagent.xds.server import remove_stale_socket

        self._lock.acquire()
        try:
            remove_stale_socket(str(self.config.xds.uds))
        except BaseException:
            self._lock.release()
            raise

    async def start(self) -> None:
        """Start admin, ADS, the sources and (when managed) Envoy."""
        from meshagent.xds.server import AdsServer

        cfg = self.config
        self.claim()
        self.admin = AdminServer(
            cfg.admin.address, cfg.admin.port, self._pages(), socket_path=cfg.admin.socket
        )
        install_ops_pages(self.admin, self)
        self.admin.pages["/debug/analyze"] = lambda: Response.json(200, self.analysis.report())
        install_merged_scrape(self.admin, self.metrics, lambda: self.config)
        self.metrics.envoy.watch(self._envoy_state)
        install_insight_pages(self.admin, self)
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
        if cfg.dns.enabled:  # listening before any source: SERVFAIL until the first table
            from meshagent.agent.dns_runtime import dns_page, start_dns

            self.dns = await start_dns(cfg, self.metrics.registry)
            self.admin.pages["/debug/dns"] = dns_page(self.dns)
        adapters = list(self._adapter_factory(cfg))
        await self._restore_last_good({a.name for a in adapters})
        self._processor = asyncio.create_task(self._process_loop(), name="agent-processor")
        for adapter in adapters:
            self._start_source(adapter)
        self._credential_sources = {a.name for a in adapters if carries_credentials(a)}
        if self._credential_sources:  # publish by then, whatever they do
            loop = asyncio.get_running_loop()
            self._credentials_deadline = loop.time() + CREDENTIALS_WAIT_S
            self._credentials_timer = loop.call_later(
                CREDENTIALS_WAIT_S, lambda: self._spawn(self._publish())
            )
        self._start_consul_registration()
        if cfg.join is not None:  # `join.workload_group`: this VM's WorkloadEntry
            from meshagent.agent.join_runtime import start_workload_entry

            self.workload_entry = await start_workload_entry(cfg)
        if cfg.envoy.manage:
            self.envoy = EnvoySupervisor(
                cfg.envoy,
                bootstrap_for(cfg),
                cfg.state_dir,
                output=self._envoy_output,
                rebuild=self._envoy_bootstrap,
            )
            await self.envoy.start()

    async def _probe_wasm(self) -> None:
        """Find out once whether the Envoy in use has a Wasm runtime (a validate-mode run)."""
        self._wasm_probe = await probe_wasm_runtime(self.config.envoy.binary)
        self._proxy = dataclasses.replace(self._proxy, wasm_runtime=self._wasm_probe[0])

    async def _envoy_bootstrap(self, binary: str, base: Mapping[str, Any]) -> Mapping[str, Any]:
        """The managed Envoy's bootstrap at a start or restart: base with the BOOTSTRAP
        EnvoyFilter patches of the mesh known then (agent/bootstrap_patch.py). Without a
        snapshot yet (no last good), the sources get BOOTSTRAP_WAIT_S to list first."""
        from meshagent.agent.bootstrap_patch import BOOTSTRAP_SOURCE, patched_bootstrap

        if self._snapshot is None and self._sources:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced_snapshot.wait(), BOOTSTRAP_WAIT_S)
        snapshot = self._snapshot
        if not isinstance(snapshot, MeshSnapshot) or not snapshot.envoy_filters:
            return base
        try:
            bootstrap, problems = await asyncio.to_thread(
                patched_bootstrap, base, snapshot, self._proxy, binary
            )
        except Exception:  # a bug here must not keep Envoy from starting
            log.exception("bootstrap_patch_failed_bug")
            return base
        self.diagnostics.forget_source(BOOTSTRAP_SOURCE)
        if problems:
            self._report(problems)
        if bootstrap is not base:
            log.info("envoy_bootstrap_patched", version=snapshot.version)
        return bootstrap

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
        if self._credentials_timer is not None:
            self._credentials_timer.cancel()
        for source in list(self._sources.values()):
            await _cancel(source.task)
        self._sources.clear()
        await _cancel(self._processor)
        await self._last_good.saved_all()  # let the last save finish
        for task in list(self._background):
            await _cancel(task)
        if self.ca is not None:
            await self.ca.stop()
            self.ca = None
        if self.envoy is not None:
            await self.envoy.stop()
            self.envoy = None
        if self.dns is not None:
            await self.dns.stop()
            self.dns = None
        if self._ads is not None:
            await self._ads.stop()
            self._ads = None
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        self._lock.release()
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
        self.claim()  # before the try: a refusal starts (and stops) nothing
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
        if isinstance(adapter, Restorable) and adapter.name in PERSISTED_SOURCES:
            # what serves now (as last saved: the normalizer may be busy in another thread)
            adapter.restore([r for k, r in self._last_good.saved.items() if k[0] == adapter.name])
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
            # A new adapter (first start or SIGHUP) re-reads every file: the file errors of
            # the previous one that it does not repeat are gone.
            source.seen_first = True
            reread = self.diagnostics.locations(event.source)
            event = dataclasses.replace(event, fixed=(*event.fixed, *reread))
        if not source.complete:
            event = self._complete_listing(source, event, known)
        known.difference_update(event.deletes)
        known.update(r.key for r in event.upserts)
        if event.unavailable != source.unavailable:
            if not event.unavailable:
                log.info("source_available", source=name)
            source.unavailable = event.unavailable
        if event.synced and not source.synced:
            source.synced = True
            self.metrics.source_synced.labels(source=name).set(1)
            log.info("source_synced", source=name, resources=len(known))
        return event

    def _complete_listing(
        self, source: _Source, event: SourceEvent, known: set[Key]
    ) -> SourceEvent:
        """A new adapter (first start or SIGHUP) lists everything it has: once it has, and sees
        all of its configuration, whatever the previous one (or the restored last good) had and
        this one lacks is gone. While part is unavailable, nothing is taken for deleted."""
        source.listed.difference_update(event.deletes)
        source.listed.update(r.key for r in event.upserts)
        if not event.synced or event.unavailable:
            return event
        source.complete = True
        stale = tuple(k for k in sorted(known - source.listed) if k not in event.deletes)
        source.listed = set()
        return dataclasses.replace(event, deletes=(*event.deletes, *stale))

    async def _apply(self, events: list[SourceEvent]) -> None:
        self.convergence.changed()
        self._changed_at = asyncio.get_running_loop().time()
        async with self._normalizer_lock:
            try:
                # In a worker thread, as translation is: a 10k-service load takes seconds,
                # and the ADS streams and the admin pages must keep being served meanwhile.
                # The lock keeps the normalizer to one thread at a time (see _analyze).
                snapshot, diagnostics = await asyncio.to_thread(
                    _gc_paused, self.normalizer.apply, events
                )
            except Exception:
                log.exception("normalize_failed_bug", sources=sorted({e.source for e in events}))
                return
            self._snapshot = snapshot
            if all(s.synced for s in self._sources.values()):
                self._synced_snapshot.set()
            self._report(diagnostics, events)
            self._remember_last_good(events)
        await self._publish()
        self._schedule_analysis()

    def _schedule_analysis(self) -> None:
        """Make sure the current snapshot gets analyzed (agent/analysis_runtime.py)."""
        if self._analysis_task is None or self._analysis_task.done():
            self._analysis_task = asyncio.get_running_loop().create_task(self._analyze())
            self._background.add(self._analysis_task)  # stop() cancels it
            self._analysis_task.add_done_callback(self._background.discard)

    async def _analyze(self) -> None:
        """Analyze the snapshot until the latest one is, at most once per interval, off the
        processing task: the normalizer is read (briefly, under the lock) to capture the
        input, then the checks run in a worker thread while sources keep being applied."""
        loop = asyncio.get_running_loop()
        while isinstance(snapshot := self._snapshot, MeshSnapshot) and self.analysis.stale(
            snapshot
        ):
            while self._first_push_pending():
                await asyncio.sleep(FIRST_PUSH_POLL_S)
            await self._analysis_due(loop)
            self._analyzed_at = loop.time()
            try:
                async with self._normalizer_lock:
                    snapshot = self._snapshot
                    captured = await asyncio.to_thread(
                        _gc_paused, self.analysis.capture, snapshot, self.normalizer
                    )
                await asyncio.to_thread(_gc_paused, self.analysis.analyze, captured)
            except Exception:
                log.exception("analysis_failed_bug", version=snapshot.version)
                return

    async def _analysis_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the next analysis: one interval after the last one, and once no change
        was applied for ANALYSIS_QUIET_S (the analysis takes CPU in a worker thread: it would
        slow the publish of a change in a burst), but at most ANALYSIS_MAX_DEFER_S late."""
        latest = max(self._analyzed_at + ANALYSIS_INTERVAL_S, loop.time()) + ANALYSIS_MAX_DEFER_S
        while (now := loop.time()) < latest:
            due = max(self._analyzed_at + ANALYSIS_INTERVAL_S, self._changed_at + ANALYSIS_QUIET_S)
            if now >= due:
                return
            await asyncio.sleep(min(due, latest) - now)

    def _first_push_pending(self) -> bool:
        """Whether the local Envoy is applying the first push of this start: connected, and a
        response of it neither ACKed nor NACKed (or its version not settled), for at most
        FIRST_PUSH_WAIT_S after the publish. Without an Envoy connected nothing waits."""
        if self._first_push_over or self._first_published_at is None:
            return False
        node = self._proxy.node_id
        status, published = self.cache.status(node), self.cache.get(node)[0]
        if not status.connected:
            return False  # nobody to wait for (yet): the push is not being applied
        answered = status.settled_version == published and all(
            t.acked or t.last_nack_version == t.last_sent_version
            for t in status.types.values()
            if t.last_sent_version is not None
        )
        if answered or time.monotonic() - self._first_published_at > FIRST_PUSH_WAIT_S:
            self._first_push_over = True
            return False
        return True

    def _report(
        self, diagnostics: Sequence[Diagnostic], events: Sequence[SourceEvent] = ()
    ) -> None:
        self.metrics.count_diagnostics(diagnostics)
        self.diagnostics.update(events, diagnostics)
        self.metrics.set_invalid(self.diagnostics.invalid_subjects())
        for d in diagnostics:
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

    # --- last good, across restarts (agent/lastgood.py) ----------------------------------

    def _accepted(self, source: str) -> dict[Key, RawResource]:
        """What the normalizer serves of source ({} for a normalizer that cannot say)."""
        accepted = getattr(self.normalizer, "accepted", None)
        return accepted(source) if accepted is not None else {}

    async def _restore_last_good(self, sources: set[str]) -> None:
        """Seed the normalizer with the persisted last good documents of the configured
        sources, before they run: what a source then lists replaces them, what it no longer has
        is deleted (_complete_listing), and a listed document that is invalid leaves them
        serving."""
        if getattr(self.normalizer, "accepted", None) is None:
            return
        events = await self._last_good.load(sources)
        if not events:
            return
        # (diagnostics: reported when the files are read; a thread, as in _apply: big sets)
        self._snapshot, _ = await asyncio.to_thread(_gc_paused, self.normalizer.apply, events)
        accepted = {e.source: self._accepted(e.source) for e in events}
        for source, documents in accepted.items():
            self._known.setdefault(source, set()).update(documents)
        self._last_good.restored(accepted.values())

    def _remember_last_good(self, events: Sequence[SourceEvent]) -> None:
        """Save what the normalizer now accepts of the persisted sources, when it changed; once
        every persisted source has listed, report what still serves from before the restart."""
        accepted_of = getattr(self.normalizer, "accepted_of", None)
        if accepted_of is None:
            return
        self._last_good.remember(
            accepted_of,
            events,
            lambda: all(s.complete for n, s in self._sources.items() if n in PERSISTED_SOURCES),
        )

    def _credentials_pending(self) -> bool:
        """Whether publishing waits for the first listing of a source of credentials (at
        most CREDENTIALS_WAIT_S after start): keys are not in the persisted last good, and a
        first publish without them would take the gateway servers that present them out of a
        running Envoy (a drain of their listeners) until they are read."""
        waiting = [
            name
            for name in self._credential_sources
            if (source := self._sources.get(name)) is not None and not source.seen_first
        ]
        return bool(waiting) and asyncio.get_running_loop().time() < self._credentials_deadline

    async def _publish(self) -> None:
        """Translate the current snapshot for the local proxy and hand it to the cache.

        The translation runs in a worker thread; the lock keeps the translator to one
        thread and the publishes in order (sources, reloads and certificate rotations).
        """
        async with self._publish_lock:
            if self._snapshot is None or self._credentials_pending():
                return
            if getattr(self._snapshot, "wasm_plugins", None) and self._wasm_probe is None:
                await self._probe_wasm()
            snapshot, proxy = self._snapshot, self._proxy
            try:
                resources = await asyncio.to_thread(
                    _gc_paused, self.translator.generate, snapshot, proxy, release=True
                )
            except Exception:
                self.metrics.translate_failures.inc()
                log.exception("translate_failed_bug", proxy=proxy.node_id)
                await self._follow_dns(snapshot, served=False)
                return  # the previous ResourceSet keeps serving
            served = await self._consistent(resources)
            if served:  # else the last consistent set keeps serving
                self._serve(resources)
            await self._follow_dns(snapshot, served=served)

    async def _follow_dns(self, snapshot: Any, *, served: bool) -> None:
        """The DNS proxy answers what Envoy was just given (after the xDS hand-off, so that a
        new VIP's listener chain is on its way when its name first resolves). A snapshot
        that was not served still gives the first table: without one, no name resolves."""
        if self.dns is None or not isinstance(snapshot, MeshSnapshot):
            return
        if served or not self.dns.table.loaded:
            await self.dns.follow(snapshot)

    def _serve(self, resources: ResourceSet) -> None:
        """Hand a translated ResourceSet to the cache (on the event loop's thread)."""
        previous = self.cache.get(self._proxy.node_id)[0]
        version = self.cache.set(self._proxy.node_id, resources)
        self.convergence.published(pushes=version != previous)
        self._published = True
        if self._first_published_at is None:
            self._first_published_at = time.monotonic()
        self.diagnostics.forget_source(NACK_SOURCE)  # a new set: Envoy judges it anew
        why = self._wasm_probe[1] if self._wasm_probe else "not probed"
        self._problems.check(self._snapshot, self._proxy, why)
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
        if found != self._inconsistent:
            self.diagnostics.forget_source(CONSISTENCY_SOURCE)
        if found and found != self._inconsistent:
            self._report(inconsistency_diagnostics(found, self.snapshot, self._proxy, resources))
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
            self.metrics.config_reload_failures.inc()
            log.error("config_reload_failed", path=str(path), error=str(exc))
            self._agent_config_problem(exc, path)
            self._last_reload = {"at": time.time(), "result": f"refused: {exc}"}
            return
        self._agent_config_problem(None, path)
        self._last_reload = {"at": time.time(), "result": "ok"}
        if new.log != old.log:
            configure_logging(new.log.level, new.log.format)
        self.config = dataclasses.replace(
            old,
            log=new.log,
            sources=new.sources,
            outbound=new.outbound,
            capture=new.capture,
            outbound_traffic_policy=new.outbound_traffic_policy,
            metrics=new.metrics,
        )
        if new.sources != old.sources:
            for adapter in self._adapter_factory(self.config):
                await self._restart_source(adapter)
        # What needs a restart keeps its running value in the translation too: a new node.id
        # would publish under a name the running Envoy does not ask for, a new ca.trust_domain
        # would verify peers against a domain the certificates are not from.
        kept = {f: getattr(old, f) for f in RESTART_FIELDS}
        proxy = dataclasses.replace(
            dataclasses.replace(new, **kept).proxy_spec(),
            certificates=self._proxy.certificates,
            wasm_runtime=self._proxy.wasm_runtime,
        )
        if proxy != self._proxy:
            self._proxy = proxy
            await self._publish()
        fixed = [f for f in RESTART_FIELDS if getattr(new, f) != getattr(old, f)]
        if fixed:
            log.warning("config_change_needs_restart", fields=fixed)
        log.info("config_reloaded", path=str(path))

    def _agent_config_problem(self, exc: MeshAgentError | None, path: Any) -> None:
        """Show a refused reload among the current problems until a reload succeeds."""
        if exc is None:
            self.diagnostics.update([SourceEvent(AGENT_CONFIG)], ())
        else:
            where = getattr(exc, "location", "") or str(path)
            field, reason = getattr(exc, "field", ""), getattr(exc, "reason", str(exc))
            d = Diagnostic("error", AGENT_CONFIG, where, "", "", field, f"reload refused: {reason}")
            earlier = self.diagnostics.locations(AGENT_CONFIG)  # replaced; first seen kept
            self.diagnostics.update([SourceEvent(AGENT_CONFIG, errors=(d,), fixed=earlier)], (d,))
        self.metrics.set_invalid(self.diagnostics.invalid_subjects())

    def _certificates_rotated(self, certificates: tuple[WorkloadCertificate, ...]) -> None:
        """The CA's callback: serve the new certificates (SDS) through a re-translation."""
        self._proxy = dataclasses.replace(self._proxy, certificates=certificates)
        self._spawn(self._publish())

    def _envoy_state(self) -> tuple[bool, int]:
        """(up, restarts) for the metrics: a managed Envoy's process, else its ADS stream."""
        if self.envoy is not None:
            return self.envoy.pid is not None, self.envoy.restarts
        return self.cache.status(self._proxy.node_id).connected, 0

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

    @property
    def proxy(self) -> ProxySpec:
        """The local proxy as the translator sees it (with its certificates)."""
        return self._proxy

    def served_resources(self) -> ResourceSet:
        """What the cache serves the local Envoy now."""
        return self.cache.get(self._proxy.node_id)[1]

    def status_report(self, *, mesh: bool = True) -> dict[str, Any]:
        """Sources, mesh, certificates, Envoy's xDS state and diagnostics (/debug/status).
        mesh=False leaves "mesh" None: the admin pages build it from the (immutable)
        snapshot on a thread (~50 ms at 10k services, and as much again to free)."""
        from meshagent.agent import statuspage

        return {
            "node": self._proxy.node_id,
            "not_ready": self.ready_reasons(),
            "sources": [
                {"name": n, "synced": s.synced, "unavailable": list(s.unavailable)}
                for n, s in sorted(self._sources.items())
            ],
            "mesh": statuspage.mesh_report(self._snapshot) if mesh else None,
            "certificates": statuspage.certificates_report(
                getattr(self._proxy, "certificates", ())
            ),
            "xds": statuspage.xds_report(self.cache.status(self._proxy.node_id)),
            "diagnostics": self.config_errors()["diagnostics"][-50:],
            "analysis": statuspage.analysis_report(self.analysis.report()),
            "agent": self._agent_facts(),
        }

    def _agent_facts(self) -> dict[str, Any]:
        """Version, uptime, Envoy restarts and the last reload, for the status page."""
        up, restarts = self._envoy_state()
        return {
            "version": __version__,
            "uptime_s": int(time.time() - self._started),
            "envoy_managed": self.envoy is not None,
            "envoy_up": up,
            "envoy_restarts": restarts,
            "last_reload": self._last_reload,
        }

    def config_errors(self) -> dict[str, Any]:
        """/debug/config_errors: the current problems with when each was first seen; a problem
        goes once its resource is accepted or deleted, or its file is fixed."""
        return {"diagnostics": self.diagnostics.as_json()}

    def ready_reasons(self) -> list[str]:
        """Why the agent is not ready; [] when every source synced and Envoy ACKed all."""
        reasons = [f"source {n} has not synced" for n, s in self._sources.items() if not s.synced]
        reasons.extend(
            f"source {n}: {why}; its last good configuration keeps serving"
            for n, s in sorted(self._sources.items())
            for why in s.unavailable
        )
        if not self._published:
            reasons.append("no configuration published yet")
        reasons += [f"configuration not published: {p.reason}" for p in self._inconsistent[:5]]
        if len(self._inconsistent) > 5:
            reasons.append(f"configuration not published: and {len(self._inconsistent) - 5} more")
        if self.config.dns.enabled and (self.dns is None or not self.dns.ready):
            reasons.append("dns proxy has no name table yet")
        node = self._proxy.node_id
        status = self.cache.status(node)
        if not status.connected:
            return [*reasons, f"envoy {node} is not connected"]
        for type_url, st in sorted(status.types.items()):
            kind = SHORT_NAMES.get(type_url, type_url)
            if st.rejected and (st.acked or st.last_nack_version != st.last_sent_version):
                # ACKed since, but that ACK was for other resources: these are still missing.
                error = st.last_nack_error or ""
                reasons.append(
                    f"envoy {node} has not applied {kind} {', '.join(st.rejected[:5])}: "
                    f"{error.strip()} (retrying)"
                )
                continue
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
        published = self.cache.get(node)[0]
        if published and status.settled_version != published and not reasons:
            # Published, but not yet sent, or sent and not yet answered (a large first push
            # is sent type by type): Envoy does not have it yet.
            reasons.append(f"envoy {node} has not applied configuration {published} yet")
        return reasons


def _gc_paused(work: Callable[..., _T], *args: Any, release: bool = False) -> _T:
    """work(*args) with the cyclic GC paused (meshagent.gcpause), for a worker thread;
    `release`: then hand the allocator's free pages back (once per publish, after the last
    pass, so that churn does not grow RSS)."""
    try:
        with paused_gc():
            return work(*args)
    finally:
        if release:
            release_free_memory()


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
