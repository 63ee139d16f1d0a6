"""The observer the ADS server reports to; the agent implements it for metrics and logs."""

from __future__ import annotations

from typing import Protocol


class XdsObserver(Protocol):
    """Called by the ADS server on the event loop; implementations must not block."""

    def connected(self, node_id: str, stream: str) -> None:
        """A proxy opened a stream ("delta" or "sotw")."""

    def disconnected(self, node_id: str, stream: str) -> None:
        """A proxy's stream ended, for whatever reason."""

    def pushed(
        self,
        node_id: str,
        type_url: str,
        version: str,
        resources: int,
        removed: int,
        nbytes: int,
    ) -> None:
        """A response was written: `resources` sent, `removed` names dropped, `nbytes` in size."""

    def acked(self, node_id: str, type_url: str, version: str, latency_s: float) -> None:
        """The proxy accepted a response; `latency_s` is seconds from push to ACK."""

    def nacked(self, node_id: str, type_url: str, version: str, error: str) -> None:
        """The proxy rejected a response with `error` (Envoy's error_detail message)."""


class NullObserver:
    """An XdsObserver that ignores everything."""

    def connected(self, node_id: str, stream: str) -> None:
        """Ignore."""

    def disconnected(self, node_id: str, stream: str) -> None:
        """Ignore."""

    def pushed(
        self,
        node_id: str,
        type_url: str,
        version: str,
        resources: int,
        removed: int,
        nbytes: int,
    ) -> None:
        """Ignore."""

    def acked(self, node_id: str, type_url: str, version: str, latency_s: float) -> None:
        """Ignore."""

    def nacked(self, node_id: str, type_url: str, version: str, error: str) -> None:
        """Ignore."""
