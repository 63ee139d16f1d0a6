"""Prometheus metrics of one agent, and the xDS observer that feeds them.

Each Agent has its own CollectorRegistry (not prometheus_client's global one), so that tests
can run several agents in one process. No `_created` series: prometheus_client's are turned off
for the process (they double the series count and Prometheus does not use them). The process
metrics are `meshagent_process_*`, not `process_*`, so that they never clash with the
application's own in the merged scrape (Istio's agent likewise names its `istio_agent_process_*`).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshagent import __version__
from meshagent.model.source import Diagnostic
from meshagent.xds.typeurls import SHORT_NAMES

log = structlog.get_logger("meshagent.xds")

disable_created_metrics()  # type: ignore[no-untyped-call]  # for the whole process: collection time reads this switch

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def short_type(type_url: str) -> str:
    """ "cds", "eds", ... for known type URLs; the last part of the URL otherwise."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


class AgentMetrics:
    """The agent's metrics, all registered in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.xds_pushes = Counter(
            "meshagent_xds_pushes", "xDS responses sent", ["type"], registry=r
        )
        self.xds_push_bytes = Counter(
            "meshagent_xds_push_bytes", "Bytes of xDS responses sent", ["type"], registry=r
        )
        self.xds_nacks = Counter("meshagent_xds_nacks", "xDS NACKs received", ["type"], registry=r)
        self.xds_ack_latency = Histogram(
            "meshagent_xds_ack_latency_seconds",
            "Time from an xDS push to its ACK",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.xds_connected = Gauge(
            "meshagent_xds_connected_streams", "Open ADS streams", registry=r
        )
        self.config_errors = Counter(
            "meshagent_config_errors", "Configuration errors reported", ["source"], registry=r
        )
        self.config_warnings = Counter(
            "meshagent_config_warnings", "Configuration warnings reported", ["source"], registry=r
        )
        # Errors a source met talking to its platform (Consul down, 5xx, 403, bad JSON; an
        # unreadable file): diagnostics that name no resource.
        self.source_errors = Counter(
            "meshagent_source_errors", "Errors reading a source", ["source"], registry=r
        )
        self.source_synced = Gauge(
            "meshagent_source_synced",
            "1 once a source has listed everything",
            ["source"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "meshagent_snapshot_version", "Version of the mesh snapshot being served", registry=r
        )
        self.resources = Gauge(
            "meshagent_resources",
            "Envoy resources generated for the local proxy",
            ["type"],
            registry=r,
        )
        self.translate_failures = Counter(
            "meshagent_translate_failures", "Translations that failed (bugs)", registry=r
        )
        # Operations (issue 6): a source's watch restarted after a failure; and convergence,
        # from a source change arriving to Envoy having ACKed every push it caused.
        self.source_restarts = Counter(
            "meshagent_source_restarts", "Source watches restarted after a failure", ["source"],
            registry=r,
        )  # fmt: skip
        self.convergence = Histogram(
            "meshagent_convergence_seconds",
            "Time from a source change to Envoy's ACK of the configuration it produced",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Certificate authority (issue 3): `kind` is "workload" (this host's certificates) or
        # "served" (CreateCertificate for other hosts); reason is the refusal's class name.
        self.ca_issued = Counter("meshagent_ca_issued", "Certificates issued", ["kind"], registry=r)
        self.ca_failures = Counter(
            "meshagent_ca_failures",
            "Certificate requests that failed",
            ["kind", "reason"],
            registry=r,
        )
        self.cert_expiry = Gauge(
            "meshagent_cert_expiry_seconds",
            "Seconds until a local workload certificate expires",
            ["identity"],
            registry=r,
        )
        self.cert_expiry_timestamp = Gauge(
            "meshagent_cert_expiry_timestamp_seconds",
            "When a local workload certificate expires (Unix time, its notAfter)",
            ["identity"],
            registry=r,
        )

        # Rollout gates (issue 11): reloads the agent refused (its config keeps running), and
        # how many resources (or files, platform addresses) have a current error, per source.
        self.config_reload_failures = Counter(
            "meshagent_config_reload_failures",
            "Agent config reloads refused (the running config is kept)",
            registry=r,
        )
        self.invalid_resources = Gauge(
            "meshagent_invalid_resources",
            "Resources, files or platform addresses with a current config error",
            ["source"],
            registry=r,
        )
        self._invalid_sources: set[str] = set()

        # Issue 16: process, build and Envoy; and the merged scrape (/stats/prometheus).
        ProcessCollector(namespace="meshagent", registry=r)
        Info("meshagent_build", "The agent's version", registry=r).info(
            {"version": __version__, "python_version": platform.python_version()}
        )
        self.envoy = EnvoyCollector()
        r.register(self.envoy)
        self.scrapes = Counter(
            "meshagent_scrapes", "Merged scrapes served (/stats/prometheus)", registry=r
        )
        self.scrape_failures = Counter(
            "meshagent_scrape_failures",
            "Parts of the merged scrape that could not be fetched (each is left out)",
            ["target"],
            registry=r,
        )
        self.scrape_target_up = Gauge(
            "meshagent_scrape_target_up",
            "1 when the last merged scrape got this part, 0 when it failed",
            ["target"],
            registry=r,
        )
        self.scrape_conflicts = Counter(
            "meshagent_scrape_conflicts",
            "Metric families left out of the merged scrape: their name was taken by an "
            "earlier part",
            ["target"],
            registry=r,
        )

    def set_invalid(self, counts: Mapping[str, int]) -> None:
        """meshagent_invalid_resources from a per-source count; sources not in counts are 0."""
        self._invalid_sources.update(counts)
        for source in self._invalid_sources:
            self.invalid_resources.labels(source=source).set(counts.get(source, 0))

    def count_diagnostics(self, diagnostics: Iterable[Diagnostic]) -> None:
        """Count each diagnostic as an error or a warning of its source."""
        for d in diagnostics:
            target = self.config_errors if d.severity == "error" else self.config_warnings
            target.labels(source=d.source).inc()
            if d.severity == "error" and not d.kind:
                self.source_errors.labels(source=d.source).inc()

    def set_resources(self, counts: Mapping[str, int]) -> None:
        """Resource counts by type URL, as generated for the local proxy."""
        for type_url, count in counts.items():
            self.resources.labels(type=short_type(type_url)).set(count)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


EnvoyState = Callable[[], tuple[bool, int]]


class EnvoyCollector:
    """meshagent_envoy_up and meshagent_envoy_restarts_total, read at scrape time from the
    function the daemon gives `watch` ((up, restarts)); nothing until then."""

    def __init__(self) -> None:
        self._state: EnvoyState | None = None

    def watch(self, state: EnvoyState) -> None:
        """Read Envoy's state from `state` from now on."""
        self._state = state

    def describe(self) -> list[Metric]:
        return list(self._families(False, 0))

    def collect(self) -> Iterator[Metric]:
        if self._state is not None:
            yield from self._families(*self._state())

    @staticmethod
    def _families(up: bool, restarts: int) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "meshagent_envoy_up",
            "1 when the local Envoy runs (a managed one: its process; else its ADS stream)",
            value=1 if up else 0,
        )
        yield CounterMetricFamily(
            "meshagent_envoy_restarts",
            "Times the agent restarted the Envoy it manages after it exited",
            value=restarts,
        )


class MetricsObserver:
    """An XdsObserver that updates the metrics and logs ACKs and NACKs.

    Per-proxy ACK state lives in the SnapshotCache's ProxyStatus (the ADS server writes it);
    this observer only counts and logs.
    """

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def connected(self, node_id: str, stream: str) -> None:
        self.metrics.xds_connected.inc()  # the ADS server logs the connection itself

    def disconnected(self, node_id: str, stream: str) -> None:
        self.metrics.xds_connected.dec()

    def pushed(
        self,
        node_id: str,
        type_url: str,
        version: str,
        resources: int,
        removed: int,
        nbytes: int,
    ) -> None:
        kind = short_type(type_url)
        self.metrics.xds_pushes.labels(type=kind).inc()
        self.metrics.xds_push_bytes.labels(type=kind).inc(nbytes)
        log.debug(
            "xds_pushed",
            proxy=node_id,
            type_url=type_url,
            version=version,
            resources=resources,
            removed=removed,
            bytes=nbytes,
        )

    def acked(self, node_id: str, type_url: str, version: str, latency_s: float) -> None:
        self.metrics.xds_ack_latency.labels(type=short_type(type_url)).observe(latency_s)
        log.info("xds_ack", proxy=node_id, type_url=type_url, version=version, latency_s=latency_s)

    def nacked(self, node_id: str, type_url: str, version: str, error: str) -> None:
        self.metrics.xds_nacks.labels(type=short_type(type_url)).inc()
        log.error("xds_nack", proxy=node_id, type_url=type_url, version=version, error=error)
