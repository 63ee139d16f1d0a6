"""Forwarding to the host's resolvers: over UDP, and again over TCP when the answer is
truncated and the client asked over TCP (a UDP client gets the truncated answer and retries).

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
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("meshagent.dns")

MAX_PENDING = 4096  # outstanding UDP queries per socket; more go to the next server
ROTATE_AFTER = 64  # queries sent on one socket before a new one (a new source port) is used
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

    __slots__ = ("done", "end", "ident", "index", "timer", "upstreams", "whole", "wire")

    def __init__(
        self, upstreams: Upstreams, wire: bytes, end: int, done: Done, whole: bool
    ) -> None:
        self.upstreams, self.wire, self.end, self.done = upstreams, wire, end, done
        self.whole = whole
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
        channel = self.upstreams._channel(servers[self.index])
        if channel is None or not channel.ask(self):
            self.next_server()

    def answered(self, data: bytes) -> None:
        """The server's UDP answer; a truncated one is asked again over TCP when the client
        takes any size (it asked over TCP); a UDP client gets it as it is, and retries."""
        if self.whole and struct.unpack_from("!H", data, 2)[0] & TC_FLAG:
            self.upstreams._tcp_then(self.upstreams.servers[self.index], self, data)
            return
        self.finish(data)

    def finish(self, data: bytes) -> None:
        self.done(with_id(data, struct.unpack_from("!H", self.wire)[0]))


class _UdpChannel:
    """One connected, non-blocking UDP socket to one server, read by the event loop, with
    the exchanges waiting on it. After ROTATE_AFTER queries it takes no more and closes once
    they are answered: a fresh socket, on a fresh source port, takes over (RFC 5452: the port
    is part of what a spoofer must guess, besides the 16-bit id)."""

    def __init__(self, server: Server, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in server.address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((server.address, server.port))
            self.loop.add_reader(self.sock.fileno(), self._readable)
        except OSError:
            self.sock.close()
            raise
        local = self.sock.getsockname()
        self.local: tuple[str, int] = (local[0], local[1])
        self.pending: dict[int, _Exchange] = {}
        self.sent = 0
        self.retired = False
        self.closed = False

    def ask(self, exchange: _Exchange) -> bool:
        """Send exchange's query under a free id; False when it cannot be sent now."""
        if len(self.pending) >= MAX_PENDING or self.retired:
            return False
        ident = random.randrange(65536)
        while ident in self.pending:
            ident = random.randrange(65536)
        try:
            self.sock.send(with_id(exchange.wire, ident))
        except OSError:  # a full buffer, a refusal (ICMP) reported late: try the next server
            return False
        exchange.ident = ident
        self.pending[ident] = exchange
        exchange.timer = self.loop.call_later(self.timeout, self._expire, ident)
        self.sent += 1
        if self.sent >= ROTATE_AFTER:
            self.retired = True
        return True

    def _expire(self, ident: int) -> None:
        exchange = self.pending.pop(ident, None)
        self._close_if_done()
        if exchange is not None:
            exchange.next_server()

    def _readable(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            except OSError:
                # ICMP port unreachable and the like: the server is not there; the waiting
                # queries go to the next server now rather than after the timeout.
                self._fail_all()
                break
            self._received(data)
        self._close_if_done()

    def _received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        exchange = self.pending.get(struct.unpack_from("!H", data)[0])
        if exchange is None:
            return
        if data[12 : exchange.end].lower() != exchange.wire[12 : exchange.end].lower():
            return  # not the answer to what we asked
        del self.pending[exchange.ident]
        if exchange.timer is not None:
            exchange.timer.cancel()
        exchange.answered(data)

    def _fail_all(self) -> None:
        waiting, self.pending = self.pending, {}
        self.retired = True  # a socket with an error: replaced
        for exchange in waiting.values():
            if exchange.timer is not None:
                exchange.timer.cancel()
            exchange.next_server()

    def _close_if_done(self) -> None:
        if self.retired and not self.pending:
            self.close()

    def close(self) -> None:
        """Stop reading and close the socket (exchanges still waiting get no answer)."""
        if self.closed:
            return
        self.closed = True
        for exchange in self.pending.values():
            if exchange.timer is not None:
                exchange.timer.cancel()
        self.pending.clear()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Upstreams:
    """The resolvers unknown names go to."""

    def __init__(self, servers: list[Server], *, timeout: float = 2.0) -> None:
        self.servers = servers
        self.timeout = timeout
        self._channels: dict[Server, _UdpChannel] = {}  # the socket each server is asked on
        self._retiring: set[_UdpChannel] = set()  # replaced, still waiting for answers
        self._tasks: set[asyncio.Task[None]] = set()

    def ask(self, wire: bytes, done: Done, *, whole: bool = True) -> None:
        """Forward wire; done(answer with wire's id, or None when no server answers) is called
        once, later, on the event loop. whole: fetch truncated answers again over TCP (for a
        client that takes any size); else a truncated answer is the answer."""
        end = question_end(wire)
        if end == 0:
            asyncio.get_running_loop().call_soon(done, None)
            return
        _Exchange(self, wire, end, done, whole).next_server()

    def is_own(self, source: tuple[str, int]) -> bool:
        """Whether a query from source (address, port) is one of our own forwarded queries,
        come back: a forwarding loop (an upstream that sends to this proxy, e.g. port 53
        redirected for the agent's own queries too). Our sockets' ports are ours alone."""
        return any(
            channel.local == source[:2] and not channel.closed
            for channel in (*self._channels.values(), *self._retiring)
        )

    async def query(self, wire: bytes) -> bytes | None:
        """ask(), awaited."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(answer: bytes | None) -> None:
            if not future.done():
                future.set_result(answer)

        self.ask(wire, done)
        return await future

    def _channel(self, server: Server) -> _UdpChannel | None:
        """The socket to ask server on (a new one when the last was retired); None when none
        can be opened."""
        channel = self._channels.get(server)
        if channel is not None and not channel.retired:
            return channel
        if channel is not None:
            self._retiring = {c for c in self._retiring if not c.closed}
            if not channel.closed:
                self._retiring.add(channel)
        try:
            channel = self._channels[server] = _UdpChannel(server, self.timeout)
        except OSError as exc:
            self._channels.pop(server, None)
            log.debug("dns_upstream_failed", server=str(server), error=str(exc))
            return None
        return channel

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for channel in (*self._channels.values(), *self._retiring):
            channel.close()
        self._channels.clear()
        self._retiring.clear()
        for task in self._tasks:
            task.cancel()
