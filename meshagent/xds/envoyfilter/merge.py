"""MERGE as Istio does it: protobuf merge semantics (set scalars overwrite, messages merge
recursively, repeated fields append), and filter configs merged inside their Any.
"""

from __future__ import annotations

from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from meshagent.envoy_types import load_type


class MergeError(Exception):
    """A patch that cannot be merged into its target (e.g. an Any of an unknown type)."""


def decode(type_name: str, value: bytes) -> Message:
    """A fresh message of type_name from its serialization."""
    load_type(type_name)
    try:
        cls = symbol_database.Default().GetSymbol(type_name)
    except KeyError as exc:
        raise MergeError(f"unknown type {type_name}") from exc
    message: Message = cls()
    message.ParseFromString(value)
    return message


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside packed."""
    return decode(packed.type_url.rsplit("/", 1)[-1], packed.value)


def merge_any(dst: any_pb2.Any, src: any_pb2.Any, operation: str = "MERGE") -> None:
    """Merge src's message into dst's, within dst's type (Istio's MergeAnyWithAny: a patch
    written against another version of the type is read as dst's type)."""
    target = unpack(dst)
    patch = decode(target.DESCRIPTOR.full_name, src.value)
    merge_value(operation, target, patch)
    dst.value = target.SerializeToString(deterministic=True)


def merge(dst: Message, src: Message) -> None:
    """Istio's merge.Merge: protobuf merge."""
    dst.MergeFrom(src)


def merge_replacing_lists(dst: Message, src: Message) -> None:
    """MERGE_AND_REPLACE_LIST: as merge, but a repeated field set in src replaces dst's."""
    for descriptor, value in src.ListFields():
        target = getattr(dst, descriptor.name)
        if descriptor.label == descriptor.LABEL_REPEATED:  # type: ignore[attr-defined]
            dst.ClearField(descriptor.name)
            getattr(dst, descriptor.name).MergeFrom(value)
        elif descriptor.message_type is not None:
            merge_replacing_lists(target, value)
        else:
            setattr(dst, descriptor.name, value)


def merge_value(operation: str, dst: Message, src: Message) -> None:
    if operation == "MERGE_AND_REPLACE_LIST":
        merge_replacing_lists(dst, src)
    else:
        merge(dst, src)
