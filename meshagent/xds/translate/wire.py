"""Protobuf wire-format pieces, for assembling serialized messages from cached parts.

Deterministic protobuf serialization writes fields in field-number order, so a message's
bytes are the concatenation of its fields' encodings; tests check every use against the
protobuf library's own serialization.
"""

from __future__ import annotations

LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """value (>= 0) as a base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def bytes_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string or embedded message) with its tag."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(data)) + data


def string_field(number: int, text: str) -> bytes:
    """A string field with its tag."""
    return bytes_field(number, text.encode())
