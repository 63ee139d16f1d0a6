"""The ADS gRPC service: a thin grpc.aio shell around the sans-io streams and the cache.

One grpc.aio server per listener (Unix socket, TCP), each with its ServePolicy: secrets only
on the Unix socket. Per stream it reads requests and waits for newer cache snapshots
concurrently, feeds both to a DeltaStream or SotwStream, writes what they return, and reports
pushes, ACKs and NACKs to the cache's status and to the observer. A request that breaks the
protocol ends that stream with INVALID_ARGUMENT; the server and every other stream carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.status.v3 import csds_pb2_grpc

from meshagent.errors import ConfigError
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.csds import CsdsServicer
from meshagent.xds.delta import DeltaStream
from meshagent.xds.errors import LocalProtocolError, RemoteProtocolError
from meshagent.xds.events import NullObserver, XdsObserver
from meshagent.xds.protocol import (
    NO_SECRETS,
    PUSH_ORDER,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    SERVE_ALL,
    Acked,
    Nacked,
    Pushed,
    ServePolicy,
    StreamEvent,
    Withheld,
)
from meshagent.xds.sotw import SotwStream
from meshagent.xds.status import ProxyStatus

log = structlog.get_logger("meshagent.xds")

AnyStream = DeltaStream | SotwStream
ABANDONED_KEPT = 64  # push times kept for answers given up on (one per type is the usual)


class AdsServer:
    """Serves ADS (delta and SotW) and CSDS from a SnapshotCache on one gRPC server."""

    def __init__(self, cache: SnapshotCache, observer: XdsObserver | None = None) -> None:
        self._cache = cache
        self._observer: XdsObserver = observer or NullObserver()
        self._servers: list[Any] = []
        self._tcp_port: int | None = None
        # Envoy answers every response within milliseconds; after this long without an
        # answer the stream stops waiting (see DeltaStream.abandon_in_flight).
        self.answer_timeout = 15.0

    @property
    def tcp_port(self) -> int | None:
        """The bound TCP port (useful with "127.0.0.1:0"); None without TCP."""
        return self._tcp_port

    async def start(
        self, *, uds_path: str | None = None, tcp_address: str | None = None, uds_mode: int = 0o660
    ) -> None:
        """Listen on a Unix socket and/or a TCP address like "127.0.0.1:15010".

        A stale socket file at `uds_path` is removed first; the new one gets `uds_mode` so that
        only the agent's user and group (Envoy's) can connect. Each listener is its own gRPC
        server with its own ServePolicy: the Unix socket serves everything, TCP never serves
        secrets (NO_SECRETS), since nothing authenticates a TCP peer.
        """
        if self._servers:
            raise LocalProtocolError("AdsServer already started")
        if not uds_path and not tcp_address:
            raise LocalProtocolError("AdsServer.start needs uds_path or tcp_address")
        if uds_path:
            remove_stale_socket(uds_path)
        servers: list[Any] = []
        try:
            if uds_path:
                servers.append(self._new_server(SERVE_ALL))
                servers[-1].add_insecure_port(f"unix:{uds_path}")
                await servers[-1].start()
                os.chmod(uds_path, uds_mode)
            if tcp_address:
                servers.append(self._new_server(NO_SECRETS))
                self._tcp_port = servers[-1].add_insecure_port(tcp_address)
                await servers[-1].start()
        except BaseException:
            for server in servers:  # a half-built server must not be left to the GC
                await server.stop(None)
            raise
        self._servers = servers
        log.info("xds_listening", uds=uds_path, tcp=tcp_address, tcp_port=self._tcp_port)

    def _new_server(self, policy: ServePolicy) -> Any:
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            _Servicer(self, policy), server
        )
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsServicer(self._cache), server
        )
        return server

    async def stop(self, grace: float = 1.0) -> None:
        """Stop serving; open streams get `grace` seconds before they are cancelled."""
        servers, self._servers = self._servers, []
        if servers:
            await asyncio.gather(*(server.stop(grace) for server in servers))
            log.info("xds_stopped")

    async def serve(
        self, stream: AnyStream, kind: str, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Run one ADS stream to its end; yields the responses to write."""
        peer = str(context.peer())
        session = _Session(self._cache, self._observer, stream, kind, self.answer_timeout, peer)
        try:
            async for response in session.run(requests):
                yield response
        except RemoteProtocolError as error:
            log.warning("xds_bad_request", proxy=stream.node_id, error=str(error))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            # A bug must end this stream only, and loudly; Envoy reconnects and starts afresh.
            log.exception("xds_stream_failed", proxy=stream.node_id, stream=kind)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the ADS server")
        finally:
            session.close()


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: AdsServer, policy: ServePolicy) -> None:
        self._server = server
        self._policy = policy

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        # grpc.aio streams responses only from a handler that is itself an async generator.
        stream = SotwStream(policy=self._policy)
        async for response in self._server.serve(stream, "sotw", request_iterator, context):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        # grpc.aio streams responses only from a handler that is itself an async generator.
        stream = DeltaStream(policy=self._policy)
        async for response in self._server.serve(stream, "delta", request_iterator, context):
            yield response


class _Session:
    """One stream's plumbing between gRPC, the sans-io stream, the cache and the observer."""

    def __init__(
        self,
        cache: SnapshotCache,
        observer: XdsObserver,
        stream: AnyStream,
        kind: str,
        answer_timeout: float,
        peer: str = "",
    ) -> None:
        self._cache = cache
        self._answer_timeout = answer_timeout
        self._observer = observer
        self._stream = stream
        self._kind = kind
        self._node: str | None = None
        self.peer = peer
        self._pushed_at: dict[str, float] = {}
        self._abandoned_at: dict[str, float] = {}  # push times of responses given up on
        self._tasks: list[asyncio.Future[Any]] = []
        self._retry_at: float | None = None  # when to resend what was rejected transiently
        self._retry_delay = RETRY_FIRST_S

    async def run(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        reading: asyncio.Future[Any] = asyncio.ensure_future(anext(requests))
        watching: asyncio.Future[int] | None = None
        self._tasks = [reading]
        while True:
            waiting = {reading} if watching is None else {reading, watching}
            done, _ = await asyncio.wait(
                waiting, timeout=self._next_timeout(), return_when=asyncio.FIRST_COMPLETED
            )
            responses: list[Any] = [] if done else self._on_timeout()
            if reading in done:
                try:
                    request = reading.result()
                except StopAsyncIteration:
                    return
                responses += self._stream.on_request(request)
                reading = asyncio.ensure_future(anext(requests))
            if self._node is None and self._stream.node_id is not None:
                self._connect(self._stream.node_id)
            if watching is None or watching in done:
                watching = self._watch(responses)
            self._tasks = [reading] if watching is None else [reading, watching]
            for response in responses:
                yield response
            self._report(self._stream.take_events())
            self._note_settled()
            self._note_rejected()

    def _next_timeout(self) -> float | None:
        """Seconds until an answer times out or a retry is due; None when neither is pending."""
        waits = [w for w in (self._answer_wait(), self._retry_wait()) if w is not None]
        return min(waits) if waits else None

    def _retry_wait(self) -> float | None:
        if self._retry_at is None:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def _on_timeout(self) -> list[Any]:
        answer, retry = self._answer_wait(), self._retry_wait()
        responses: list[Any] = []
        if answer is not None and answer <= 0:
            responses += self._give_up_waiting()
        if retry is not None and retry <= 0 and not self._retry_blocked():
            self._retry_at = None
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)
            log.info(
                "xds_retrying_rejected",
                proxy=self._node,
                types=sorted(self._stream.retryable),
                next_delay_s=self._retry_delay,
            )
            responses += self._stream.retry_rejected()
        elif retry is not None and retry <= 0:
            self._retry_at = time.monotonic() + RETRY_FIRST_S  # answers pending: retry later
        return responses

    def _retry_blocked(self) -> bool:
        """A rejected type's own response is still unanswered (other types do not count: a
        route of a listener that failed stays unanswered until the answer timeout)."""
        retryable = self._stream.retryable
        return any(f.type_url in retryable for f in self._stream.in_flight.values())

    def _note_rejected(self) -> None:
        """Mirror the stream's rejected resources into the status and (un)schedule retries."""
        if not self._stream.retryable:
            self._retry_at, self._retry_delay = None, RETRY_FIRST_S
        elif self._retry_at is None and not self._retry_blocked():
            self._retry_at = time.monotonic() + self._retry_delay
        if self._node is None or not isinstance(self._stream, DeltaStream):
            return
        status = self._cache.status(self._node)
        for type_url in PUSH_ORDER:
            names = tuple(sorted(self._stream.rejected(type_url)))
            if status.of(type_url).rejected != names:
                self._cache.update_status(self._node, _rejected_setter(type_url, names))

    def _note_settled(self) -> None:
        settled = self._stream.settled_version
        if self._node is not None and settled is not None:
            self._cache.update_status(self._node, lambda s: s.with_settled(settled))

    def _answer_wait(self) -> float | None:
        """Seconds until the oldest unanswered response times out; None when none is pending."""
        if not self._pushed_at:
            return None
        oldest = min(self._pushed_at.values())
        return max(0.0, oldest + self._answer_timeout - time.monotonic())

    def _give_up_waiting(self) -> list[Any]:
        log.warning("xds_answer_timeout", proxy=self._node, stream=self._kind)
        if len(self._abandoned_at) > ABANDONED_KEPT:  # answers that never came
            self._abandoned_at.clear()
        self._abandoned_at.update(self._pushed_at)  # a late answer still has its latency
        self._pushed_at.clear()
        return self._stream.abandon_in_flight()

    def _watch(self, responses: list[Any]) -> asyncio.Future[int] | None:
        """Feed the latest snapshot (if newer than the stream's) and wait for the next one."""
        if self._node is None:
            return None
        version, resources = self._cache.get(self._node)
        if version:
            responses += self._stream.on_snapshot(version, resources)
        return asyncio.ensure_future(self._cache.wait_newer(self._node, version))

    def _connect(self, node: str) -> None:
        self._node = node
        self._cache.update_status(node, lambda s: s.with_connected(self._kind))
        log.info("xds_connected", proxy=node, stream=self._kind)
        self._observer.connected(node, self._kind)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._node is None:
            return
        self._cache.update_status(self._node, lambda s: s.with_disconnected())
        log.info("xds_disconnected", proxy=self._node, stream=self._kind)
        with contextlib.suppress(Exception):
            self._observer.disconnected(self._node, self._kind)

    def _report(self, events: list[StreamEvent]) -> None:
        node = self._node
        if node is None:
            return
        for event in events:
            if isinstance(event, Pushed):
                self._on_pushed(node, event)
            elif isinstance(event, Acked):
                self._on_acked(node, event)
            elif isinstance(event, Nacked):
                self._on_nacked(node, event)
            elif isinstance(event, Withheld):
                log.warning(
                    "xds_type_withheld",
                    proxy=node,
                    peer=self.peer,
                    type_url=event.type_url,
                    reason=event.reason,
                )

    def _on_pushed(self, node: str, event: Pushed) -> None:
        now = time.monotonic()
        self._pushed_at[event.nonce] = now
        self._cache.update_status(node, lambda s: s.with_pushed(event.type_url, event.version, now))
        log.debug(
            "xds_pushed",
            proxy=node,
            type_url=event.type_url,
            version=event.version,
            resources=event.resources,
            removed=event.removed,
        )
        self._observer.pushed(
            node, event.type_url, event.version, event.resources, event.removed, event.nbytes
        )

    def _on_acked(self, node: str, event: Acked) -> None:
        now = time.monotonic()
        pushed = self._pushed_at.pop(event.nonce, None) or self._abandoned_at.pop(event.nonce, now)
        latency = now - pushed
        self._cache.update_status(node, lambda s: s.with_acked(event.type_url, event.version, now))
        log.debug("xds_acked", proxy=node, type_url=event.type_url, version=event.version)
        self._observer.acked(node, event.type_url, event.version, latency)

    def _on_nacked(self, node: str, event: Nacked) -> None:
        now = time.monotonic()
        self._pushed_at.pop(event.nonce, None)
        self._cache.update_status(
            node, lambda s: s.with_nacked(event.type_url, event.version, event.error, now)
        )
        log.warning(
            "xds_nacked",
            proxy=node,
            type_url=event.type_url,
            version=event.version,
            error=event.error,
        )
        self._observer.nacked(node, event.type_url, event.version, event.error)


def _rejected_setter(type_url: str, names: tuple[str, ...]) -> Callable[[ProxyStatus], ProxyStatus]:
    return lambda status: status.with_rejected(type_url, names)


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left by an earlier run; refuse to remove anything else, and a
    socket that a live process still listens on (another agent's: taking it over would cut
    its Envoy off)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("exists and is not a socket; not removing it", location=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: left by a process that is gone
    except OSError as exc:
        raise ConfigError(
            f"cannot tell whether another process serves this socket ({exc.strerror or exc}); "
            "not removing it",
            location=path,
        ) from None
    else:
        raise ConfigError(
            "another process (another meshagent?) is listening on this socket; not starting",
            location=path,
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
