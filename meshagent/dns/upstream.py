"""Forwarding to the host's resolvers: UDP first, TCP when the answer is truncated.

The query goes out as the client sent it, under an id of our own (so that clients using the
same id do not mix); the answer comes back with the client's id. An answer counts only if it
comes from the server asked, with our id and the question asked. Servers are tried in order,
each for `timeout` seconds (a server that refuses, by ICMP, at once), as a stub resolver does.
The UDP exchange is driven by callbacks, not a task per query: forwarding is the proxy's
busiest path after its own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import structlog

log = structlog.get_logger("meshagent.dns")

MAX_PENDING = 4096  # outstanding UDP queries per server; more are refused (SERVFAIL)
TC_FLAG = 0x0200


def question_end(wire: bytes) -> int:
    """Where the (single) question of a message ends; 0 when it does not parse."""
    pos = 12
    while pos < len(wire):
        length = wire[pos]
        if length == 0:
            end = pos + 1 + 4
            return end if end <= len(wire) else 0
        if length & 0xC0:  # a compression pointer ends the name
            end = pos + 2 + 4
            return end if end <= len(wire) else 0
        pos += 1 + length
    return 0


def with_id(wire: bytes, ident: int) -> bytes:
    """wire with its message id replaced."""
    return struct.pack("!H", ident) + wire[2:]


@dataclass(frozen=True, slots=True)
class Server:
    """A resolver to forward to."""

    address: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


Done = Callable[[bytes | None], None]


class _Exchange:
    """One forwarded query: its servers tried in turn until one answers (then done(answer),
    with the client's id) or none is left (done(None)). Lives on the event loop."""

    __slots__ = ("done", "end", "ident", "index", "timer", "upstreams", "wire")

    def __init__(self, upstreams: Upstreams, wire: bytes, end: int, done: Done) -> None:
        self.upstreams, self.wire, self.end, self.done = upstreams, wire, end, done
        self.index = -1
        self.ident = -1
        self.timer: asyncio.TimerHandle | None = None

    def next_server(self) -> None:
        """Ask the next server (over UDP), or give up."""
        self.index += 1
        servers = self.upstreams.servers
        if self.index >= len(servers):
            self.done(None)
            return
        channel = self.upstreams._channels.get(servers[self.index])
        if channel is None or channel.transport is None:
            self.upstreams._open_then(servers[self.index], self)
            return
        if not channel.ask(self):
            self.next_server()

    def answered(self, data: bytes) -> None:
        """The server's UDP answer; truncated ones are asked again over TCP."""
        if struct.unpack_from("!H", data, 2)[0] & TC_FLAG:
            self.upstreams._tcp_then(self.upstreams.servers[self.index], self, data)
            return
        self.finish(data)

    def finish(self, data: bytes) -> None:
        self.done(with_id(data, struct.unpack_from("!H", self.wire)[0]))


class _UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket to one server, with the exchanges waiting on it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, _Exchange] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def ask(self, exchange: _Exchange) -> bool:
        """Send exchange's query under a free id; False when too many are waiting."""
        if len(self.pending) >= MAX_PENDING or self.transport is None:
            return False
        ident = random.randrange(65536)
        while ident in self.pending:
            ident = random.randrange(65536)
        exchange.ident = ident
        self.pending[ident] = exchange
        loop = asyncio.get_running_loop()
        exchange.timer = loop.call_later(self.timeout, self._expire, ident)
        self.transport.sendto(with_id(exchange.wire, ident))
        return True

    def _expire(self, ident: int) -> None:
        exchange = self.pending.pop(ident, None)
        if exchange is not None:
            exchange.next_server()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12:
            return
        ident = struct.unpack_from("!H", data)[0]
        exchange = self.pending.get(ident)
        if exchange is None:
            return
        question = exchange.wire[12 : exchange.end]
        if data[12 : exchange.end].lower() != question.lower():
            return  # not the answer to what we asked
        del self.pending[ident]
        if exchange.timer is not None:
            exchange.timer.cancel()
        exchange.answered(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the server is not there; the waiting queries
        # go to the next server now rather than after the timeout.
        waiting, self.pending = self.pending, {}
        for exchange in waiting.values():
            if exchange.timer is not None:
                exchange.timer.cancel()
            exchange.next_server()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Upstreams:
    """The resolvers unknown names go to."""

    def __init__(self, servers: list[Server], *, timeout: float = 2.0) -> None:
        self.servers = servers
        self.timeout = timeout
        self._channels: dict[Server, _UdpChannel] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def ask(self, wire: bytes, done: Done) -> None:
        """Forward wire; done(answer with wire's id, or None when no server answers) is called
        once, later, on the event loop."""
        end = question_end(wire)
        if end == 0:
            asyncio.get_running_loop().call_soon(done, None)
            return
        _Exchange(self, wire, end, done).next_server()

    def is_own(self, wire: bytes) -> bool:
        """Whether wire is one of our own forwarded queries, come back: a forwarding loop
        (an upstream that sends to this proxy, e.g. port 53 redirected for the agent too)."""
        ident = struct.unpack_from("!H", wire)[0]
        for channel in self._channels.values():
            exchange = channel.pending.get(ident)
            if exchange is not None and wire[12 : exchange.end] == exchange.wire[12 : exchange.end]:
                return True
        return False

    async def query(self, wire: bytes) -> bytes | None:
        """ask(), awaited."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(answer: bytes | None) -> None:
            if not future.done():
                future.set_result(answer)

        self.ask(wire, done)
        return await future

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open_then(self, server: Server, exchange: _Exchange) -> None:
        """Open server's UDP socket, then ask it (the first query to a server only)."""

        async def open_and_ask() -> None:
            try:
                channel = self._channels.get(server)
                if channel is None or channel.transport is None:
                    loop = asyncio.get_running_loop()
                    _, channel = await loop.create_datagram_endpoint(
                        lambda: _UdpChannel(self.timeout),
                        remote_addr=(server.address, server.port),
                    )
                    self._channels[server] = channel
            except OSError as exc:
                log.debug("dns_upstream_failed", server=str(server), error=str(exc))
                exchange.next_server()
                return
            if not channel.ask(exchange):
                exchange.next_server()

        self._spawn(open_and_ask())

    def _tcp_then(self, server: Server, exchange: _Exchange, truncated: bytes) -> None:
        """Ask server again over TCP; its answer, else the truncated one, finishes exchange."""

        async def over_tcp() -> None:
            whole = await self._tcp(server, exchange.wire)
            exchange.finish(whole or truncated)

        self._spawn(over_tcp())

    async def _tcp(self, server: Server, wire: bytes) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(server.address, server.port)
                try:
                    writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    return await reader.readexactly(size)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            return None

    def close(self) -> None:
        """Close the sockets and stop what is in flight (its clients get no answer)."""
        for channel in self._channels.values():
            for exchange in channel.pending.values():
                if exchange.timer is not None:
                    exchange.timer.cancel()
            channel.pending.clear()
            if channel.transport is not None:
                channel.transport.close()
        self._channels.clear()
        for task in self._tasks:
            task.cancel()
