"""Protobuf wire-format pieces, for assembling serialized messages from cached parts.

Deterministic protobuf serialization writes fields in field-number order, so a message's
bytes are the concatenation of its fields' encodings; tests check every use against the
protobuf library's own serialization.
"""

from __future__ import annotations

LENGTH_DELIMITED = 2


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """value (>= 0) as a base-128 varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:  # two bytes: the length of most messages of a few hundred bytes
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def bytes_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string or embedded message) with its tag."""
    tag = number << 3 | LENGTH_DELIMITED
    size = len(data)
    if tag < 0x80:
        if size < 0x80:  # the usual case: tag and length take a byte each
            return bytes((tag, size)) + data
        if size < 0x4000:  # a two-byte length: endpoint groups, virtual hosts
            return bytes((tag, (size & 0x7F) | 0x80, size >> 7)) + data
    return varint(tag) + varint(size) + data


def string_field(number: int, text: str) -> bytes:
    """A string field with its tag."""
    data = text.encode()
    size = len(data)
    if number < 16 and size < 0x80:  # names: tag and length take a byte each
        return bytes((number << 3 | LENGTH_DELIMITED, size)) + data
    return bytes_field(number, data)
