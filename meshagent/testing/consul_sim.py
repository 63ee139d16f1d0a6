"""A simulator of Consul's HTTP API, for tests and demos (`meshagent dev consul-sim`).

It is not Consul: in-memory datacenters (the local one, and others added with
`add_datacenter`, reached with ?dc= as over Consul's WAN federation), no raft, no gossip.
It follows the documented semantics that clients depend on: blocking queries (`index` +
`wait`, answered when the endpoint's modify index passes `index` or when `wait` ends,
default 5m, at most 10m, with X-Consul-Index, X-Consul-KnownLeader and
X-Consul-LastContact headers), ACL tokens (X-Consul-Token or ?token=; 403 "ACL not found" /
"Permission denied"), agent and catalog registration, check states, config entries. Faults
can be injected (`Faults`) to test clients: error statuses, slow answers, malformed JSON,
dropped connections, index resets.

Like Consul (`limits.http_max_conns_per_client`, default 200), it refuses a client IP's
connections beyond `max_conns_per_client` at once: Consul's HTTP server answers such a
connection, as soon as it is accepted, `429 Too Many Requests` ("Your IP is issuing too many
concurrent connections, please rate limit your calls") with `Connection: close`, and closes
it. A client with one blocking query per service meets this beyond ~200 services.

One asyncio HTTP/1.1 server (keep-alive, no framework), so thousands of blocking queries cost
no threads. `ConsulSimulator.start()` runs it on a background thread for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshagent.testing.consul_gateways import GATEWAY_SERVICES_KEY
from meshagent.testing.consul_state import (
    CHECKS_KEY,
    SERVICES_KEY,
    ConsulState,
    SimError,
    config_key,
    service_key,
)

DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
LISTEN_BACKLOG = 4096
MAX_CONNS_PER_CLIENT = 200  # Consul's default limits.http_max_conns_per_client
_TOO_MANY = b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n"
    + f"Content-Length: {len(_TOO_MANY)}\r\n".encode()
    + b"Connection: close\r\n\r\n"
    + _TOO_MANY
)
_DURATION = re.compile(r"([\d.]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wait(value: str) -> float:
    """A Go duration ("5s", "100ms", "1m30s", or bare seconds) in seconds."""
    if re.fullmatch(r"\d+", value):
        return float(value)
    parts = _DURATION.findall(value)
    if not parts:
        raise SimError(400, f"Invalid wait time: {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(slots=True)
class Faults:
    """Injected misbehaviour; tests set the fields, every request reads them.

    status: answer this HTTP status (e.g. 500, 403) to matching requests instead of serving.
    delay_s: wait this long before answering. malformed: send a body that is not JSON.
    drop: close the connection without answering. index_zero: report X-Consul-Index 0.
    index_text: report this X-Consul-Index instead (e.g. a garbled one, as a broken proxy in
    front of Consul might). path_prefix: only requests whose path starts with it are affected.
    """

    status: int | None = None
    delay_s: float = 0.0
    malformed: bool = False
    drop: bool = False
    index_zero: bool = False
    index_text: str | None = None
    path_prefix: str = "/v1/"

    def clear(self) -> None:
        """Back to a well-behaved server."""
        self.status, self.delay_s, self.malformed, self.drop, self.index_zero = (
            None,
            0.0,
            False,
            False,
            False,
        )
        self.index_text = None


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Reply:
    status: int
    body: Any = None
    index: int | None = None
    raw: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)
    raw_json: bool = False  # raw is a JSON body already encoded
    index_text: str = ""  # sent as X-Consul-Index instead of index (Faults.index_text)


class ConsulSimulator:
    """The HTTP server around a ConsulState. Use start()/stop() (thread) or serve() (asyncio)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        acl_token: str | None = None,
        read_tokens: tuple[str, ...] = (),
        max_wait_s: float = MAX_WAIT_S,
        datacenter: str = "dc1",
        max_conns_per_client: int = MAX_CONNS_PER_CLIENT,
    ) -> None:
        self.host, self.port = host, port
        self.state = ConsulState(datacenter)  # the local datacenter's
        self.datacenters: dict[str, ConsulState] = {datacenter: self.state}
        self.faults = Faults()
        self.acl_token = acl_token
        self.read_tokens = set(read_tokens)
        self.max_wait_s = max_wait_s
        self.max_conns_per_client = max_conns_per_client  # 0: no limit
        self.refused = 0  # connections refused with 429 (over max_conns_per_client)
        self.connections: Counter[str] = Counter()  # open connections, by client IP
        self.peak_connections = 0  # the most one client IP held at once
        self.requests: Counter[str] = Counter()  # by endpoint ("health/service", ...)
        self.blocked: Counter[str] = Counter()  # queries blocked now, by key (service_key(...))
        self.held: set[str] = set()  # keys whose blocked queries wait on (see hold)
        self._events: dict[str, asyncio.Event] = {}
        self._restores = 0  # the datacenters' restores seen by _wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._checker: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.state.on_change = self._changed

    @property
    def address(self) -> str:
        """host:port the simulator listens on."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._thread is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def serve_async(self) -> None:
        """Listen (binding port 0 picks a free port, stored in self.port)."""
        self._loop = asyncio.get_running_loop()
        # Consul (Go) listens with the kernel's somaxconn backlog; asyncio's default of 100 would
        # drop the SYNs of a client opening thousands of watches at once (1 s+ retransmits).
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, backlog=LISTEN_BACKLOG
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._checker = asyncio.create_task(self._run_http_checks())

    async def close_async(self) -> None:
        """Stop listening and drop every connection (blocked queries included)."""
        if self._checker is not None:
            self._checker.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        handlers = [t for t in self._handlers if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None

    def start(self) -> ConsulSimulator:
        """Serve on a daemon thread until stop(); returns self once listening."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        failed: list[OSError] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve_async())
            except OSError as exc:  # e.g. the address is taken: raised by start()
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            # stop(): end what close_async could not reach (a connection accepted meanwhile)
            # here, while the loop still runs, so that nothing outlives it.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))

        thread = threading.Thread(target=run, name="consul-sim", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("consul simulator did not start")
        if failed:
            thread.join(10)
            raise failed[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop the thread started by start(); the state is kept (start() again resumes)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.close_async(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop, self._thread, self._events = None, None, {}
        self._writers.clear()  # all closed with their loop
        self._handlers.clear()

    # -- blocking --------------------------------------------------------------------------

    def add_datacenter(self, name: str) -> ConsulState:
        """Another datacenter, answered for requests with ?dc=<name> (its own indexes)."""
        state = self.datacenters.get(name)
        if state is None:
            state = self.datacenters[name] = ConsulState(name, node=f"{name}-node")
            state.on_change = lambda keys: self._changed({f"{name}:{k}" for k in keys})
        return state

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """While inside, blocking queries on key (e.g. SERVICES_KEY) keep waiting although its
        index moved, as if the writes had not reached them yet: a test lands several writes
        before a watch reads them, so that one answer coalesces them. They answer on exit (or
        when their wait runs out)."""
        self.held.add(key)
        try:
            yield
        finally:
            self.held.discard(key)
            self._changed({key})

    def _state(self, dc: str | None) -> ConsulState:
        state = self.datacenters.get(dc or self.state.datacenter)
        if state is None:
            raise SimError(500, f"No path to datacenter {dc!r}")
        return state

    def _event_key(self, state: ConsulState, key: str) -> str:
        return key if state is self.state else f"{state.datacenter}:{key}"

    def _changed(self, keys: set[str]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._wake, keys)

    def _wake(self, keys: set[str]) -> None:
        restores = sum(state.restores for state in self.datacenters.values())
        if restores != self._restores:  # a restore abandons every blocked query
            self._restores = restores
            keys = set(self._events)
        # The listings of every check and of every service (the costly answers) last: Consul
        # answers blocked queries in parallel, this one thread in turn, a change's service first.
        order = {CHECKS_KEY: 1, SERVICES_KEY: 2}
        for key in sorted(keys, key=lambda k: order.get(k.rpartition(":")[2], 0)):
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    async def _block(self, key: str, query: dict[str, str], state: ConsulState) -> None:
        """Wait while the key's index is not past ?index, at most ?wait (Consul's rule)."""
        wanted = int(query.get("index") or 0)
        if wanted <= 0:
            return
        wait = parse_wait(query["wait"]) if query.get("wait") else DEFAULT_WAIT_S
        deadline = time.monotonic() + min(wait, self.max_wait_s)
        restores, name = state.restores, self._event_key(state, key)
        self.blocked[name] += 1
        try:
            while (
                state.index_of(key) <= wanted or name in self.held
            ) and state.restores == restores:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                event = self._events.setdefault(name, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
        finally:
            self.blocked[name] -= 1

    # -- HTTP --------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limit = self.max_conns_per_client
        if limit > 0 and self.connections[ip] >= limit:
            await self._refuse(writer)
            return
        self.connections[ip] += 1
        self.peak_connections = max(self.peak_connections, self.connections[ip])
        try:
            await self._serve_connection(reader, writer)
        finally:
            self.connections[ip] -= 1
            if self.connections[ip] <= 0:
                del self.connections[ip]

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Consul's answer to a connection over the per-client limit (go-connlimit's 429
        handler: written at once, with a 10 ms deadline, then the connection is closed)."""
        self.refused += 1
        writer.write(TOO_MANY_CONNECTIONS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), 0.01)
        writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        # Go's HTTP server notices a client that hangs up while its query is blocked (the
        # request's context ends) and frees the connection, and its slot of the per-client
        # limit, at once; so does this one: the stream's end-of-file is watched meanwhile.
        hung_up = asyncio.Event()
        feed_eof = reader.feed_eof

        def on_eof() -> None:
            feed_eof()
            hung_up.set()

        setattr(reader, "feed_eof", on_eof)  # noqa: B010 (an instance's method, replaced)
        answer: asyncio.Task[bool] | None = None
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                answer = asyncio.ensure_future(self._answer(request, writer))
                hang_up = asyncio.ensure_future(hung_up.wait())
                await asyncio.wait({answer, hang_up}, return_when=asyncio.FIRST_COMPLETED)
                hang_up.cancel()
                if not answer.done() or not answer.result():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        except asyncio.CancelledError:
            return  # close_async: end quietly (asyncio's stream callback logs a cancelled task)
        finally:
            if answer is not None and not answer.done():
                answer.cancel()
                with contextlib.suppress(BaseException):
                    await answer
            if task is not None:
                self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must be dropped."""
        faults = self.faults
        affected = request.path.startswith(faults.path_prefix)
        if affected and faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if affected and faults.drop:
            return False
        reply = None
        if not (affected and faults.status is not None):
            reply = await self._dispatch(request)
        # A fault injected while a blocking query waited applies to its answer too, as when a
        # real server starts failing mid-query.
        if affected and faults.drop:
            return False
        if reply is None or (affected and faults.status is not None):
            status = faults.status or 500
            reply = _Reply(status, raw=f"injected fault {status}".encode())
        if affected and faults.malformed and reply.status == 200:
            reply = _Reply(200, raw=b'{"not json', index=reply.index)
        if affected and faults.index_zero and reply.index is not None:
            reply.index = 0
        if affected and faults.index_text is not None and reply.index is not None:
            reply.index_text = faults.index_text
        writer.write(_encode(reply))
        await writer.drain()
        return True

    async def _dispatch(self, request: _Request) -> _Reply:
        try:
            self._check_acl(request)
            return await self._route(request)
        except SimError as exc:
            return _Reply(exc.status, raw=str(exc).encode())
        except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            return _Reply(400, raw=f"Request decode failed: {exc}".encode())

    def _check_acl(self, request: _Request) -> None:
        if self.acl_token is None:
            return
        token = request.headers.get("x-consul-token") or request.query.get("token") or ""
        if token == self.acl_token:
            return
        if token in self.read_tokens:
            if request.method != "GET":
                raise SimError(403, "Permission denied")
            return
        raise SimError(403, "ACL not found")

    async def _route(self, r: _Request) -> _Reply:
        parts = [urllib.parse.unquote(p) for p in r.path.strip("/").split("/")]
        if parts[:1] != ["v1"] or len(parts) < 2:
            raise SimError(404, f"no such endpoint {r.path}")
        state = self._state(r.query.get("dc"))
        head = "/".join(parts[1:3])
        self.requests[head] += 1
        if r.method == "GET":
            return await self._get(parts[1:], r, state)
        if r.method in ("PUT", "POST"):
            return self._put(parts[1:], r, state)
        if r.method == "DELETE" and parts[1:2] == ["config"] and len(parts) == 4:
            state.delete_config(parts[2], parts[3])
            return _Reply(200, True)
        raise SimError(405, f"method {r.method} not allowed")

    async def _get(self, p: list[str], r: _Request, state: ConsulState) -> _Reply:
        ns = r.query.get("ns")
        if p == ["catalog", "services"]:
            await self._block(SERVICES_KEY, r.query, state)
            index = state.index_of(SERVICES_KEY)
            if ns is None:
                return _Reply(200, raw=state.catalog_services_json(), index=index, raw_json=True)
            return _Reply(200, state.catalog_services(ns), index)
        if len(p) == 3 and p[:2] == ["health", "state"]:
            await self._block(CHECKS_KEY, r.query, state)
            body_bytes = state.health_state(p[2])
            return _Reply(200, raw=body_bytes, index=state.index_of(CHECKS_KEY), raw_json=True)
        if len(p) == 3 and p[:2] in (["catalog", "service"], ["health", "service"]):
            key = service_key(p[2])
            await self._block(key, r.query, state)
            if p[0] == "catalog":
                body: Any = state.catalog_service(p[2], ns)
            else:
                body = state.health_service(p[2], passing="passing" in r.query, ns=ns)
            return _Reply(200, body, state.index_of(key))
        if len(p) == 3 and p[:2] == ["catalog", "gateway-services"]:
            await self._block(GATEWAY_SERVICES_KEY, r.query, state)
            body = state.gateway_services(p[2])
            return _Reply(200, body, state.index_of(GATEWAY_SERVICES_KEY))
        if p[:1] == ["config"] and len(p) in (2, 3):
            key = config_key(p[1])
            if len(p) == 3:
                return _Reply(200, state.get_config(p[1], p[2]), state.index_of(key))
            await self._block(key, r.query, state)
            return _Reply(200, state.list_config(p[1]), state.index_of(key))
        if p == ["agent", "self"]:
            return _Reply(
                200, {"Config": {"Datacenter": state.datacenter, "NodeName": state.local_node}}
            )
        if p == ["status", "leader"]:
            return _Reply(200, f"{self.host}:8300")
        raise SimError(404, f"no such endpoint /v1/{'/'.join(p)}")

    def _put(self, p: list[str], r: _Request, state: ConsulState) -> _Reply:
        body = json.loads(r.body or b"null")
        if p != ["config"]:
            body = canonical_keys(body)
        if p[:1] == ["agent"]:
            state = self.state  # the agent is in the local datacenter, whatever ?dc says
        if p == ["agent", "service", "register"]:
            checks = list(body.get("Checks") or []) + ([body["Check"]] if body.get("Check") else [])
            state.register_service(state.local_node, body, checks)
            return _Reply(200, None)
        if len(p) == 4 and p[:3] == ["agent", "service", "deregister"]:
            state.deregister_service(state.local_node, p[3])
            return _Reply(200, None)
        if len(p) == 4 and p[:2] == ["agent", "check"] and p[2] in ("pass", "warn", "fail"):
            status = {"pass": "passing", "warn": "warning", "fail": "critical"}[p[2]]
            state.set_check(p[3], status, r.query.get("note", ""))
            return _Reply(200, None)
        if p == ["catalog", "register"]:
            return self._catalog_register(body, state)
        if p == ["catalog", "deregister"]:
            return self._catalog_deregister(body, state)
        if p == ["config"]:
            state.put_config(body)
            return _Reply(200, True)
        raise SimError(404, f"no such endpoint /v1/{'/'.join(p)}")

    def _catalog_register(self, body: dict[str, Any], state: ConsulState | None = None) -> _Reply:
        # The body's Datacenter, else ?dc, else the local one (Consul's order).
        state = self._state(body.get("Datacenter")) if body.get("Datacenter") else state
        state = state or self.state
        node = str(body["Node"])
        state.ensure_node(
            node,
            str(body.get("Address") or ""),
            tagged=body.get("TaggedAddresses"),
            meta=body.get("NodeMeta"),
        )
        service = body.get("Service")
        checks = list(body.get("Checks") or []) + ([body["Check"]] if body.get("Check") else [])
        if service:
            # A catalog registration states the check status; default passing, like an agent
            # that has already run the check.
            checks = [{"Status": "passing", **c} for c in checks]
            state.register_service(node, service, checks)
        return _Reply(200, True)

    def _catalog_deregister(self, body: dict[str, Any], state: ConsulState) -> _Reply:
        state = self._state(body.get("Datacenter")) if body.get("Datacenter") else state
        node = str(body["Node"])
        if body.get("ServiceID"):
            state.deregister_service(node, str(body["ServiceID"]))
        elif not body.get("CheckID"):
            state.deregister_node(node)
        return _Reply(200, True)

    # -- HTTP checks ---------------------------------------------------------------------------

    async def _run_http_checks(self) -> None:
        """Run HTTP checks (2xx passing, 429 warning, else critical), as a Consul agent does."""
        last: dict[tuple[str, str], float] = {}
        while True:
            now = time.monotonic()
            for node, check_id, url, interval in self.state.http_checks():
                if now - last.get((node, check_id), 0.0) < parse_wait(interval):
                    continue
                last[(node, check_id)] = now
                status, output = await asyncio.to_thread(_probe, url)
                with contextlib.suppress(SimError):
                    self.state.set_check(check_id, status, output, node)
            await asyncio.sleep(0.1)


_KNOWN = (
    "ID",
    "Name",
    "Service",
    "Tags",
    "Address",
    "Port",
    "Meta",
    "Weights",
    "Passing",
    "Warning",
    "TaggedAddresses",
    "EnableTagOverride",
    "Check",
    "Checks",
    "CheckID",
    "Status",
    "Notes",
    "HTTP",
    "TCP",
    "TTL",
    "Interval",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "Namespace",
    "Partition",
    "Node",
    "Datacenter",
    "NodeMeta",
    "ServiceID",
    "Definition",
    "Args",
    "Method",
    "Header",
    "SkipNodeUpdate",
)
_CANONICAL = {k.lower(): k for k in _KNOWN}
_NESTED = {"Check", "Checks", "Weights", "Service", "Definition"}


def canonical_keys(body: Any) -> Any:
    """Consul decodes JSON keys case-insensitively (py-consul sends "name", "port", ...);
    user data (Meta, Tags, TaggedAddresses, NodeMeta) is left as it is."""
    if isinstance(body, list):
        return [canonical_keys(b) for b in body]
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = _CANONICAL.get(str(key).lower(), str(key))
        out[name] = canonical_keys(value) if name in _NESTED else value
    return out


def _probe(url: str) -> tuple[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            code = int(resp.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except OSError as exc:
        return "critical", f"Get {url}: {exc}"
    status = "passing" if 200 <= code < 300 else ("warning" if code == 429 else "critical")
    return status, f"HTTP GET {url}: {code}"


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    body = await reader.readexactly(length) if length else b""
    url = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    return _Request(method.upper(), url.path, query, headers, body)


def _encode(reply: _Reply) -> bytes:
    if reply.raw is not None:
        body = reply.raw
        ctype = "application/json" if reply.raw_json else "text/plain; charset=utf-8"
    else:
        body, ctype = json.dumps(reply.body).encode(), "application/json"
    headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **reply.extra}
    if reply.index is not None:
        headers |= {
            "X-Consul-Index": reply.index_text or str(reply.index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
        }
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(
        reply.status, "Error"
    )
    head = f"HTTP/1.1 {reply.status} {reason}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode("latin-1") + b"\r\n" + body


def load_data(sim: ConsulSimulator, data: Any) -> None:
    """Seed the simulator from --data: {"register": [catalog bodies], "config": [entries]}; a
    body's Datacenter other than the local one adds that datacenter."""
    for body in data.get("register") or []:
        if body.get("Datacenter"):
            sim.add_datacenter(str(body["Datacenter"]))
        sim._catalog_register(body)
    for entry in data.get("config") or []:
        sim.state.put_config(entry)


def load_config_entries(directory: Path) -> list[dict[str, Any]]:
    """The config entries in directory's *.json files, as `consul config write` takes them (one
    entry per file, or a list); ConfigError names the file when one is not an entry. JSON only:
    Consul's HCL is HCL 1, which python-hcl2 (HCL 2) refuses and pyhcl no longer maintains."""
    from meshagent.errors import ConfigError

    if not directory.is_dir():
        raise ConfigError("not a directory", location=str(directory), field="--config-entries")
    entries: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read a config entry: {exc}", location=str(path)) from None
        for entry in doc if isinstance(doc, list) else [doc]:
            if not isinstance(entry, dict) or not entry.get("Kind") or not entry.get("Name"):
                raise ConfigError("a config entry needs Kind and Name", location=str(path))
            entries.append(entry)
    return entries


async def run_simulator(
    host: str,
    port: int,
    *,
    acl_token: str | None = None,
    data: Any = None,
    max_conns_per_client: int = MAX_CONNS_PER_CLIENT,
) -> None:
    """`meshagent dev consul-sim`: serve until cancelled."""
    sim = ConsulSimulator(
        host, port, acl_token=acl_token, max_conns_per_client=max_conns_per_client
    )
    if data:
        load_data(sim, data)
    await sim.serve_async()
    print(f"consul simulator listening on http://{sim.address}", flush=True)
    freezer = asyncio.create_task(_freeze_long_lived())
    try:
        await asyncio.Event().wait()
    finally:
        freezer.cancel()
        await sim.close_async()


async def _freeze_long_lived(every_s: float = 1.0, full_every_s: float = 600.0) -> None:
    """Keep Python's full collections off the simulator's answers (the process of `dev
    consul-sim`).

    Consul is a Go program whose collector runs concurrently; this one would stop for a full
    collection (~200 ms with 10k services and their blocked queries) whenever the long-lived
    heap grew by a quarter, and a benchmark would measure that. So what is alive is frozen
    (gc.freeze: collections skip it) every second, and unfrozen and fully collected only every
    ten minutes, so that cyclic garbage frozen meanwhile is freed."""
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() - last_full >= full_every_s:
            last_full = time.monotonic()
            gc.unfreeze()
            gc.collect()
        gc.freeze()
