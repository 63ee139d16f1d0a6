"""Forwarding to the host's resolvers: UDP first, TCP when the answer is truncated.

The query goes out as the client sent it, under an id of our own (so that clients using the
same id do not mix); the answer comes back with the client's id. An answer counts only if it
comes from the server asked, with our id and the question asked. Servers are tried in order,
each for `timeout` seconds, as a stub resolver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from dataclasses import dataclass
from typing import cast

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


class _UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket to one server, with the queries waiting on it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12:
            return
        ident = struct.unpack_from("!H", data)[0]
        waiting = self.pending.get(ident)
        if waiting is None:
            return
        question, future = waiting
        if data[12 : 12 + len(question)].lower() != question.lower() or future.done():
            return  # not the answer to what we asked
        future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the server is not there; the waiting queries
        # go to the next server now rather than after the timeout.
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Upstreams:
    """The resolvers unknown names go to."""

    def __init__(self, servers: list[Server], *, timeout: float = 2.0) -> None:
        self.servers = servers
        self.timeout = timeout
        self._channels: dict[Server, _UdpChannel] = {}
        self._lock = asyncio.Lock()

    async def query(self, wire: bytes) -> bytes | None:
        """The first server's answer to wire (with wire's id), or None when none answers."""
        end = question_end(wire)
        if end == 0:
            return None
        for server in self.servers:
            try:
                answer = await self._udp(server, wire, end)
                if answer is not None and struct.unpack_from("!H", answer, 2)[0] & TC_FLAG:
                    answer = await self._tcp(server, wire) or answer
            except OSError as exc:
                log.debug("dns_upstream_failed", server=str(server), error=str(exc))
                continue
            if answer is not None:
                return with_id(answer, struct.unpack_from("!H", wire)[0])
        return None

    async def _channel(self, server: Server) -> _UdpChannel:
        channel = self._channels.get(server)
        if channel is not None and channel.transport is not None:
            return channel
        async with self._lock:
            channel = self._channels.get(server)
            if channel is None or channel.transport is None:
                loop = asyncio.get_running_loop()
                _, channel = await loop.create_datagram_endpoint(
                    _UdpChannel, remote_addr=(server.address, server.port)
                )
                self._channels[server] = channel
        return channel

    async def _udp(self, server: Server, wire: bytes, end: int) -> bytes | None:
        channel = await self._channel(server)
        if len(channel.pending) >= MAX_PENDING or channel.transport is None:
            return None
        ident = random.randrange(65536)
        while ident in channel.pending:
            ident = random.randrange(65536)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        channel.pending[ident] = (wire[12:end], future)
        try:
            channel.transport.sendto(with_id(wire, ident))
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            return None
        finally:
            channel.pending.pop(ident, None)

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
        """Close the sockets (queries still waiting time out)."""
        for channel in self._channels.values():
            if channel.transport is not None:
                channel.transport.close()
        self._channels.clear()
