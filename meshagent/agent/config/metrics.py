"""The `metrics` key of the agent config: the merged Prometheus endpoint (Istio's 15020).

`GET /stats/prometheus` on the admin TCP port (`admin.port`, 15020 as Istio's agent) answers
one scrape with the agent's metrics, Envoy's (its admin `/stats/prometheus`) and, when
`metrics.app` is set, the application's: what Istio's pod annotations
`prometheus.io/{port,path,scheme}` describe, said here in the agent config.

| key | default | meaning |
|---|---|---|
| `metrics.merge` | `true` | serve `/stats/prometheus` (merged); `false`: 404 there |
| `metrics.envoy` | `true` | include Envoy's stats in the merged scrape |
| `metrics.app.port` | none | the application's metrics port; unset: no application part |
| `metrics.app.path` | `/metrics` | its path (may carry a query) |
| `metrics.app.scheme` | `http` | `https` (its certificate is not verified: a local endpoint) |
| `metrics.app.address` | `127.0.0.1` | where the application listens |
| `metrics.timeout` | `5s` | bound on each part's fetch (Prometheus' scrape timeout lowers it) |
| `metrics.max_bytes` | `33554432` | a part larger than this is dropped and reported (32 MiB) |
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshagent.agent.config.section import Section, bounded, duration_ms, ip

DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AppMetricsTarget:
    """The application's own Prometheus endpoint."""

    port: int
    path: str = "/metrics"
    scheme: str = "http"
    address: str = "127.0.0.1"

    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """What the merged scrape includes, and its bounds."""

    merge: bool = True
    envoy: bool = True
    app: AppMetricsTarget | None = None
    timeout_ms: int = 5000
    max_bytes: int = DEFAULT_MAX_BYTES


def parse_metrics(s: Section) -> MetricsConfig:
    """`metrics:` (see the module docstring)."""

    s.only("merge", "envoy", "app", "timeout", "max_bytes")
    app = None
    if s.data.get("app") is not None:
        app = _app(s.section("app"))
    return MetricsConfig(
        merge=s.get("merge", bool, True),
        envoy=s.get("envoy", bool, True),
        app=app,
        timeout_ms=duration_ms(s, "timeout", "5s", 100, 120_000),
        max_bytes=bounded(s, "max_bytes", DEFAULT_MAX_BYTES, 4096, 1 << 31),
    )


def _app(s: Section) -> AppMetricsTarget:
    s.only("port", "path", "scheme", "address")
    if "port" not in s.data:
        raise s.error("is required (the application's metrics port)", "port")
    path = s.get("path", str, "/metrics")
    if not path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in path):
        raise s.error("must be a URL path starting with / and without spaces", "path")
    address = ip(s, "address", s.get("address", str, "127.0.0.1"))
    return AppMetricsTarget(
        port=s.port("port", 0, zero_ok=False),
        path=path,
        scheme=s.choice("scheme", "http", ("http", "https")),
        address=address,
    )


def check_metrics(
    s: Section, app: AppMetricsTarget | None, listeners: Iterable[tuple[str, int, str]]
) -> None:
    """Refuse an application endpoint that is one of the agent's listeners (address, port,
    what it is): the merged endpoint itself (each scrape would fetch itself, as Istio refuses
    prometheus.io/port equal to its status port) or Envoy's admin (already merged)."""
    if app is None:
        return
    for address, port, what in listeners:
        if app.port == port and _same_host(app.address, address):
            raise s.section("app").error(f"{app.port} is {what}", "port")


def _same_host(app: str, listener: str) -> bool:
    """Whether a connection to `app` can reach a listener bound to `listener` on this host."""
    a, b = ipaddress.ip_address(app), ipaddress.ip_address(listener)
    return a == b or b.is_unspecified or (a.is_loopback and b.is_loopback)
