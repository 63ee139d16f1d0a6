"""The common query read, and its address answer written, without a DNS library (sans-io).

Nearly every query a resolver sends is one plain question (letters, digits, `-`, `_`), with
or without one EDNS(0) OPT record. Reading and writing those by hand costs a tenth of a
general parse and render; anything else (and all garbage) goes to dnspython (server.py).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A, TYPE_AAAA, TYPE_OPT, CLASS_IN = 1, 28, 41, 1
OUR_PAYLOAD = 1232  # the EDNS size we announce (DNS flag day 2020), as dnspython does
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_HEADER = struct.Struct("!HHHHHH")
_OPT_REPLY = b"\x00" + struct.pack("!HHIH", TYPE_OPT, OUR_PAYLOAD, 0, 0)


@dataclass(frozen=True, slots=True)
class Question:
    """A plain query: its name (lower case, with the final dot), type, class, where the
    question ends in the wire, and the EDNS payload size it announced (-1: no EDNS)."""

    name: str
    qtype: int
    qclass: int
    end: int
    payload: int


def read_plain_query(wire: bytes) -> Question | None:
    """wire's question when wire is a plain query (module docstring); else None."""
    if len(wire) < 17:
        return None
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
    if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # a response, an opcode, counts
        return None
    labels: list[bytes] = []
    pos, size = 12, len(wire)
    while True:
        length = wire[pos]
        if length == 0:
            break
        label = wire[pos + 1 : pos + 1 + length]
        if length > 63 or len(label) != length or not _PLAIN.issuperset(label):
            return None
        labels.append(label)
        pos += 1 + length
        if pos >= size:
            return None
    end = pos + 5
    if end > size or not labels:
        return None
    qtype, qclass = struct.unpack_from("!HH", wire, pos + 1)
    payload = -1
    if ar:
        if end + 11 > size or wire[end] != 0:
            return None
        rtype, udp, _, version, _, rdlen = struct.unpack_from("!HHBBHH", wire, end + 1)
        if rtype != TYPE_OPT or version != 0 or end + 11 + rdlen != size:
            return None
        payload = udp
    elif end != size:
        return None
    name = b".".join(labels).lower().decode("ascii") + "."
    return Question(name, qtype, qclass, end, payload)


def address_records(qtype: int, addresses: tuple[str, ...], ttl: int) -> tuple[bytes, ...]:
    """One answer record per address, owned by the question's name (a pointer to it)."""
    out = []
    for text in addresses:
        packed = ipaddress.ip_address(text).packed
        out.append(struct.pack("!HHHIH", 0xC00C, qtype, CLASS_IN, ttl, len(packed)) + packed)
    return tuple(out)


def write_answer(wire: bytes, question: Question, records: bytes, count: int) -> bytes:
    """An authoritative NOERROR reply to wire with count records (address_records joined)."""
    ident, flags = struct.unpack_from("!HH", wire)
    reply_flags = 0x8400 | (flags & 0x0100)  # QR, AA, and the query's RD
    extra = 1 if question.payload >= 0 else 0
    head = _HEADER.pack(ident, reply_flags, 1, count, 0, extra)
    tail = _OPT_REPLY if extra else b""
    return b"".join((head, wire[12 : question.end], records, tail))
