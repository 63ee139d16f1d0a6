"""Protobuf wire-format pieces, for assembling serialized messages from cached parts.

Deterministic protobuf serialization writes fields in field-number order, so a message's
bytes are the concatenation of its fields' encodings. Field numbers are read from the
messages' descriptors, and constant fragments are cut out of messages that the protobuf
builders made (`split_around`): the builders stay the one definition of each shape.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from meshagent.xds.wire import varint

LENGTH_DELIMITED = 2


def field_number(message: type[Message], name: str) -> int:
    """The number of message's field name, from its descriptor."""
    number: int = message.DESCRIPTOR.fields_by_name[name].number
    return number


def tag(message: type[Message], name: str) -> bytes:
    """The tag of message's length-delimited field name (bytes, string or message)."""
    return varint(field_number(message, name) << 3 | LENGTH_DELIMITED)


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


def split_between(
    first: bytes, second: bytes, first_part: bytes, second_part: bytes
) -> tuple[bytes, bytes]:
    """The bytes before and after the one place where first holds first_part and second holds
    second_part (of the same size, differing in their first byte); the rest must be equal."""
    if len(first_part) != len(second_part) or first_part[:1] == second_part[:1]:
        raise ValueError("the parts must have one size and differ in their first byte")
    same = zip(first, second, strict=False)  # lengths are compared below
    start = next((i for i, (x, y) in enumerate(same) if x != y), len(first))
    end = start + len(first_part)
    if (
        len(first) != len(second)
        or first[start:end] != first_part
        or second[start:end] != second_part
        or first[:start] != second[:start]
        or first[end:] != second[end:]
    ):
        raise ValueError("the two messages must differ in the given parts only")
    return first[:start], first[end:]


def split_around(build: Callable[[str], bytes], size: int) -> tuple[bytes, bytes]:
    """The bytes before and after a string of size (> 0) bytes in build's output.

    build(fill) serializes a message holding `fill * size` in one string field and
    nothing else that varies with fill; serializing it with two fills shows where that
    string sits. Every length prefix depends on size only, so the parts hold for any
    string of that size (ASCII or not).
    """
    if size <= 0:
        raise ValueError("split_around needs a string of at least one byte")
    return split_between(build("a"), build("b"), b"a" * size, b"b" * size)
