"""Convergence time: from a source change arriving to Envoy having ACKed what it produced.

The agent calls `changed()` when source events arrive, `published(pushes)` after translating
them (pushes is False when the result equals what Envoy already has, so nothing will be
ACKed), and the ADS observer calls `acked()` on every ACK. The clock starts at the first
change not yet converged, so a burst of changes counts as one, measured from its start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshagent.agent.metrics import AgentMetrics, MetricsObserver
from meshagent.xds.status import ProxyStatus


class ConvergenceTracker:
    """Observes meshagent_convergence_seconds for one node; status() reads its xDS state."""

    def __init__(self, metrics: AgentMetrics, status: Callable[[], ProxyStatus]) -> None:
        self._metrics = metrics
        self._status = status
        self._started: float | None = None
        self._published_at = 0.0

    def changed(self) -> None:
        """Source events arrived."""
        if self._started is None:
            self._started = time.monotonic()

    def published(self, pushes: bool) -> None:
        """The change was translated; pushes tells whether Envoy gets anything new."""
        if not pushes:
            self._started = None
            return
        self._published_at = time.monotonic()

    def acked(self) -> None:
        """An ACK arrived: observe once everything sent since publishing is ACKed."""
        if self._started is None:
            return
        types = [t for t in self._status().types.values() if t.last_sent_version is not None]
        if not all(t.acked for t in types):
            return
        if not any((t.sent_at or 0.0) >= self._published_at for t in types):
            return  # an ACK of an older push; this change's pushes have not gone out yet
        self._metrics.convergence.observe(time.monotonic() - self._started)
        self._started = None


class ConvergenceObserver(MetricsObserver):
    """MetricsObserver that also tells a ConvergenceTracker about ACKs (and on_nack, when
    given, about NACKs: node id, type URL, version, error)."""

    def __init__(
        self,
        metrics: AgentMetrics,
        tracker: ConvergenceTracker,
        on_nack: Callable[[str, str, str, str], None] | None = None,
    ) -> None:
        super().__init__(metrics)
        self.tracker = tracker
        self.on_nack = on_nack

    def nacked(self, node_id: str, type_url: str, version: str, error: str) -> None:
        super().nacked(node_id, type_url, version, error)
        if self.on_nack is not None:
            self.on_nack(node_id, type_url, version, error)

    def acked(self, node_id: str, type_url: str, version: str, latency_s: float) -> None:
        super().acked(node_id, type_url, version, latency_s)
        self.tracker.acked()
