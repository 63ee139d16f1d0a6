"""The Consul adapter: catalog, health and config entries, watched with blocking queries.

Watches: /v1/catalog/services (which services exist), /v1/config/<kind> per config-entry kind,
/v1/health/service/<name> for as many services as the connection budget allows, and, when the
catalog is bigger than that, /v1/health/state/any, which tells which of the other services
changed. Each follows Consul's rules for blocking queries (see consul_watch.next_index), takes
a token from its own bucket before every query (so a service that changes a thousand times a
second costs at most `qps` queries a second), and backs off with jitter after an error, after
which it reads afresh (index 0), since the Consul it reaches again may have lower indexes.
Queries go through py-consul's asyncio client (`consul.aio`, on aiohttp): a blocking query is a
coroutine waiting on its socket, not a thread.

The connection budget. A blocking query holds its HTTP connection for up to `wait`, and Consul
refuses a client IP's connections beyond `limits.http_max_conns_per_client` (default 200, for
every program on the host) with 429. So the client never opens more than `max_connections`
(the aiohttp pool's limit); long-lived watches take all but READ_RESERVE of them, and services
get their own blocking watch while slots remain (all of them in a catalog that fits). Beyond
that, the services that changed most recently keep their own watch (least recently changed
first out), and the others are followed through one blocking query on /v1/health/state/any (as
Fabio and Traefik watch a whole catalog): its answer lists every check with its ModifyIndex, so
a check that appears, changes or goes away names its service (a node's check: every service on
that node), which is then read once (non-blocking, at most READ_RESERVE at once) and emitted
if its X-Consul-Index moved. A change that touches no check (an instance registered or removed
without checks) moves the catalog's index but not the checks' one: then every service without
its own watch is read again (a sweep).

When is a move of the catalog's index explained? Its index is the highest Raft index of any
write to the services table, and one answer may coalesce several writes: the move from P to C
says nothing of the writes between. Raft indexes are shared by every table, so the move is
explained only when every index in (P, C] is accounted for by a write this adapter saw and
followed: a check's ModifyIndex (its service, or its node's services, were read again), an
instance's Service.ModifyIndex in an answer it read, a config entry's ModifyIndex. When C
itself is not accounted for, a checkless write happened at C: a sweep at once (one at a time,
a few reads at once). When C is but an index before it is not, that index may be a checkless
write as well as any other write Consul made meanwhile (KV, sessions, coordinates: a real
Consul makes them all the time, so this is the common case there, and a sweep each time would
re-read the whole catalog on every registration): a sweep then starts `sweep_interval_s` after
the last one began (at once if that is past). A change is thus never missed for longer than
about that interval plus one sweep, and the suspicion costs Consul at most one sweep per
interval. A move backwards (a snapshot restore, a rebuilt cluster) explains nothing and
forgets what was accounted for: a sweep at once.

Resources emitted (source "consul", apiVersion "consul/v1"):
- `ConsulService`, name = the service name: {"Name", "Datacenter", "Instances": the
  /v1/health/service entries (Node + Service + Checks)}. Only passing instances are asked for
  unless include_warning is set.
- `ConsulConfigEntry`, name = "<Kind>/<Name>": the entry as Consul returns it.
- `ConsulService`, name = "<datacenter>/<service>", body also {"Remote": true}: a service of
  another datacenter that a service-resolver fails over or redirects to, watched there with
  ?dc= (Consul forwards the query over WAN federation) for as long as a resolver names it.
  These watches come out of the same budget, before local services' (a local service is still
  followed by the checks watch; a remote one has nothing else): beyond what the budget leaves
  after the reads, the catalog, checks and config watches, the others are read once every
  `sweep_interval_s` (one-shot reads) and emitted when their index moved.

Faults never delete anything: an unreachable, failing (5xx, 403, 429) or garbled Consul only
yields errors (logged, and reported as SourceEvent errors, which the agent counts per source).
A resource is deleted only when Consul answers that it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from meshagent.adapters.consul_watch import Backoff, TokenBucket, next_index
from meshagent.model.source import Diagnostic, Provenance, RawResource, SourceEvent

SOURCE = "consul"
API_VERSION = "consul/v1"
SERVICE_KIND = "ConsulService"
CONFIG_KIND = "ConsulConfigEntry"
# Connections to Consul (see "The connection budget" above): at most max_connections, half of
# Consul's default limits.http_max_conns_per_client (200 per client IP, shared by every program
# on the host), of which READ_RESERVE stay free for one-shot reads.
MAX_CONNECTIONS = 100
MIN_CONNECTIONS = 16
READ_RESERVE = 4
LISTING_PARALLELISM = 32  # health reads in flight during the first listing
CATALOG_QPS = 5.0  # at most, for the catalog watch (see _watch_catalog)
SWEEP_GRACE_S = 2.0  # how long a catalog change waits for the checks' watch to explain it
SWEEP_INTERVAL_S = 60.0  # ConsulOptions.sweep_interval_s (see the module doc)
EXPLAINED_KEPT = 4096  # Raft indexes of writes seen and followed, remembered for that
CHECKS_QPS_FACTOR = 2.5  # the checks watch's bucket, in `qps` and `burst` (see _watch_checks)
CHECKS_BURST_FACTOR = 5
EVICTIONS_PER_ROUND = 2  # services that give up their watch per change noticed (see _changed)
CONFIG_KINDS = (
    "service-router",
    "service-splitter",
    "service-resolver",
    "service-intentions",
    "ingress-gateway",
    "terminating-gateway",
)

log = structlog.get_logger("meshagent.adapters.consul")


@dataclass(frozen=True, slots=True)
class ConsulOptions:
    """How to reach Consul and how hard to query it (agent config `sources.consul`)."""

    address: str = "127.0.0.1:8500"
    scheme: str = "http"
    datacenter: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    include_warning: bool = False
    qps: float = 20.0  # per watch (one per service, one per config kind, one for the catalog)
    burst: int = 20
    wait_s: float = 300.0
    config_kinds: tuple[str, ...] = CONFIG_KINDS
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 5.0
    max_connections: int = MAX_CONNECTIONS  # HTTP connections to Consul at once, at most
    sweep_interval_s: float = SWEEP_INTERVAL_S  # a suspect catalog move's sweep waits this long


class TokenFile:
    """The ACL token from token_file, re-read whenever the file's mtime or size changes."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._sig, self._value = path, (0, -1), ""

    def get(self) -> str | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size) != self._sig:
                self._value = self.path.read_text(encoding="utf-8").strip()
                self._sig = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            log.warning(
                "consul_token_unreadable", source=SOURCE, path=str(self.path), error=str(exc)
            )
        return self._value or None


def consul_client(options: ConsulOptions) -> Any:
    """py-consul's synchronous client for options (TLS, datacenter; the token is passed per
    request), for the few calls of service registration; the watches use consul_aio_client."""
    import consul  # py-consul; imported here so the rest of the agent never needs it

    host, _, port = options.address.rpartition(":")
    verify: bool | str = str(options.ca_file) if options.ca_file else True
    cert = (str(options.cert_file), str(options.key_file)) if options.cert_file else None
    return consul.Consul(
        host=host or "127.0.0.1",
        port=int(port or 8500),
        scheme=options.scheme,
        dc=options.datacenter,
        verify=verify,
        cert=cert,
    )


def consul_aio_client(options: ConsulOptions) -> Any:
    """py-consul's asyncio client for options (TLS, datacenter; the token is passed per request).

    Must be created inside the running event loop (aiohttp binds its session to it). A request's
    total time is capped a little above the longest blocking query (Consul adds up to wait/16 of
    jitter), so a connection that silently died fails the watch instead of hanging it."""
    import consul.aio  # py-consul[asyncio]; imported here so the rest of the agent never needs it

    host, _, port = options.address.rpartition(":")
    verify: bool | str = str(options.ca_file) if options.ca_file else True
    cert = (str(options.cert_file), str(options.key_file)) if options.cert_file else None
    return consul.aio.Consul(
        host=host or "127.0.0.1",
        port=int(port or 8500),
        scheme=options.scheme,
        dc=options.datacenter,
        verify=verify if options.scheme == "https" else False,
        cert=cert,
        connections_limit=max(options.max_connections, 1),
        connections_timeout=options.wait_s * 17 / 16 + 30.0,
    )


class ConsulAdapter:
    """Watches one Consul datacenter; see the module docstring for what it emits."""

    name = SOURCE

    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        self.queries = 0  # every query sent, for tests and debugging
        self.sweeps = 0  # re-reads of every service without its own watch (see _sweep)
        self._token = TokenFile(options.token_file)
        self._client: Any = None
        self._queue: asyncio.Queue[SourceEvent] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._helpers: set[asyncio.Task[None]] = set()  # one-shot reads and sweeps
        self._synced = False
        self._wait = f"{max(int(options.wait_s * 1000), 1)}ms"
        # Filled by the first listing: where each watch starts.
        self._catalog_index = 0
        self._services: dict[str, int] = {}  # service name -> health index last emitted
        self._known: set[str] = set()  # the services the catalog lists
        self._config_index: dict[str, int] = {}  # config kind -> index
        self._entries: dict[str, set[str]] = {}  # config kind -> resource names
        # service-resolver name -> (service, datacenter) targets elsewhere; those watched
        self._resolver_targets: dict[str, set[tuple[str, str]]] = {}
        self._remote: set[tuple[str, str]] = set()  # every remote service a resolver names
        self._remote_watched: set[tuple[str, str]] = set()  # those with a blocking watch
        self._remote_polled: dict[tuple[str, str], int] = {}  # the others -> index emitted
        # Services with their own watch, least recently changed first (see the module doc).
        self._pool: OrderedDict[str, None] = OrderedDict()
        # The checks' watch (on once the catalog outgrows the pool): (node, check ID) ->
        # (service name, ModifyIndex) as last listed, its index, and the indexes at which it
        # saw checks change (to tell a catalog change it explains from one it does not).
        self._detector = False
        self._checks: dict[tuple[str, str], tuple[str, int]] = {}
        self._checks_index = 0
        self._explained: OrderedDict[int, None] = OrderedDict()
        self._node_services: dict[str, set[str]] = {}  # node -> services with instances there
        self._detector_lock = asyncio.Lock()
        self._reads = asyncio.Semaphore(READ_RESERVE)
        self._sweep_due = float("inf")  # when the next sweep starts (the loop's clock)
        self._sweep_wake = asyncio.Event()  # set when _sweep_due moves earlier
        self._sweep_task: asyncio.Task[None] | None = None
        self._last_sweep = float("-inf")  # when the last sweep started
        self._refreshing = 0  # one-shot reads in flight (see _explain)
        self._sweep_promotions = 0  # services the running sweep may still give a watch

    async def __aenter__(self) -> ConsulAdapter:
        # The agent re-enters an adapter after a failure: start clean.
        self._client = consul_aio_client(self.options)
        self._queue = asyncio.Queue()
        self._synced = False
        self._detector_lock = asyncio.Lock()
        self._reads = asyncio.Semaphore(READ_RESERVE)
        self._sweep_wake = asyncio.Event()
        self._sweep_due = float("inf")
        # Every watch starts again: the other datacenters' too (see _watch_remote).
        self._remote, self._remote_watched, self._remote_polled = set(), set(), {}
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = [*self._tasks.values(), *self._helpers]
        if self._sweep_task is not None:
            tasks.append(self._sweep_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._helpers.clear()
        self._sweep_task = None
        if self._client is not None:  # cancelled queries have dropped their connections
            with contextlib.suppress(Exception):
                await self._client.http.close()
            self._client = None

    async def watch(self) -> AsyncIterator[SourceEvent]:
        """The first full listing (synced), then every change, until the context exits."""
        await self._initial_listing()
        self._spawn("catalog", self._watch_catalog(self._catalog_index, set(self._services)))
        if self._detector:
            self._spawn("checks", self._watch_checks(self._checks_index))
        for name in self._pool:
            self._spawn(f"svc:{name}", self._watch_service(name, self._services[name]))
        for kind, index in self._config_index.items():
            self._spawn(f"config:{kind}", self._watch_config(kind, index, self._entries[kind]))
        await self._watch_remote()
        while True:
            yield await self._queue.get()

    def _spawn(self, key: str, coro: Any) -> None:
        self._tasks[key] = asyncio.create_task(coro, name=f"consul-{key}")

    def _helper(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def _slots(self) -> int:
        """How many services may have their own blocking watch: the budget less the other
        long-lived watches (catalog, checks, config kinds, other datacenters' services) and
        the connections kept for one-shot reads."""
        fixed = 2 + len(self.options.config_kinds) + len(self._remote_watched)
        return max(self.options.max_connections - READ_RESERVE - fixed, 0)

    def _remote_room(self) -> int:
        """How many services of other datacenters may have a blocking watch: what the budget
        leaves after the reads, the catalog, checks and config watches (before local services:
        a failover target has no checks watch to follow it)."""
        fixed = 2 + len(self.options.config_kinds)
        return max(self.options.max_connections - READ_RESERVE - fixed, 0)

    # -- queries -----------------------------------------------------------------------------

    def _bucket(self) -> TokenBucket:
        return TokenBucket(self.options.qps, self.options.burst)

    async def _query(self, call: Any, bucket: TokenBucket | None = None) -> tuple[int, Any]:
        """One py-consul call (rate-limited by bucket when given): call(token) is awaited;
        (its X-Consul-Index as a number, its data). ValueError for an index that is not a
        number (raised here, in the caller's error handling, so that no watch dies of it)."""
        if bucket is not None:
            await bucket.acquire()
        self.queries += 1
        token = self._token.get()
        reported, data = await call(token)
        return _parse_index(reported), data

    def _catalog_call(self, index: int) -> Any:
        return lambda token: self._client.catalog.services(
            index=index or None, wait=self._wait, token=token
        )

    def _health_call(self, name: str, index: int, dc: str | None = None) -> Any:
        passing = not self.options.include_warning
        extra = {"dc": dc} if dc else {}
        return lambda token: self._client.health.service(
            name, index=index or None, wait=self._wait, passing=passing, token=token, **extra
        )

    def _checks_call(self, index: int) -> Any:
        """/v1/health/state/any: (X-Consul-Index, the body's JSON text, not decoded: see
        changed_checks)."""
        return self._text_call("/v1/health/state/any", index)

    def _catalog_text_call(self, index: int) -> Any:
        """/v1/catalog/services as (X-Consul-Index, the body's JSON text)."""
        return self._text_call("/v1/catalog/services", index)

    def _text_call(self, path: str, index: int) -> Any:
        from consul.callback import CB

        def text(response: Any) -> tuple[str, str]:
            CB._status(response, allow_404=False)
            if "X-Consul-Index" not in response.headers:
                raise ValueError("no X-Consul-Index header")
            return response.headers["X-Consul-Index"], str(response.body)

        def call(token: str | None) -> Any:
            headers = self._client.prepare_headers(token)
            return self._client.http.get(text, path, params=self._params(index), headers=headers)

        return call

    def _params(self, index: int) -> list[tuple[str, Any]]:
        """The query of a local-datacenter read: dc, and index and wait when it blocks."""
        params: list[tuple[str, Any]] = []
        if self.options.datacenter:
            params.append(("dc", self.options.datacenter))
        if index:
            params += [("index", index), ("wait", self._wait)]
        return params

    def _config_call(self, kind: str, index: int) -> Any:
        from consul.callback import CB

        def call(token: str | None) -> Any:
            headers = self._client.prepare_headers(token)
            path, params = f"/v1/config/{kind}", self._params(index)
            return self._client.http.get(CB.json(index=True), path, params=params, headers=headers)

        return call

    # -- the first listing -----------------------------------------------------------------------

    async def _initial_listing(self) -> None:
        """List everything once (retrying until Consul answers), as one synced event."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        while True:
            try:
                upserts = await self._list_all()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed("initial listing", exc, backoff)
        self._synced = True
        await self._queue.put(SourceEvent(SOURCE, upserts=tuple(upserts), synced=True))

    async def _list_all(self) -> list[RawResource]:
        index, services = await self._query(self._catalog_call(0))
        self._catalog_index = next_index(0, int(index or 0))
        names = sorted(_as_dict(services))
        self._known = set(names)
        self._services, self._node_services, self._pool = {}, {}, OrderedDict()
        self._detector, self._checks, self._checks_index = False, {}, 0
        if len(names) > self._slots():
            # Before the services are read: a check that changes after this listing of checks
            # and before its service's read is then seen as changed (read again, harmlessly).
            await self._list_checks()
        # Before any watch holds a connection, the listing may use them all but one.
        limit = asyncio.Semaphore(max(1, min(LISTING_PARALLELISM, self.options.max_connections)))

        async def one(name: str) -> RawResource:
            async with limit:
                idx, entries = await self._query(self._health_call(name, 0))
            instances = _as_list(entries)
            self._services[name] = next_index(0, int(idx or 0))
            self._note_nodes(name, instances)
            return self._service_resource(name, instances, int(idx or 0))

        upserts = list(await asyncio.gather(*(one(n) for n in names)))
        if len(names) <= self._slots():
            self._pool = OrderedDict.fromkeys(names)
        self._config_index, self._entries = {}, {}
        for kind in self.options.config_kinds:
            idx, entries = await self._query(self._config_call(kind, 0))
            self._config_index[kind] = next_index(0, int(idx or 0))
            resources = [self._entry_resource(e, int(idx or 0)) for e in _as_list(entries)]
            self._entries[kind] = {r.name for r in resources}
            if kind == "service-resolver":
                self._note_resolvers(resources)
            upserts += resources
        return upserts

    async def _list_checks(self) -> None:
        """The checks' baseline (a non-blocking read); the checks' watch follows from it."""
        reported, text = await self._query(self._checks_call(0))
        self._checks = check_map(_decode(text))
        self._checks_index = next_index(0, int(reported or 0))
        self._detector = True

    def _note_nodes(self, name: str, instances: list[Any]) -> None:
        """Remember the nodes name has instances on, and account for the writes that
        registered them (each wrote this service's instance: read here, it is followed)."""
        for entry in instances:
            if not isinstance(entry, dict):
                continue
            node, service = entry.get("Node"), entry.get("Service")
            if isinstance(node, dict) and node.get("Node"):
                self._node_services.setdefault(str(node["Node"]), set()).add(name)
            if isinstance(service, dict) and isinstance(service.get("ModifyIndex"), int):
                self._note_explained(service["ModifyIndex"])

    # -- the watches -------------------------------------------------------------------------------

    async def _watch_catalog(self, index: int, known: set[str]) -> None:
        """Read (and watch) the services Consul starts listing; delete those it stops listing.

        A move of the catalog's index that no check change explains (an instance registered
        or removed without checks) makes the services without their own watch be read again."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        # The listing names every service (10k: ~5 ms of the event loop to read), and every
        # registration anywhere changes its index: re-read it at most CATALOG_QPS times a second,
        # so that under churn it is not read again beside every change of a service's health.
        bucket = TokenBucket(min(self.options.qps, CATALOG_QPS), 1)
        last_text = ""
        while True:
            try:
                reported, text = await self._query(self._catalog_text_call(index), bucket)
                # Most registrations add or change an instance of a service that exists, with
                # tags it has: the answer is then the same text, not worth decoding again.
                names = known if text == last_text else set(_as_dict(_decode(text)))
                last_text = text
            except Exception as exc:
                await self._failed("catalog services", exc, backoff)
                index = 0  # see _failed
                continue
            backoff.reset()
            new = next_index(index, int(reported or 0))
            added, gone = sorted(names - known), sorted(known - names)
            for name in gone:
                task = self._tasks.pop(f"svc:{name}", None)
                if task is not None:
                    task.cancel()
                self._pool.pop(name, None)
                self._services.pop(name, None)
            if gone:
                deletes = tuple((SOURCE, SERVICE_KIND, "", n) for n in gone)
                await self._queue.put(SourceEvent(SOURCE, deletes=deletes))
            known = self._known = names
            if added:
                await self._changed(added)
            if index and 0 < int(reported or 0) < index and self._detector:
                # The indexes went backwards (a snapshot restore, a rebuilt cluster): the move
                # spans no write seen, and those seen tell nothing of the new index space.
                self._explained.clear()
                self._request_sweep()
            elif new != index and index and self._detector:
                self._helper(self._explain(index, int(reported or 0)))
            index = new

    async def _watch_checks(self, index: int) -> None:
        """Follow /v1/health/state/any; read again the services whose checks changed.

        This one watch stands for every service without a watch of its own, so its bucket is
        bigger than one watch's (CHECKS_QPS_FACTOR, CHECKS_BURST_FACTOR): with one watch's 20
        a second, back-to-back changes anywhere in the catalog would wait up to 50 ms each,
        while a burst of a hundred goes through at once and sustained churn is batched."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        bucket = TokenBucket(
            self.options.qps * CHECKS_QPS_FACTOR, self.options.burst * CHECKS_BURST_FACTOR
        )
        while True:
            previous = self._checks
            try:
                reported, text = await self._query(self._checks_call(index), bucket)
                new = next_index(index, int(reported or 0))
                if new == index and index:  # the wait ran out, nothing new
                    continue
                # Most answers differ from the last in a few checks: those are found without
                # decoding the whole answer (10k checks: ~4 ms instead of 30-70 ms).
                quick = changed_checks(text, previous, self._checks_index) if new else None
                full = check_map(_decode(text)) if quick is None else None
                current = full if full is not None else {**previous, **(quick or {})}
            except Exception as exc:
                await self._failed("health state", exc, backoff)
                index = 0  # see _failed
                continue
            backoff.reset()
            changed: set[str] = set()  # by a check of their own
            on_nodes: set[str] = set()  # by a check of a node they have an instance on
            for key, (service, modified) in (quick or current).items():
                if previous.get(key) != (service, modified):
                    (changed if service else on_nodes).update(self._services_of(key[0], service))
                    self._note_explained(modified)
            gone = previous.keys() - current.keys()
            for key in gone:
                service = previous[key][0]
                (changed if service else on_nodes).update(self._services_of(key[0], service))
            if gone:
                self._note_explained(int(reported or 0))
            self._checks, self._checks_index, index = current, int(reported or 0), new
            await self._changed(sorted(changed))
            await self._changed(sorted(on_nodes - changed), promote=False)

    def _services_of(self, node: str, service: str) -> set[str]:
        """The services a check concerns: its own, or (a node's check) every one on the node."""
        if service:
            return {service}
        return set(self._node_services.get(node, ()))

    def _note_explained(self, index: int) -> None:
        self._explained[index] = None
        self._explained.move_to_end(index)
        while len(self._explained) > EXPLAINED_KEPT:
            self._explained.popitem(last=False)

    def _accounted(self, since: int, upto: int) -> bool:
        """Whether every Raft index in (since, upto] is a write seen and followed."""
        if upto - since > EXPLAINED_KEPT or upto < since:
            return False
        return all(i in self._explained for i in range(since + 1, upto + 1))

    async def _explain(self, since: int, upto: int) -> None:
        """Sweep unless the catalog's move from since to upto is accounted for (see the module
        doc), giving the checks' watch and the reads in flight a moment to account for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SWEEP_GRACE_S
        while not self._accounted(since, upto):
            caught_up = self._checks_index >= upto and not self._refreshing
            if caught_up or loop.time() > deadline:
                # A checkless write at upto: now; only suspected before it: in a while.
                self._request_sweep(deferred=upto in self._explained)
                return
            await asyncio.sleep(0.05)

    def _request_sweep(self, deferred: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        due = max(self._last_sweep + self.options.sweep_interval_s, now) if deferred else now
        if due < self._sweep_due:
            self._sweep_due = due
            self._sweep_wake.set()
        if self._sweep_task is None or self._sweep_task.done():
            self._sweep_task = asyncio.create_task(self._sweep(), name="consul-sweep")

    async def _sweep(self) -> None:
        """Read again every service without its own watch, READ_RESERVE at a time (so that a
        read for a change waits for a few of these, not for the whole sweep), when due."""
        loop = asyncio.get_running_loop()
        while self._sweep_due != float("inf"):
            self._sweep_wake.clear()
            if self._sweep_due > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._sweep_wake.wait(), self._sweep_due - loop.time())
                continue
            self._sweep_due = float("inf")  # what is wanted from now on needs another sweep
            self._last_sweep = loop.time()
            self.sweeps += 1
            names = [n for n in sorted(self._services) if n not in self._pool]
            # What a sweep finds changed gets a watch of its own (few at a time, as in
            # _changed): its next checkless change is then followed, not swept for again.
            self._sweep_promotions = max(self._slots() - len(self._pool), 0) + EVICTIONS_PER_ROUND
            for start in range(0, len(names), READ_RESERVE):
                batch = names[start : start + READ_RESERVE]
                await asyncio.gather(*(self._refresh(n, False, swept=True) for n in batch))
            log.info(
                "consul_swept",
                source=SOURCE,
                services=len(names),
                seconds=round(loop.time() - self._last_sweep, 3),
                sweeps=self.sweeps,
            )

    async def _changed(self, names: list[str], promote: bool = True) -> None:
        """Services that changed (or appeared) and have no watch of their own: read each once,
        emit it if its index moved, and give it a watch (the least recently changed one gives
        up its own). Few give up theirs at a time (EVICTIONS_PER_ROUND): a cancelled blocking
        query's connection is closed, and a Consul that has not yet seen it close would count
        it against the limit beside the one that replaces it."""
        todo = [n for n in names if n not in self._pool]
        promotions = max(self._slots() - len(self._pool), 0) + EVICTIONS_PER_ROUND
        for k, name in enumerate(todo):
            self._helper(self._refresh(name, promote=promote and k < promotions))

    async def _refresh(self, name: str, promote: bool, swept: bool = False) -> None:
        self._refreshing += 1
        try:
            await self._refresh_one(name, promote, swept)
        finally:
            self._refreshing -= 1

    async def _refresh_one(self, name: str, promote: bool, swept: bool) -> None:
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        while True:
            try:
                async with self._reads:
                    reported, entries = await self._query(self._health_call(name, 0))
                instances = _as_list(entries)
                break
            except Exception as exc:
                await self._failed(f"health of {name}", exc, backoff)
                if name not in self._known:
                    return  # gone meanwhile
        if name not in self._known:
            return  # removed meanwhile (its delete is out), or not listed yet (the catalog
            # watch reads it when it is)
        index = next_index(0, int(reported or 0))
        self._note_nodes(name, instances)
        changed = self._services.get(name) != index
        if changed:
            self._services[name] = index
            resource = self._service_resource(name, instances, int(reported or 0))
            await self._queue.put(SourceEvent(SOURCE, upserts=(resource,)))
        if swept and changed and self._sweep_promotions > 0:
            self._sweep_promotions -= 1
            promote = True
        if promote and name not in self._pool:
            await self._promote(name, index)

    async def _promote(self, name: str, index: int) -> None:
        slots = self._slots()
        if len(self._pool) >= slots:
            await self._ensure_detector()
        if slots <= 0 or name in self._pool:  # no room at all: the checks watch follows it
            return
        self._evict_to(slots - 1)
        self._pool[name] = None
        self._spawn(f"svc:{name}", self._watch_service(name, index))

    async def _ensure_detector(self) -> None:
        """Start the checks' watch (its baseline first) before any service leaves the pool."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        async with self._detector_lock:
            while not self._detector:
                try:
                    await self._list_checks()
                except Exception as exc:
                    await self._failed("health state", exc, backoff)
                    continue
                self._spawn("checks", self._watch_checks(self._checks_index))

    def _evict_to(self, size: int) -> None:
        """Take the least recently changed services out of the pool until it holds size."""
        while self._pool and len(self._pool) > max(size, 0):
            victim, _ = self._pool.popitem(last=False)
            task = self._tasks.pop(f"svc:{victim}", None)
            if task is not None:
                task.cancel()
            # What changed while its watch was being cancelled is read now; later changes
            # reach the checks' watch.
            self._helper(self._refresh(victim, promote=False))

    async def _watch_service(self, name: str, index: int, dc: str | None = None) -> None:
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        bucket = self._bucket()
        what = f"health of {name}" + (f" in {dc}" if dc else "")
        while True:
            try:
                reported, entries = await self._query(self._health_call(name, index, dc), bucket)
                instances = _as_list(entries)
            except Exception as exc:
                await self._failed(what, exc, backoff)
                index = 0  # see _failed
                continue
            backoff.reset()
            new = next_index(index, int(reported or 0))
            if new != index or index == 0:  # unchanged index: the wait ran out, nothing new
                resource = self._service_resource(name, instances, int(reported or 0), dc)
                await self._queue.put(SourceEvent(SOURCE, upserts=(resource,)))
                if dc is None:
                    self._services[name] = new
                    self._note_nodes(name, instances)
                    if name in self._pool:
                        self._pool.move_to_end(name)
            index = new

    async def _watch_config(self, kind: str, index: int, known: set[str]) -> None:
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        bucket = self._bucket()
        while True:
            try:
                reported, entries = await self._query(self._config_call(kind, index), bucket)
                resources = [self._entry_resource(e, int(reported or 0)) for e in _as_list(entries)]
            except Exception as exc:
                await self._failed(f"config {kind}", exc, backoff)
                index = 0  # see _failed
                continue
            backoff.reset()
            new = next_index(index, int(reported or 0))
            if new != index or index == 0:
                for r in resources:  # config writes are in the range a catalog move spans
                    if isinstance(r.body.get("ModifyIndex"), int):
                        self._note_explained(r.body["ModifyIndex"])
                names = {r.name for r in resources}
                deletes = tuple((SOURCE, CONFIG_KIND, "", n) for n in sorted(known - names))
                await self._queue.put(SourceEvent(SOURCE, tuple(resources), deletes))
                known = names
                if kind == "service-resolver":
                    self._note_resolvers(resources)
                    await self._watch_remote()
            index = new

    # -- other datacenters --------------------------------------------------------------------

    def _note_resolvers(self, resources: list[RawResource]) -> None:
        """Remember which services of other datacenters the resolvers (all of them, as listed)
        name."""
        found = {
            r.name: remote_targets(r.body, self.options.datacenter)
            for r in resources
            if r.body.get("Kind") == "service-resolver"
        }
        self._resolver_targets = {k: v for k, v in found.items() if v}

    async def _watch_remote(self) -> None:
        """Watch the other datacenters' services the resolvers name (as many as _remote_room
        allows with a blocking watch each, the rest read again every sweep_interval_s); stop
        watching (and delete) those no resolver names any more."""
        wanted = set().union(*self._resolver_targets.values()) if self._resolver_targets else set()
        watched = set(sorted(wanted)[: self._remote_room()])
        for name, dc in sorted(self._remote_watched - watched):
            task = self._tasks.pop(f"remote:{dc}/{name}", None)
            if task is not None:
                task.cancel()
        for name, dc in sorted(watched - self._remote_watched):
            self._spawn(f"remote:{dc}/{name}", self._watch_service(name, 0, dc))
        polled = wanted - watched
        self._remote_polled = {k: self._remote_polled.get(k, 0) for k in polled}
        if polled and "remote-poll" not in self._tasks:
            self._spawn("remote-poll", self._poll_remote())
        gone = sorted(self._remote - wanted)
        self._remote, self._remote_watched = wanted, watched
        if gone:
            deletes = tuple((SOURCE, SERVICE_KIND, "", f"{dc}/{name}") for name, dc in gone)
            await self._queue.put(SourceEvent(SOURCE, deletes=deletes))
        if len(self._pool) > self._slots():  # the remote watches take connections from it
            await self._ensure_detector()
            self._evict_to(self._slots())

    async def _poll_remote(self) -> None:
        """Read the remote services beyond the budget's room (one-shot reads, READ_RESERVE at
        a time) every sweep_interval_s, and emit those whose index moved."""
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        while self._remote_polled:
            for key in sorted(self._remote_polled):
                name, dc = key
                try:
                    async with self._reads:
                        reported, entries = await self._query(self._health_call(name, 0, dc))
                    instances = _as_list(entries)
                except Exception as exc:
                    await self._failed(f"health of {name} in {dc}", exc, backoff)
                    continue
                backoff.reset()
                index = int(reported or 0)
                if key in self._remote_polled and self._remote_polled[key] != index:
                    self._remote_polled[key] = index
                    resource = self._service_resource(name, instances, index, dc)
                    await self._queue.put(SourceEvent(SOURCE, upserts=(resource,)))
            await asyncio.sleep(self.options.sweep_interval_s)
        self._tasks.pop("remote-poll", None)

    async def _failed(self, what: str, exc: Exception, backoff: Backoff) -> None:
        """Log and report one failed query, then wait out the backoff.

        The caller then starts its watch over with index 0 (a non-blocking full read): the
        Consul that answers next may have been rebuilt or restored with lower indexes, and a
        blocking query at the old, higher index would sit out its whole `wait` before any change
        got through."""
        delay = backoff.next_delay()
        reason = f"{what}: {type(exc).__name__}: {exc}"[:500]
        log.warning(
            "consul_query_failed",
            source=SOURCE,
            what=what,
            error=reason,
            retry_in_s=round(delay, 3),
        )
        error = Diagnostic("error", SOURCE, f"consul {self.options.address}", "", "", "", reason)
        await self._queue.put(SourceEvent(SOURCE, synced=self._synced, errors=(error,)))
        await asyncio.sleep(delay)

    # -- resources ------------------------------------------------------------------------------

    def _service_resource(
        self, name: str, instances: list[Any], index: int, dc: str | None = None
    ) -> RawResource:
        body: dict[str, Any] = {
            "Name": name,
            "Datacenter": dc or self.options.datacenter or "",
            "Instances": instances,
        }
        key = name
        if dc:
            body["Remote"] = True
            key = f"{dc}/{name}"
        return RawResource(
            SOURCE,
            SERVICE_KIND,
            API_VERSION,
            "",
            key,
            body,
            Provenance(SOURCE, f"consul index {index}", SERVICE_KIND, "", key),
        )

    def _entry_resource(self, entry: Any, index: int) -> RawResource:
        body = dict(entry) if isinstance(entry, dict) else {"Entry": entry}
        name = f"{body.get('Kind', '')}/{body.get('Name', '')}"
        location = f"consul index {body.get('ModifyIndex', index)}"
        return RawResource(
            SOURCE,
            CONFIG_KIND,
            API_VERSION,
            "",
            name,
            body,
            Provenance(SOURCE, location, CONFIG_KIND, "", name),
        )


def remote_targets(resolver: Any, local_dc: str | None) -> set[tuple[str, str]]:
    """(service, datacenter) of every target of a service-resolver entry in a datacenter other
    than local_dc: Redirect.Datacenter, Failover's Datacenters and Targets[].Datacenter.
    Never raises: odd shapes name nothing here (the normalizer reports them)."""

    def items(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    if not isinstance(resolver, dict):
        return set()
    own = str(resolver.get("Name") or "")
    specs: list[Any] = [resolver.get("Redirect")]
    failovers = resolver.get("Failover")
    for failover in failovers.values() if isinstance(failovers, dict) else ():
        if isinstance(failover, dict):
            service = failover.get("Service") or own
            specs += [
                {"Service": service, "Datacenter": dc} for dc in items(failover.get("Datacenters"))
            ]
            specs += items(failover.get("Targets"))
    found = set()
    for spec in specs:
        if isinstance(spec, dict) and spec.get("Datacenter") and not spec.get("Peer"):
            dc = str(spec["Datacenter"])
            if dc != local_dc:
                found.add((str(spec.get("Service") or own), dc))
    return found


_MODIFY_INDEX = re.compile(r'"ModifyIndex":\s*(\d+)')
_DECODER = json.JSONDecoder()


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"Failed to decode JSON: {exc}") from None


def _parse_index(reported: Any) -> int:
    """An X-Consul-Index header's value (None or "" when it is missing: 0)."""
    try:
        return int(reported or 0)
    except (TypeError, ValueError):
        raise ValueError(f"X-Consul-Index {str(reported)[:40]!r} is not a number") from None


def changed_checks(
    text: str, previous: dict[tuple[str, str], tuple[str, int]], since: int
) -> dict[tuple[str, str], tuple[str, int]] | None:
    """The checks of a /v1/health/state/any answer (its JSON text) modified after index
    `since`, keyed as in check_map, found without decoding the whole answer: each check's
    "ModifyIndex" is found by a regular expression, and only the checks past `since` are decoded
    (each from the start of its object in the array). None when this cannot tell: a check went
    away (the answer lists fewer than previous plus the new ones), or a shape it does not know;
    the caller then decodes it all. (Inside a JSON string a quote is escaped, so neither
    '"ModifyIndex":' nor the '},{"' between two objects can match there.)"""
    found: dict[tuple[str, str], tuple[str, int]] = {}
    count = 0
    for match in _MODIFY_INDEX.finditer(text):
        count += 1
        modified = int(match.group(1))
        if modified <= since:
            continue
        pos = match.start()
        edge = max(text.rfind('},{"', 0, pos), text.rfind('}, {"', 0, pos))
        start = text.find("{", edge + 1) if edge >= 0 else text.find("{")
        try:
            check, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            return None
        if not isinstance(check, dict) or check.get("ModifyIndex") != modified:
            return None
        found.update(check_map([check]))
    added = sum(1 for key in found if key not in previous)
    if count != len(previous) + added:
        return None
    return found


def check_map(checks: Any) -> dict[tuple[str, str], tuple[str, int]]:
    """(node, check ID) -> (service name, ModifyIndex) of a /v1/health/state/any answer."""
    out = {}
    for check in _as_list(checks):
        if isinstance(check, dict):
            key = (str(check.get("Node") or ""), str(check.get("CheckID") or ""))
            out[key] = (str(check.get("ServiceName") or ""), int(check.get("ModifyIndex") or 0))
    return out


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []  # py-consul turns a 404 into None
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON array, got {type(value).__name__}")
    return value
