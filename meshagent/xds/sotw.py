"""Sans-io state-of-the-world ADS: DiscoveryRequests in, DiscoveryResponses out.

A response of a wildcard type (Cluster, Listener: a missing one is deleted) carries all its
resources. For the others (asked for by name, never deleted by absence) the protocol groups
resources as delta does: after the first response, one carries only the requested resources
that changed or were not sent yet, so that one endpoint change sends one ClusterLoadAssignment,
not every cluster's (Istio's incremental EDS push does the same). A type is resent only when
its content changed; version_info is a hash of the whole content, so it is the same across
agent restarts. After a NACK, the resources of the rejected response that its error does not
name go again with the next change (Envoy may have applied none of them); when it names none,
the next response carries everything; one never answered is treated as rejected unnamed.
See meshagent.xds.protocol for the pipelining decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest as Request
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse as Response

from meshagent.xds import typeurls
from meshagent.xds.protocol import (
    PUSH_ORDER,
    REMOVAL_ORDER,
    SERVE_ALL,
    Acked,
    InFlight,
    Nacked,
    Pushed,
    ServePolicy,
    StreamCore,
    busy_types,
    check_type_url,
    eds_names,
    is_held,
    named_in,
    node_id_of,
)
from meshagent.xds.resources import Resource

log = structlog.get_logger("meshagent.xds")

Content = Mapping[str, Resource]


def content_version(content: Content) -> str:
    """The version_info of a response: a hash of its resource names and versions."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(content):
        digest.update(f"{name}\0{content[name].version}\n".encode())
    return digest.hexdigest()


@dataclass(slots=True)
class _TypeState:
    wildcard: bool
    names: frozenset[str] = frozenset()
    responded: bool = False
    last_nonce: str = ""
    sent: dict[str, Resource] = field(default_factory=dict)
    sent_version: str | None = None
    nacked_version: str | None = None
    force: bool = False
    # What the proxy holds of the last response is not known: it rejected it (Envoy applies
    # a rejected response partly, its watches in order up to the failing one) or never
    # answered it. unsure: the next response carries the whole content, not only what
    # differs from sent; resend: it also carries these names (the resources of a rejected
    # response that its error does not name: the bad ones are sent again only once changed,
    # so that they do not hold back every later change).
    unsure: bool = False
    resend: set[str] = field(default_factory=set)
    last_names: frozenset[str] = frozenset()  # in the last response


class SotwStream(StreamCore):
    """The state-of-the-world xDS protocol state of one stream, without I/O.

    Same shape as DeltaStream: `on_request`, `on_snapshot`, `take_events`.
    """

    def __init__(self, node_id: str | None = None, policy: ServePolicy = SERVE_ALL) -> None:
        super().__init__(node_id, policy)
        self._types: dict[str, _TypeState] = {}

    def on_request(self, request: Request) -> list[Response]:
        """Apply a request (subscription, ACK or NACK); returns responses to send.

        Raises RemoteProtocolError for a request the protocol does not allow.
        """
        node_id = node_id_of(request.node, self._node_id)
        check_type_url(request.type_url)
        self._node_id = node_id
        self._check_policy(request.type_url)
        names = frozenset(request.resource_names) - {"*"}
        state = self._types.get(request.type_url)
        if state is None:
            wildcard = request.type_url in typeurls.WILDCARD_TYPES and (
                not names or "*" in request.resource_names
            )
            self._types[request.type_url] = _TypeState(wildcard=wildcard, names=names)
            return self._flush()
        if request.response_nonce:
            self._settle(request)
        if request.response_nonce and request.response_nonce != state.last_nonce:
            # Stale: a newer response of this type is on its way and the proxy will answer
            # it with up-to-date names; the protocol says to ignore this one.
            log.debug("stale_nonce", proxy=self._node_id, type_url=request.type_url)
            return self._flush()
        state.names = names
        return self._flush()

    def requested(self, type_url: str) -> frozenset[str]:
        """Names the proxy asked for (empty for a wildcard type)."""
        state = self._types.get(type_url)
        return state.names if state else frozenset()

    def is_wildcard(self, type_url: str) -> bool:
        """True when the proxy asked for every resource of this type."""
        state = self._types.get(type_url)
        return bool(state and state.wildcard)

    def sent_version(self, type_url: str) -> str | None:
        """version_info of the last complete response of this type."""
        state = self._types.get(type_url)
        return state.sent_version if state else None

    def nacked_version(self, type_url: str) -> str | None:
        """version_info of the last response of this type the proxy rejected."""
        state = self._types.get(type_url)
        return state.nacked_version if state else None

    def _settle(self, request: Request) -> Acked | Nacked | None:
        event = super()._settle(request)
        if isinstance(event, Nacked):
            state = self._types[request.type_url]
            state.nacked_version = event.version
            named = {n for n in state.last_names if named_in(n, event.error)}
            if named:
                state.resend |= state.last_names - named
            else:
                state.unsure = True
        elif isinstance(event, Acked):
            self._retryable.discard(request.type_url)  # a response carries every resource
        return event

    def abandon_in_flight(self) -> list[Response]:
        """StreamCore.abandon_in_flight; what the proxy holds of the types it did not answer
        is not known from now on (_TypeState.unsure)."""
        for flight in self._in_flight.values():
            self._types[flight.type_url].unsure = True
        return super().abandon_in_flight()

    def _prepare_retry(self, type_url: str) -> None:
        state = self._types.get(type_url)
        if state is not None:
            state.force = True

    def _content(self, state: _TypeState, available: Content) -> dict[str, Resource]:
        if state.wildcard:
            return dict(available)
        return {n: available[n] for n in state.names if n in available}

    def _flush(self) -> list[Response]:
        if self._snapshot is None:
            return []
        resources = self._snapshot[1]
        busy = busy_types(self._in_flight)
        updates: list[Response] = []
        finals: dict[str, dict[str, Resource]] = {}
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is None or is_held(type_url, busy):
                continue  # never send a type the proxy has not asked for, or one on hold
            content = self._content(state, resources.of(type_url))
            version = content_version(content)
            if state.responded and not state.force and version == state.sent_version:
                # Unchanged, or exactly what the proxy NACKed: never resend it in a loop.
                continue
            if type_url == typeurls.CLUSTER:
                self._resend_endpoints_if_updated(state, content)
            gone = state.sent.keys() - content.keys() if state.wildcard else set()
            if gone:
                # Make before break: keep the deleted ones until everything else moved on.
                bridge = {**{n: state.sent[n] for n in gone}, **content}
                updates.append(self._response(type_url, bridge))
                finals[type_url] = content
            elif state.wildcard or not state.responded or state.force or state.unsure:
                updates.append(self._response(type_url, content))
                state.unsure = False
                state.resend.clear()
            elif changed := _changed(state.sent, content):
                changed.update((n, content[n]) for n in state.resend if n in content)
                state.resend.clear()
                updates.append(self._response(type_url, changed, version))
            state.sent, state.sent_version = content, version
            state.responded, state.force = True, False
        tail = [self._response(t, finals[t]) for t in REMOVAL_ORDER if t in finals]
        return updates + tail

    def _resend_endpoints_if_updated(self, state: _TypeState, content: Content) -> None:
        # Envoy warms an updated cluster only when its ClusterLoadAssignment arrives again.
        endpoints = self._types.get(typeurls.ENDPOINT)
        if endpoints is None:
            return
        updated = [
            r for n, r in content.items() if n in state.sent and state.sent[n].version != r.version
        ]
        if eds_names(updated) & endpoints.names:
            endpoints.force = True

    def _response(self, type_url: str, content: Content, version: str | None = None) -> Response:
        """A response carrying content, versioned as the whole content it is part of (by
        default, content itself)."""
        nonce = self._nonces.next()
        version = content_version(content) if version is None else version
        response = Response(type_url=type_url, version_info=version, nonce=nonce)
        for name in sorted(content):
            resource, body = content[name], response.resources.add()
            body.type_url, body.value = resource.type_url, resource.value  # (see DeltaStream)
        state = self._types[type_url]
        state.last_nonce, state.last_names = nonce, frozenset(content)
        self._track(nonce, InFlight(type_url, version))
        self._events.append(Pushed(type_url, version, nonce, len(content), 0, response.ByteSize()))
        return response


def _changed(sent: Content, content: Content) -> dict[str, Resource]:
    """The resources of content the proxy does not hold at their version (per what was sent).

    Empty when the content only lost names: the proxy dropped those itself."""
    out: dict[str, Resource] = {}
    for name, resource in content.items():
        held = sent.get(name)
        if held is None or held.version != resource.version:
            out[name] = resource
    return out
