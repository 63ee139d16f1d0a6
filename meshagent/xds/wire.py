"""The protobuf varint, for code that frames serialized messages without protobuf.

The fast encoders of Envoy resources (meshagent/xds/translate/encode/) and the Any framing
of resource versions (resources.py) use it; tests check it against protobuf's own encoding.
Field helpers and the shapes of Envoy resources live in the encode package only.
"""

from __future__ import annotations

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
