"""What the agent knows about each proxy's xDS stream: connected, what was sent, ACKed, NACKed.

Written by the ADS server through SnapshotCache.update_status, read by /readyz, metrics and
`meshagent status`. Values are frozen; every transition returns a new ProxyStatus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One type URL on one proxy. Times are time.monotonic() seconds."""

    last_sent_version: str | None = None
    last_acked_version: str | None = None
    last_nack_version: str | None = None
    last_nack_error: str | None = None
    sent_at: float | None = None
    acked_at: float | None = None
    nacked_at: float | None = None
    # Resources the proxy rejected and has not accepted since (delta streams: a later ACK of
    # other resources does not cover them), e.g. a listener whose port was taken.
    rejected: tuple[str, ...] = ()

    @property
    def acked(self) -> bool:
        """True when the last response sent for this type has been ACKed."""
        return self.last_sent_version is not None and self.last_acked_version == (
            self.last_sent_version
        )


def _empty_types() -> Mapping[str, TypeStatus]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """The xDS status of one node id.

    `stream` is "delta", "sotw" or "" when no stream is open; `streams` counts open streams
    (an Envoy hot restart briefly has two). Per-type state is reset when a new stream opens,
    because ACKs on an old stream say nothing about the new one.
    """

    connected: bool = False
    stream: str = ""
    streams: int = 0
    types: Mapping[str, TypeStatus] = field(default_factory=_empty_types)
    # The cache version whose every response the proxy has answered (0: none yet on this
    # stream): readiness compares it with the cache's version, so that a set published but
    # not yet sent or answered does not count as applied.
    settled_version: int = 0

    def of(self, type_url: str) -> TypeStatus:
        """The status of one type URL (an empty TypeStatus when nothing happened yet)."""
        return self.types.get(type_url, TypeStatus())

    def acked_all(self, types: Iterable[str]) -> bool:
        """True when connected and every given type has an ACK for what was last sent.

        Callers pass the type URLs that have resources in the node's current ResourceSet.
        """
        return self.connected and all(self.of(t).acked for t in types)

    def with_connected(self, stream: str) -> ProxyStatus:
        """A new stream opened."""
        return ProxyStatus(connected=True, stream=stream, streams=self.streams + 1)

    def with_disconnected(self) -> ProxyStatus:
        """A stream closed; per-type history is kept for display."""
        streams = max(0, self.streams - 1)
        return dataclasses.replace(
            self, connected=streams > 0, streams=streams, stream=self.stream if streams else ""
        )

    def with_settled(self, version: int) -> ProxyStatus:
        """The proxy has answered everything sent for cache version `version`."""
        if version == self.settled_version:
            return self
        return dataclasses.replace(self, settled_version=version)

    def with_pushed(self, type_url: str, version: str, now: float) -> ProxyStatus:
        """A response of this type was written to the stream."""
        return self._with(type_url, last_sent_version=version, sent_at=now)

    def with_acked(self, type_url: str, version: str, now: float) -> ProxyStatus:
        """The proxy ACKed the response carrying `version`."""
        return self._with(type_url, last_acked_version=version, acked_at=now)

    def with_nacked(self, type_url: str, version: str, error: str, now: float) -> ProxyStatus:
        """The proxy rejected the response carrying `version` with `error`."""
        return self._with(type_url, last_nack_version=version, last_nack_error=error, nacked_at=now)

    def with_rejected(self, type_url: str, names: tuple[str, ...]) -> ProxyStatus:
        """The resources of this type the proxy rejected and does not hold."""
        if self.of(type_url).rejected == names:
            return self
        return self._with(type_url, rejected=names)

    def _with(self, type_url: str, **changes: object) -> ProxyStatus:
        updated = dataclasses.replace(self.of(type_url), **changes)  # type: ignore[arg-type]
        types = {**self.types, type_url: updated}
        return dataclasses.replace(self, types=MappingProxyType(types))
