"""The Consul adapter: catalog, health and config entries, watched with blocking queries.

One watch per endpoint: /v1/catalog/services (which services exist), /v1/health/service/<name>
per service, and /v1/config/<kind> per config-entry kind. Each follows Consul's rules for
blocking queries (see consul_watch.next_index), takes a token from its own bucket before
every query (so a service that changes a thousand times a second costs at most `qps` queries
a second), and backs off with jitter after an error, after which it reads afresh (index 0),
since the Consul it reaches again may have lower indexes. Queries go through py-consul's asyncio
client (`consul.aio`, on aiohttp): a blocking query is a coroutine waiting on its socket, not a
thread, so 10k watched services cost 10k idle connections and no threads.

Resources emitted (source "consul", apiVersion "consul/v1"):
- `ConsulService`, name = the service name: {"Name", "Datacenter", "Instances": the
  /v1/health/service entries (Node + Service + Checks)}. Only passing instances are asked for
  unless include_warning is set.
- `ConsulConfigEntry`, name = "<Kind>/<Name>": the entry as Consul returns it.
- `ConsulService`, name = "<datacenter>/<service>", body also {"Remote": true}: a service of
  another datacenter that a service-resolver fails over or redirects to, watched there with
  ?dc= (Consul forwards the query over WAN federation) for as long as a resolver names it.

Faults never delete anything: an unreachable, failing (5xx, 403) or garbled Consul only yields
errors (logged, and reported as SourceEvent errors, which the agent counts per source). A
resource is deleted only when Consul answers that it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
# Connections to Consul: one per watch (a blocking query holds its connection for its `wait`).
# aiohttp queues a request beyond the limit until a connection frees, which would hold a watch
# back for a whole `wait`, so the limit is far above any catalog's size.
MAX_CONNECTIONS = 1_000_000
CATALOG_QPS = 5.0  # at most, for the catalog watch (see _watch_catalog)
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
        connections_limit=MAX_CONNECTIONS,
        connections_timeout=options.wait_s * 17 / 16 + 30.0,
    )


class ConsulAdapter:
    """Watches one Consul datacenter; see the module docstring for what it emits."""

    name = SOURCE

    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        self.queries = 0  # every query sent, for tests and debugging
        self._token = TokenFile(options.token_file)
        self._client: Any = None
        self._queue: asyncio.Queue[SourceEvent] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._synced = False
        self._wait = f"{max(int(options.wait_s * 1000), 1)}ms"
        # Filled by the first listing: where each watch starts.
        self._catalog_index = 0
        self._services: dict[str, int] = {}  # service name -> health index
        self._config_index: dict[str, int] = {}  # config kind -> index
        self._entries: dict[str, set[str]] = {}  # config kind -> resource names
        # service-resolver name -> (service, datacenter) targets elsewhere; those watched
        self._resolver_targets: dict[str, set[tuple[str, str]]] = {}
        self._remote: set[tuple[str, str]] = set()

    async def __aenter__(self) -> ConsulAdapter:
        # The agent re-enters an adapter after a failure: start clean.
        self._client = consul_aio_client(self.options)
        self._queue = asyncio.Queue()
        self._synced = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._client is not None:  # cancelled queries have dropped their connections
            with contextlib.suppress(Exception):
                await self._client.http.close()
            self._client = None

    async def watch(self) -> AsyncIterator[SourceEvent]:
        """The first full listing (synced), then every change, until the context exits."""
        await self._initial_listing()
        self._spawn("catalog", self._watch_catalog(self._catalog_index, set(self._services)))
        for kind, index in self._config_index.items():
            self._spawn(f"config:{kind}", self._watch_config(kind, index, self._entries[kind]))
        await self._watch_remote()
        while True:
            yield await self._queue.get()

    def _spawn(self, key: str, coro: Any) -> None:
        self._tasks[key] = asyncio.create_task(coro, name=f"consul-{key}")

    # -- queries -----------------------------------------------------------------------------

    def _bucket(self) -> TokenBucket:
        return TokenBucket(self.options.qps, self.options.burst)

    async def _query(self, call: Any, bucket: TokenBucket | None = None) -> Any:
        """One py-consul call (rate-limited by bucket when given): call(token) is awaited."""
        if bucket is not None:
            await bucket.acquire()
        self.queries += 1
        token = self._token.get()
        return await call(token)

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

    def _config_call(self, kind: str, index: int) -> Any:
        from consul.callback import CB

        def call(token: str | None) -> Any:
            params: list[tuple[str, Any]] = []
            if self.options.datacenter:
                params.append(("dc", self.options.datacenter))
            if index:
                params += [("index", index), ("wait", self._wait)]
            headers = self._client.prepare_headers(token)
            return self._client.http.get(
                CB.json(index=True), f"/v1/config/{kind}", params=params, headers=headers
            )

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
        self._services = {}
        limit = asyncio.Semaphore(32)  # a big catalog is listed with bounded parallelism

        async def one(name: str) -> RawResource:
            async with limit:
                idx, entries = await self._query(self._health_call(name, 0))
            self._services[name] = next_index(0, int(idx or 0))
            return self._service_resource(name, _as_list(entries), int(idx or 0))

        upserts = list(await asyncio.gather(*(one(n) for n in names)))
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

    # -- the watches -------------------------------------------------------------------------------

    async def _watch_catalog(self, index: int, known: set[str]) -> None:
        """Start a health watch per listed service; delete the services Consul stops listing."""
        for name in sorted(known):
            self._spawn(f"svc:{name}", self._watch_service(name, self._services[name]))
        backoff = Backoff(self.options.backoff_base_s, self.options.backoff_cap_s)
        # The listing names every service (10k: ~5 ms of the event loop to read), and every
        # registration anywhere changes its index: re-read it at most CATALOG_QPS times a second,
        # so that under churn it is not read again beside every change of a service's health.
        bucket = TokenBucket(min(self.options.qps, CATALOG_QPS), 1)
        while True:
            try:
                reported, services = await self._query(self._catalog_call(index), bucket)
                names = set(_as_dict(services))
            except Exception as exc:
                await self._failed("catalog services", exc, backoff)
                index = 0  # see _failed
                continue
            backoff.reset()
            index = next_index(index, int(reported or 0))
            for name in sorted(names - known):
                self._spawn(f"svc:{name}", self._watch_service(name, 0))
            gone = sorted(known - names)
            for name in gone:
                task = self._tasks.pop(f"svc:{name}", None)
                if task is not None:
                    task.cancel()
            if gone:
                deletes = tuple((SOURCE, SERVICE_KIND, "", n) for n in gone)
                await self._queue.put(SourceEvent(SOURCE, deletes=deletes))
            known = names

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
        """Watch the other datacenters' services the resolvers name; stop watching (and delete)
        those no resolver names any more."""
        wanted = set().union(*self._resolver_targets.values()) if self._resolver_targets else set()
        for name, dc in sorted(wanted - self._remote):
            self._spawn(f"remote:{dc}/{name}", self._watch_service(name, 0, dc))
        gone = sorted(self._remote - wanted)
        for name, dc in gone:
            task = self._tasks.pop(f"remote:{dc}/{name}", None)
            if task is not None:
                task.cancel()
        self._remote = wanted
        if gone:
            deletes = tuple((SOURCE, SERVICE_KIND, "", f"{dc}/{name}") for name, dc in gone)
            await self._queue.put(SourceEvent(SOURCE, deletes=deletes))

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
