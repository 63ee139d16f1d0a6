"""Envoy API messages by type name, shared by the normalizer (EnvoyFilter patch values, Envoy
JSON/YAML with "@type" Anys) and the translator's patch stage (merging inside Anys).

A value is parsed with protobuf's json_format against the xds-protos descriptors, as Istio's
validation does (BuildXDSObjectFromStruct): a value that is not the message (a wrong type, an
unknown "@type", an Envoy v2 API type) is an error; an unknown field is dropped with a warning
(Istio parses leniently and only warns for what a strict parse refuses, "in case the proto is
valid but our libraries are outdated"). The message types an "@type" names are imported on
demand: every generated module of the type's package directory, once, and only from the
API's own packages (an "@type" never makes the agent import other code).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

# applyTo -> the Envoy message a patch value of it is (Istio's xds.BuildXDSObjectFromStruct).
VALUE_TYPES: Mapping[str, tuple[str, str]] = {
    "LISTENER": ("envoy.config.listener.v3.listener_pb2", "Listener"),
    "FILTER_CHAIN": ("envoy.config.listener.v3.listener_components_pb2", "FilterChain"),
    "NETWORK_FILTER": ("envoy.config.listener.v3.listener_components_pb2", "Filter"),
    "LISTENER_FILTER": ("envoy.config.listener.v3.listener_components_pb2", "ListenerFilter"),
    "HTTP_FILTER": (
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "HttpFilter",
    ),
    "ROUTE_CONFIGURATION": ("envoy.config.route.v3.route_pb2", "RouteConfiguration"),
    "VIRTUAL_HOST": ("envoy.config.route.v3.route_components_pb2", "VirtualHost"),
    "HTTP_ROUTE": ("envoy.config.route.v3.route_components_pb2", "Route"),
    "CLUSTER": ("envoy.config.cluster.v3.cluster_pb2", "Cluster"),
    "EXTENSION_CONFIG": ("envoy.config.core.v3.extension_pb2", "TypedExtensionConfig"),
    "BOOTSTRAP": ("envoy.config.bootstrap.v3.bootstrap_pb2", "Bootstrap"),
}

_loaded_packages: set[str] = set()
# The top-level packages of the generated API modules (xds-protos); the only ones an "@type"
# may make this process import.
_API_ROOTS = frozenset({"envoy", "udpa", "xds", "validate", "opencensus", "opentelemetry", "cel"})
_GOOGLE_API_PACKAGES = frozenset({"protobuf", "api", "rpc", "type", "logging", "longrunning"})
# The recursion limit of protobuf's binary parsers (upb here, Envoy's C++ protobuf): a value
# nested deeper is accepted by json_format but could never be read back or served.
PROTOBUF_MAX_DEPTH = 100


class PatchValueError(Exception):
    """A patch value that is not the Envoy message its applyTo needs."""


def message_class(apply_to: str) -> type[Message]:
    """The generated class of applyTo's patch values."""
    module, name = VALUE_TYPES[apply_to]
    cls: type[Message] = getattr(importlib.import_module(module), name)
    return cls


def type_urls(value: Any) -> Iterator[str]:
    """Every "@type" in a JSON value, nested ones included."""
    if isinstance(value, Mapping):
        found = value.get("@type")
        if isinstance(found, str):
            yield found
        for item in value.values():
            yield from type_urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from type_urls(item)


def _is_api_package(package: str) -> bool:
    """Whether package is one of the protobuf API packages (xds-protos'): the name comes from
    an "@type" anyone who may write an EnvoyFilter chooses, and importing it runs the code of
    whatever module it names ("this", "antigravity", a module with side effects)."""
    parts = package.split(".")
    if parts[0] == "google":
        return len(parts) > 1 and parts[1] in _GOOGLE_API_PACKAGES
    return parts[0] in _API_ROOTS


def load_type(type_url: str) -> bool:
    """Import the generated modules of type_url's package (once); whether the type is known."""
    full_name = type_url.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return True
    except KeyError:
        pass
    package = full_name.rpartition(".")[0]
    if not _is_api_package(package):
        return False
    if package and package not in _loaded_packages:
        _loaded_packages.add(package)
        try:
            parent = importlib.import_module(package)
        except ImportError:
            return False
        for info in pkgutil.iter_modules(getattr(parent, "__path__", [])):
            if info.name.endswith("_pb2"):
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except ImportError:  # a generated module with a missing dependency
                    continue
    try:
        pool.FindMessageTypeByName(full_name)
    except KeyError:
        return False
    return True


_V2_SEGMENTS = (".v2.", ".v2alpha.", ".v2alpha1.")


def _v2_api(type_url: str) -> bool:
    """A type of Envoy's removed v2 API (Istio no longer knows them either)."""
    full_name = type_url.rsplit("/", 1)[-1]
    return full_name.startswith("envoy.") and any(s in f"{full_name}." for s in _V2_SEGMENTS)


def _parse(apply_to: str, value: Mapping[str, Any], lenient: bool) -> Message:
    message = message_class(apply_to)()
    try:
        json_format.ParseDict(dict(value), message, ignore_unknown_fields=lenient)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise PatchValueError(str(exc).split("\n Available Fields")[0].strip()) from exc
    try:  # what json_format builds, the binary parser (the agent's and Envoy's) may refuse
        _check_readable(type(message).FromString(serialize(message)))
    except DecodeError:
        raise PatchValueError(
            f"nested deeper than protobuf's {PROTOBUF_MAX_DEPTH} message levels"
        ) from None
    return message


def parse_value_checked(apply_to: str, value: Mapping[str, Any]) -> tuple[Message, str]:
    """value as applyTo's Envoy message, and what a strict parse refuses in it ("" when
    nothing: unknown fields, dropped). PatchValueError says why it is not the message."""
    for type_url in type_urls(value):
        if _v2_api(type_url):
            raise PatchValueError(
                f"referenced type unknown (hint: try using the v3 XDS API): {type_url!r}"
            )
        if not load_type(type_url):
            raise PatchValueError(f"referenced type unknown: {type_url!r}")
    message = _parse(apply_to, value, lenient=True)
    try:
        _parse(apply_to, value, lenient=False)
    except PatchValueError as exc:
        return message, str(exc)
    return message, ""


def parse_value(apply_to: str, value: Mapping[str, Any]) -> Message:
    """value as applyTo's Envoy message (unknown fields dropped); PatchValueError says why
    it is not one."""
    return parse_value_checked(apply_to, value)[0]


def _check_readable(message: Message) -> None:
    """DecodeError when an Any in message holds bytes its type's parser refuses (each Any's
    content is parsed on its own, by Envoy too, with its own depth limit)."""
    packed: Any = message
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        name = packed.type_url.rsplit("/", 1)[-1]
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            return
        _check_readable(message_factory.GetMessageClass(descriptor).FromString(packed.value))
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        entry: Any = field.message_type  # set for every TYPE_MESSAGE field
        if entry.GetOptions().map_entry:
            if entry.fields_by_name["value"].type == field.TYPE_MESSAGE:
                for item in value.values():
                    _check_readable(item)
        elif field.is_repeated:
            for item in value:
                _check_readable(item)
        else:
            _check_readable(value)


def serialize(message: Message) -> bytes:
    """The deterministic serialization the model keeps."""
    return message.SerializeToString(deterministic=True)
