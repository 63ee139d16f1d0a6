"""Pieces shared by the sans-io delta and state-of-the-world streams.

Nothing here does I/O or reads a clock: streams take requests and snapshots in, give responses
and StreamEvents out, and the gRPC shell does the rest.

Pipelining decision (both variants): within one push, responses of different types go out
back to back without waiting (Envoy applies ADS responses in stream order, so CDS before EDS
before LDS before RDS is honoured without round trips). Across pushes, a type waits for the
answer to its own previous response, so a NACK is always attributed to the response it rejects
and bursts of snapshots coalesce. Listeners and routes also wait while a cluster response is
unanswered, so make-before-break holds across pushes. Endpoints never wait for clusters, nor
routes for listeners: Envoy holds back its ACK of a cluster (listener) update until the new
clusters (listeners) have warmed, and warming needs their endpoints (routes); waiting there
would deadlock until the answer timeout. The one case where Envoy leaves a response unanswered
for good (a type it stopped watching a moment ago) is covered by the shell's answer timeout,
after which the stream stops waiting (`abandon_in_flight`).
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2

from meshagent.xds import typeurls
from meshagent.xds.errors import RemoteProtocolError
from meshagent.xds.redact import redact_error_text
from meshagent.xds.resources import Resource, ResourceSet

log = structlog.get_logger("meshagent.xds")

# Removals go after every update, referrers before what they refer to: a listener before its
# routes, a cluster before its endpoints, secrets last.
REMOVAL_ORDER: tuple[str, ...] = (
    typeurls.LISTENER,
    typeurls.ROUTE,
    typeurls.CLUSTER,
    typeurls.ENDPOINT,
    typeurls.SECRET,
)

PUSH_ORDER = typeurls.PUSH_ORDER
KNOWN_TYPES = frozenset(PUSH_ORDER)

# The types whose unanswered responses hold back a new response of a type (see above).
HELD_BY: dict[str, frozenset[str]] = {
    typeurls.SECRET: frozenset({typeurls.SECRET}),
    typeurls.CLUSTER: frozenset({typeurls.CLUSTER}),
    typeurls.ENDPOINT: frozenset({typeurls.ENDPOINT}),
    typeurls.LISTENER: frozenset({typeurls.LISTENER, typeurls.CLUSTER}),
    typeurls.ROUTE: frozenset({typeurls.ROUTE, typeurls.CLUSTER}),
}


@dataclass(frozen=True, slots=True)
class Pushed:
    """A response was produced; the shell reports it once it is written."""

    type_url: str
    version: str
    nonce: str
    resources: int
    removed: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The proxy accepted the response with this nonce."""

    type_url: str
    version: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Nacked:
    """The proxy rejected the response with this nonce; `error` is its error_detail message."""

    type_url: str
    version: str
    nonce: str
    error: str


@dataclass(frozen=True, slots=True)
class Withheld:
    """The proxy asked for a type its listener does not serve (see ServePolicy)."""

    type_url: str
    reason: str


StreamEvent = Pushed | Acked | Nacked | Withheld


@dataclass(frozen=True, slots=True)
class ServePolicy:
    """What one listener of the ADS server may serve.

    A stream under a policy sees snapshots without the `withheld` types: a proxy that asks
    for one gets the protocol's answer for resources that do not exist (none in SotW, a
    removal in delta), never an error that would end its other subscriptions.
    """

    withheld: frozenset[str] = frozenset()
    reason: str = ""


SERVE_ALL = ServePolicy()
# Secrets (workload private keys) go only to peers the kernel vouches for: the Unix socket's
# file mode admits the agent's group only, while anyone who can reach a TCP port and guess
# the node id could ask for them.
NO_SECRETS = ServePolicy(
    frozenset({typeurls.SECRET}), "secrets are served only on the Unix socket (xds.uds)"
)


@dataclass(frozen=True, slots=True)
class InFlight:
    """A response sent and not yet answered."""

    type_url: str
    version: str


class Nonces:
    """Fresh nonces; a random per-stream prefix so a nonce from an earlier stream never matches."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._count = 0

    def next(self) -> str:
        """A nonce never returned before by this object."""
        self._count += 1
        return f"{self._prefix}-{self._count}"


def busy_types(in_flight: Mapping[str, InFlight]) -> frozenset[str]:
    """Type URLs with a response awaiting its answer."""
    return frozenset(f.type_url for f in in_flight.values())


def is_held(type_url: str, busy: frozenset[str]) -> bool:
    """True when a new response of type_url must wait (see the pipelining decision)."""
    return not HELD_BY[type_url].isdisjoint(busy)


def check_type_url(type_url: str) -> None:
    """Raise RemoteProtocolError unless `type_url` is one this server serves."""
    if not type_url:
        raise RemoteProtocolError("request without type_url (ADS needs one on every request)")
    if type_url not in KNOWN_TYPES:
        raise RemoteProtocolError(f"unsupported type_url {type_url!r}")


def node_id_of(node: base_pb2.Node, current: str | None) -> str:
    """The stream's node id after this request: set by the first request, fixed afterwards."""
    if current is None:
        if not node.id:
            raise RemoteProtocolError("first request on the stream carries no node.id")
        return str(node.id)
    if node.id and node.id != current:
        raise RemoteProtocolError(f"node.id changed on the stream from {current!r} to {node.id!r}")
    return current


# NACK texts of failures that may pass without any config change: a listener's port held by
# another socket, or its address not configured yet. Only these are retried (see
# StreamCore.retry_rejected); any other NACK waits for new configuration.
TRANSIENT_ERRORS = ("cannot bind", "address already in use", "cannot assign requested address")
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


def is_transient(error: str) -> bool:
    """True when a NACK's error may clear without a config change (a port taken, say)."""
    text = error.lower()
    return any(marker in text for marker in TRANSIENT_ERRORS)


def error_message(status_message: str, code: int) -> str:
    """A NACK's error text; Envoy always sets a message, other clients may set only a code."""
    return status_message or f"rejected with code {code}"


def named_in(name: str, error: str) -> bool:
    """Whether a NACK's error names the resource: its name, not inside a longer name (Envoy
    quotes the rejected message, e.g. cluster_name: "outbound|80||web.ns.svc.cluster.local")."""
    if name not in error:
        return False
    return re.search(rf"(?<![\w.|-]){re.escape(name)}(?![\w.|-])", error) is not None


def eds_names(clusters: Iterable[Resource]) -> set[str]:
    """ClusterLoadAssignment names used by these EDS clusters (service_name, else cluster name)."""
    names: set[str] = set()
    for resource in clusters:
        if resource.type_url != typeurls.CLUSTER:
            continue
        # From the value: resource.body would build an Any that the Resource keeps.
        cluster = cluster_pb2.Cluster.FromString(resource.value)
        if cluster.type == cluster_pb2.Cluster.EDS:
            names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return names


class StreamCore(ABC):
    """What the delta and state-of-the-world streams share: the node, the responses awaiting an
    answer, the latest snapshot, nonces and events. Subclasses implement `_flush`, which turns
    the current state into the responses to send."""

    def __init__(self, node_id: str | None = None, policy: ServePolicy = SERVE_ALL) -> None:
        self._node_id = node_id
        self._in_flight: dict[str, InFlight] = {}
        # Responses the stream stopped waiting for (abandon_in_flight), by nonce, while no
        # newer response of their type was sent: a late answer to one still settles it.
        self._abandoned: dict[str, InFlight] = {}
        self._snapshot: tuple[int, ResourceSet] | None = None
        self._nonces = Nonces()
        self._events: list[StreamEvent] = []
        self._policy = policy
        self._refused: set[str] = set()
        self._shown: tuple[ResourceSet, ResourceSet] | None = None  # (cache's set, ours)
        # Types whose last answer was a NACK that may clear by itself (is_transient).
        self._retryable: set[str] = set()

    @property
    def node_id(self) -> str | None:
        """The node id from the first request; None before it."""
        return self._node_id

    @property
    def in_flight(self) -> Mapping[str, InFlight]:
        """Responses awaiting ACK or NACK, by nonce."""
        return dict(self._in_flight)

    @property
    def settled_version(self) -> int | None:
        """The cache version the proxy has answered everything of: every response this stream
        sent for it was ACKed or NACKed, and nothing is held back (types wait only on answers).
        None while responses are in flight or before the first snapshot."""
        if self._snapshot is None or self._in_flight:
            return None
        return self._snapshot[0]

    def on_snapshot(self, version: int, resources: ResourceSet) -> list[Any]:
        """A new cache snapshot; returns the responses that bring the proxy up to date."""
        self._snapshot = (version, self._visible(resources))
        return self._flush()

    def _visible(self, resources: ResourceSet) -> ResourceSet:
        """resources without the withheld types, keeping the change hint where it holds."""
        withheld = self._policy.withheld
        if withheld.isdisjoint(resources.by_type):
            shown = resources
        else:
            kept = {t: m for t, m in resources.by_type.items() if t not in withheld}
            last = self._shown
            changes = resources.changed_since(last[0]) if last is not None else None
            if last is None or changes is None:
                shown = ResourceSet(by_type=MappingProxyType(kept))
            else:
                changed = {t: n for t, n in changes.items() if t not in withheld}
                shown = ResourceSet.derive(last[1], kept, changed)
        self._shown = (resources, shown)
        return shown

    def _check_policy(self, type_url: str) -> None:
        """Note (once per type) a request for a type this stream's listener withholds."""
        if type_url in self._policy.withheld and type_url not in self._refused:
            self._refused.add(type_url)
            self._events.append(Withheld(type_url, self._policy.reason))

    def take_events(self) -> list[StreamEvent]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def abandon_in_flight(self) -> list[Any]:
        """Stop waiting for answers to the responses in flight; returns what to send next.

        For the shell's answer timeout: Envoy silently drops a response of a type it has just
        stopped watching, and one lost answer must not stall the stream forever.
        """
        if self._in_flight:
            log.warning("xds_unanswered", proxy=self._node_id, nonces=sorted(self._in_flight))
        self._abandoned.update(self._in_flight)
        self._in_flight.clear()
        return self._flush()

    def _track(self, nonce: str, flight: InFlight) -> None:
        """Wait for the answer to a response just produced. An abandoned response of its type
        is superseded: an answer to that one is stale from now on."""
        if self._abandoned:
            self._abandoned = {
                n: f for n, f in self._abandoned.items() if f.type_url != flight.type_url
            }
        self._in_flight[nonce] = flight

    @property
    def retryable(self) -> frozenset[str]:
        """Type URLs whose last answer was a transient NACK (a listener's port taken, say)."""
        return frozenset(self._retryable)

    def retry_rejected(self) -> list[Any]:
        """Send again what the proxy rejected with a transient error; returns what to send.

        The one deliberate exception to "never resend a NACKed version": the shell calls it
        on a bounded backoff while `retryable` is not empty, so a port that frees up later
        gets its listener without a config change.
        """
        for type_url in sorted(self._retryable):
            log.info("xds_retry_rejected", proxy=self._node_id, type_url=type_url)
            self._prepare_retry(type_url)
        return self._flush()

    @abstractmethod
    def _prepare_retry(self, type_url: str) -> None:
        """Make the next flush send the rejected resources of type_url again."""

    @abstractmethod
    def _flush(self) -> list[Any]:
        """The responses that bring the proxy up to date; each protocol variant has its own."""

    def _settle(self, request: Any) -> Acked | Nacked | None:
        """Record the ACK or NACK a request carries; None when its nonce is stale (a nonce that
        names no unanswered response of this type), which the protocol says to ignore."""
        nonce = request.response_nonce
        flight = self._in_flight.get(nonce)
        waiting = self._in_flight
        if flight is None:  # a late answer (Envoy took longer than the answer timeout)?
            flight, waiting = self._abandoned.get(nonce), self._abandoned
        if flight is None or flight.type_url != request.type_url:
            log.debug("stale_nonce", proxy=self._node_id, type_url=request.type_url)
            return None
        del waiting[nonce]
        version = flight.version
        event: Acked | Nacked
        if request.HasField("error_detail"):
            detail = request.error_detail
            # Envoy's validation errors quote the rejected message whole (DebugString): an
            # inline key never reaches the status pages, config errors or logs this way.
            text = redact_error_text(error_message(detail.message, detail.code))
            event = Nacked(request.type_url, version, nonce, text)
            if is_transient(text):
                self._retryable.add(request.type_url)
            else:
                self._retryable.discard(request.type_url)
        else:
            event = Acked(request.type_url, version, nonce)
        self._events.append(event)
        return event
