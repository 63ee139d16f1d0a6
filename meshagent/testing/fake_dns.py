"""A fake upstream resolver (UDP and TCP) for the DNS proxy's tests and benchmark.

It answers A queries for the names it was given, NXDOMAIN for any other name, and for
names in `big` an answer too large for 512 bytes: over UDP it sends it truncated (TC), as a
real resolver does, so that the asker must come back over TCP. It counts what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class FakeResolver:
    """records: lower-case name with its final dot -> IPv4 addresses."""

    def __init__(
        self, records: dict[str, list[str]], *, address: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.records = records
        self.address = address
        self.port = port  # 0: a free port (the same for UDP and TCP)
        self.udp_queries = 0
        self.tcp_queries = 0
        self.names: list[str] = []  # the names asked, in order
        self.source_ports: set[int] = set()  # where UDP queries came from
        self._made: dict[tuple[bytes, bool], bytes] = {}
        self._names: dict[tuple[bytes, bool], str] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def reply(self, wire: bytes, tcp: bool) -> bytes:
        """The answer to wire (made once per question, then only its id changes)."""
        key = (wire[2:], tcp)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(wire, tcp)[2:]
        self.names.append(self._names[key])
        return wire[:2] + made

    def _make(self, wire: bytes, tcp: bool) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text().lower()
        self._names[(wire[2:], tcp)] = name
        ips = self.records.get(name)
        if ips is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif query.question[0].rdtype == dns.rdatatype.A:
            response.answer.append(
                dns.rrset.from_text_list(
                    query.question[0].name, 60, dns.rdataclass.IN, dns.rdatatype.A, ips
                )
            )
        out = response.to_wire()
        if not tcp and len(out) > 512:
            response.answer.clear()
            response.flags |= dns.flags.TC
            out = response.to_wire()
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(20 if self.port == 0 else 1):  # a port for both UDP and TCP
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.address, self.port)
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
            return

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                wire = await reader.readexactly(size)
                self.tcp_queries += 1
                out = self.reply(wire, True)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeResolver) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.udp_queries += 1
        self.owner.source_ports.add(addr[1])
        if self.transport is not None:
            self.transport.sendto(self.owner.reply(data, False), addr)


def main() -> None:
    """`python -m meshagent.testing.fake_dns ADDRESS PORT NAME=IP...`: serve until killed
    (prints "ready" once listening)."""
    import sys

    address, port = sys.argv[1], int(sys.argv[2])
    records = {n.lower().rstrip(".") + ".": [ip] for n, ip in (a.split("=") for a in sys.argv[3:])}

    async def serve() -> None:
        resolver = FakeResolver(records, address=address, port=port)
        await resolver.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
