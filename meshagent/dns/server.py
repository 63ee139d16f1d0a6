"""The DNS proxy: mesh names answered from the NameTable, everything else forwarded.

UDP and TCP on one address and port (default 127.0.0.1:15053, where capture sends port 53),
and on more addresses at that port with listen_also ([::1] for ip6tables' redirects).
- A or AAAA of a mesh name: an authoritative answer, TTL 30 s; a mesh name asked for a type
  it has no address of (AAAA of an IPv4-only host) gets NOERROR with no answer, not NXDOMAIN
  (a client asking A and AAAA together must not take the name for missing). Other types of
  a mesh name are forwarded, as Istio's proxy does (the mesh only knows addresses).
- any other name: forwarded (upstream.py); SERVFAIL when no resolver answers.
- before the first table: SERVFAIL, so that no mesh name is answered NXDOMAIN by upstream.
- a message that does not parse gets FORMERR when it has a query's header, else nothing; a
  UDP answer larger than the client takes (512 bytes, or its EDNS size) is truncated (TC)
  so that the client asks again over TCP.
Plain A/AAAA queries are read and answered by hand (wire.py); the rest through dnspython.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog

from meshagent.dns.table import NameTable, Record, build_table
from meshagent.dns.upstream import Upstreams, question_end
from meshagent.dns.wire import (
    OUR_PAYLOAD,
    Question,
    address_records,
    read_plain_query,
    write_answer,
)
from meshagent.model.snapshot import MeshSnapshot

log = structlog.get_logger("meshagent.dns")

TTL = 30
UDP_DEFAULT_SIZE = 512
TCP_SIZE = 65535  # what a TCP client takes
MAX_FORWARDS = 1024  # concurrent forwarded queries; more get SERVFAIL
TCP_IDLE_S = 10.0
REBUILD_HOSTS = 500  # more changed hosts than this: a new table, built in a worker thread

_A, _AAAA = dns.rdatatype.A, dns.rdatatype.AAAA
_IN = dns.rdataclass.IN


def _rdatas(kind: dns.rdatatype.RdataType, addresses: tuple[str, ...]) -> list[dns.rdata.Rdata]:
    return [dns.rdata.from_text(_IN, kind, a) for a in addresses]


def _header_reply(wire: bytes, rcode: int, *, question: bool = True) -> bytes:
    """A reply of only a header (and the question, unless question is False) with rcode."""
    ident, flags = struct.unpack_from("!HH", wire)
    flags = 0x8000 | (flags & 0x7900) | rcode  # QR, the query's opcode and RD
    end = question_end(wire) if question else 0
    if end:
        return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + wire[12:end]
    return struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)


def _limit(query: dns.message.Message, tcp: bool) -> int:
    """The largest reply the client takes: its EDNS size (at least 512) over UDP."""
    if tcp:
        return TCP_SIZE
    return max(query.payload, UDP_DEFAULT_SIZE) if query.edns >= 0 else UDP_DEFAULT_SIZE


def _fit(wire: bytes, limit: int) -> bytes:
    """wire, or when longer than limit its header and question with TC set."""
    if len(wire) <= limit:
        return wire
    ident, flags, qdcount = struct.unpack_from("!HHH", wire)
    end = question_end(wire) if qdcount == 1 else 0
    question = wire[12:end] if end else b""
    return struct.pack("!HHHHHH", ident, flags | 0x0200, 1 if end else 0, 0, 0, 0) + question


@dataclass(frozen=True, slots=True)
class Forward:
    """A query to ask upstream; limit: the largest reply the client takes."""

    limit: int


class DnsProxy:
    """The server. start() binds (OSError when it cannot), stop() closes; follow() takes
    each new mesh snapshot. upstreams: where unknown names go (the caller leaves this server
    out). Lives on one event loop."""

    def __init__(
        self,
        table: NameTable,
        upstreams: Upstreams,
        *,
        address: str = "127.0.0.1",
        port: int = 15053,
    ) -> None:
        self.table = table
        self.upstreams = upstreams
        self.address = address
        self.port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._more: list[tuple[asyncio.DatagramTransport, asyncio.Server]] = []  # listen_also
        self._in_flight = 0  # forwarded queries waiting for upstream
        self._following = asyncio.Lock()
        self._loop_logged = False
        self._rdata_cache: dict[tuple[str, int], list[dns.rdata.Rdata]] = {}
        self._wire_cache: dict[tuple[str, int], tuple[bytes, ...]] = {}  # (host, type) -> RRs
        # Counters for the metrics (read at scrape time: nothing on the hot path but +1).
        self.queries = 0
        self.forwarded = 0
        self.upstream_failures = 0

    @property
    def listening(self) -> bool:
        return self._udp is not None and self._tcp is not None

    @property
    def ready(self) -> bool:
        """Listening, with a table from the mesh."""
        return self.listening and self.table.loaded

    async def start(self) -> None:
        """Listen on UDP and TCP (port 0: a free port that both protocols get; tests)."""
        loop = asyncio.get_running_loop()
        for attempt in range(20 if self.port == 0 else 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self), local_addr=(self.address, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.address, port)
            except OSError:
                udp.close()
                if attempt == 19 or self.port != 0:
                    raise
                continue
            self._udp, self.port = udp, port
            break
        log.info("dns_listening", address=self.address, port=self.port)

    async def listen_also(self, address: str) -> None:
        """Listen on address too, at the same port (e.g. [::1], where ip6tables sends DNS)."""
        loop = asyncio.get_running_loop()
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self), local_addr=(address, self.port)
        )
        try:
            tcp = await asyncio.start_server(self._serve_tcp, address, self.port)
        except OSError:
            udp.close()
            raise
        self._more.append((udp, tcp))
        log.info("dns_listening", address=address, port=self.port)

    async def stop(self) -> None:
        for udp, tcp in self._more:
            udp.close()
            tcp.close()
        self._more.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        self.upstreams.close()

    async def follow(self, snapshot: MeshSnapshot) -> None:
        """Answer from snapshot from now on. A few changed hosts are refiled in place (they
        cost microseconds each); a large change (a first load, a source's resync) builds a
        new table in a worker thread while the current one keeps answering."""
        async with self._following:  # one at a time, in the order they were called
            table = self.table
            hosts = table.changed_hosts(snapshot)
            if not hosts and table.loaded:
                return
            if len(hosts) > REBUILD_HOSTS:
                self.table = await asyncio.to_thread(build_table, snapshot, table.options)
            else:
                table.update(snapshot, hosts)
        self._rdata_cache.clear()
        self._wire_cache.clear()
        log.debug("dns_table_updated", names=len(self.table), version=snapshot.version)

    # --- answering ----------------------------------------------------------------------

    def answer(self, wire: bytes, tcp: bool) -> bytes | Forward | None:
        """The reply to wire (bytes), or Forward (ask upstream), or None (drop it)."""
        self.queries += 1
        if len(wire) < 12 or wire[2] & 0x80:  # no header, or a response: never answered
            return None
        plain = read_plain_query(wire)
        if plain is not None and self.table.loaded:
            limit = TCP_SIZE if tcp else max(plain.payload, UDP_DEFAULT_SIZE)
            if plain.qclass != _IN or plain.qtype not in (_A, _AAAA):
                return Forward(limit)
            record = self.table.lookup(plain.name)
            if record is None:
                return Forward(limit)
            if not record.cname:
                return _fit(self._records_reply(wire, plain, record), limit)
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # any garbage: dnspython raises many kinds
            return _header_reply(wire, dns.rcode.FORMERR, question=False)
        if query.opcode() != dns.opcode.QUERY:
            return _header_reply(wire, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return _header_reply(wire, dns.rcode.FORMERR, question=False)
        if not self.table.loaded:
            return _header_reply(wire, dns.rcode.SERVFAIL)
        question = query.question[0]
        if question.rdclass != _IN or question.rdtype not in (_A, _AAAA):
            return Forward(_limit(query, tcp))
        record = self.table.lookup(question.name.to_text().lower())
        if record is None:
            return Forward(_limit(query, tcp))
        return self._local(query, record, tcp)

    def _records_reply(self, wire: bytes, plain: Question, record: Record) -> bytes:
        """The reply to a plain query (wire.py) for a name of the table, without CNAME."""
        key = (record.host, plain.qtype)
        rrs = self._wire_cache.get(key)
        if rrs is None:
            addresses = record.v4 if plain.qtype == _A else record.v6
            rrs = self._wire_cache[key] = address_records(plain.qtype, addresses, TTL)
        count = len(rrs)
        if count > 1:  # rotate, so that clients taking the first address spread (as kube-dns)
            turn = self.queries % count
            return write_answer(wire, plain, b"".join(rrs[turn:] + rrs[:turn]), count)
        return write_answer(wire, plain, rrs[0] if rrs else b"", count)

    def _local(self, query: dns.message.Message, record: Record, tcp: bool) -> bytes:
        question = query.question[0]
        response = dns.message.make_response(query, our_payload=OUR_PAYLOAD)
        response.flags |= dns.flags.AA
        kind = question.rdtype
        addresses = record.v4 if kind == _A else record.v6
        owner = question.name
        if record.cname:
            target = dns.name.from_text(record.cname)
            rr = dns.rrset.from_rdata_list(
                owner, TTL, [dns.rdata.from_text(_IN, dns.rdatatype.CNAME, record.cname)]
            )
            response.answer.append(rr)
            owner = target
        if addresses:
            key = (record.host, kind)
            rdatas = self._rdata_cache.get(key)
            if rdatas is None:
                rdatas = self._rdata_cache[key] = _rdatas(kind, addresses)
            response.answer.append(dns.rrset.from_rdata_list(owner, TTL, rdatas))
        return _fit(response.to_wire(), _limit(query, tcp))

    def forward(
        self,
        wire: bytes,
        forward: Forward,
        send: Callable[[bytes], None],
        source: tuple[str, int] = ("", 0),
    ) -> None:
        """Ask upstream; send(its answer fitted to the client's size, or SERVFAIL when none
        answers or too many are in flight), later, on the event loop. source: the client's
        UDP address, by which our own forwarded queries are known when they loop back."""
        if self._in_flight >= MAX_FORWARDS:
            send(_header_reply(wire, dns.rcode.SERVFAIL))
            return
        if self.upstreams.is_own(source):
            if not self._loop_logged:
                self._loop_logged = True
                log.error("dns_forwarding_loop", upstreams=[str(s) for s in self.upstreams.servers])
            send(_header_reply(wire, dns.rcode.SERVFAIL))
            return
        self._in_flight += 1
        self.forwarded += 1

        def done(answer: bytes | None) -> None:
            self._in_flight -= 1
            if answer is None:
                self.upstream_failures += 1
                send(_header_reply(wire, dns.rcode.SERVFAIL))
            else:
                send(_fit(answer, forward.limit))

        self.upstreams.ask(wire, done, whole=forward.limit == TCP_SIZE)

    async def forwarded_reply(self, wire: bytes, forward: Forward) -> bytes:
        """forward(), awaited."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def send(reply: bytes) -> None:
            if not future.done():
                future.set_result(reply)

        self.forward(wire, forward, send)
        return await future

    # --- TCP ----------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    wire = await reader.readexactly(size)
                reply = self.answer(wire, True)
                if isinstance(reply, Forward):
                    reply = await self.forwarded_reply(wire, reply)
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception:  # a bug must not take the server down; the client reconnects
            log.exception("dns_tcp_failed_bug")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        proxy = self.proxy
        try:
            reply = proxy.answer(data, False)
        except Exception:  # a bug must not take the server down
            log.exception("dns_answer_failed_bug")
            return
        if isinstance(reply, bytes):
            self._send(reply, addr)
        elif reply is not None:
            proxy.forward(data, reply, lambda answer: self._send(answer, addr), addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # a client that went away
