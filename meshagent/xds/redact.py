"""Redaction of key material in Envoy resources, the way Envoy's own config dump does it.

Envoy's protos mark secret fields with `(udpa.annotations.sensitive) = true`: a TLS
certificate's private key and password, generic secrets, session ticket keys, HMAC secrets,
and so on. Every field so marked, and everything below it, is shown as "[redacted]" (strings
and bytes) or left out (numbers, booleans, enums). Any fields are unpacked and redacted too,
so a secret inside a filter's typed_config is found wherever it sits. So are TypedStructs
(a typed_config written as a Struct, as an EnvoyFilter may): as Envoy's redaction does, the
Struct is read as the message it stands for, redacted and written back; a Struct that does
not read as its type has every value under a sensitive field's name redacted.

Texts are redacted here too: `redact_text` (PEM private keys, also in base64; what the logs,
bug reports and debug pages apply) and `redact_error_text` (an error Envoy sent, whose
validation errors quote a rejected message whole).

This is the one redaction every path that shows a resource uses: the agent's
/debug/resources (and so `meshagent proxy-config`), CSDS, and anything that logs a resource.
The functions never alter their argument.
"""

from __future__ import annotations

import base64
import functools
import re
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from udpa.annotations import sensitive_pb2

REDACTED = "[redacted]"
_ANY = any_pb2.Any.DESCRIPTOR.full_name
# A PEM private key block (PKCS#8, "EC", "RSA", "ENCRYPTED" ...), also one cut off at the end.
_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
# A PEM text in base64, as a Kubernetes Secret's `data` holds it ("-----BEGIN " encoded), also
# wrapped over lines as `base64` writes it (in a YAML block scalar: indented; in JSON or a repr:
# as "\n" escapes). A continuation is a whole line of base64, so the next YAML key is not one.
_B64 = r"[A-Za-z0-9+/]"
_BREAK = r"(?:\r?\n|\\r\\n|\\n)[ \t]*"
_LINE_END = r"(?:\r?\n|\\r|\\n|[\"'\s,}\]]|$)"
_BASE64_PEM = re.compile(
    rf"LS0tLS1CRUdJTi{_B64}*(?:{_BREAK}{_B64}+(?=={{0,2}}{_LINE_END}))*={{0,2}}"
)
_BREAKS = re.compile(r"\s|\\r|\\n")


def redact_text(text: str) -> str:
    """text with every PEM private key in it replaced by "[redacted]", also one in base64."""
    if "LS0tLS1CRUdJTi" in text:
        text = _BASE64_PEM.sub(_redact_base64_key, text)
    if "PRIVATE KEY-----" not in text:
        return text
    return _PRIVATE_KEY_PEM.sub(REDACTED, text)


def _redact_base64_key(match: re.Match[str]) -> str:
    encoded = match.group(0)
    joined = _BREAKS.sub("", encoded)
    try:
        decoded = base64.b64decode(joined + "=" * (-len(joined) % 4))
    except ValueError:
        return REDACTED  # cut off mid-way: it may be one
    return REDACTED if b"PRIVATE KEY" in decoded or len(decoded) < 40 else encoded


# A sensitive field in Envoy's text form of a message (DebugString, which its validation errors
# and so its NACKs carry): `password { inline_string: "..." }` and the like.
_SENSITIVE_TEXT = re.compile(
    r"\b(private_key|password|pkcs12|secret|secrets|keys|session_token|secret_access_key"
    r"|secret_data|backend_token|auth_password|downstream_auth_password)"
    r"(\s*\{\s*(?:inline_string|inline_bytes|environment_variable)\s*:\s*)\"(?:[^\"\\]|\\.)*\""
)


def redact_error_text(text: str) -> str:
    """An error Envoy sent (a NACK's error_detail) with key material redacted: its validation
    errors quote the offending message whole, inline private keys and passwords included."""
    text = redact_text(text)
    return _SENSITIVE_TEXT.sub(lambda m: f'{m.group(1)}{m.group(2)}"{REDACTED}"', text)


_TYPED_STRUCTS = frozenset({"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"})
# The names of Envoy's sensitive fields, for a Struct that cannot be read as its type.
_SENSITIVE_NAMES = frozenset(
    {
        "private_key",
        "password",
        "pkcs12",
        "secret",
        "secrets",
        "keys",
        "session_token",
        "secret_access_key",
        "secret_data",
        "backend_token",
        "auth_password",
        "auth_username",
        "downstream_auth_password",
        "downstream_auth_passwords",
        "downstream_auth_username",
        "credentials",
        "credentials_data_source",
        "web_identity_token_data_source",
        "users",
        "context_extensions",
    }
)


def redacted(message: Message) -> Message:
    """A copy of message with every sensitive field redacted; message itself is unchanged."""
    copy = type(message)()
    copy.CopyFrom(message)
    _redact(copy, sensitive=False)
    return copy


def redacted_any(body: any_pb2.Any) -> any_pb2.Any:
    """body (a packed resource) with its sensitive fields redacted.

    A type this process cannot resolve is returned as an Any that holds nothing: what cannot
    be inspected cannot be shown.
    """
    out = any_pb2.Any()
    message = _unpack(body)
    if message is None:
        out.type_url = body.type_url
    else:
        _redact(message, sensitive=False)
        out.Pack(message)
    return out


def _unpack(body: any_pb2.Any) -> Message | None:
    name = body.type_url.rpartition("/")[2]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    message: Message = message_factory.GetMessageClass(descriptor)()
    return message if body.Unpack(message) else None


@functools.cache
def _is_sensitive(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[sensitive_pb2.sensitive])


def _redact(message: Message, *, sensitive: bool) -> None:
    """Redact message in place; `sensitive`: an enclosing field is sensitive."""
    if message.DESCRIPTOR.full_name == _ANY:
        _redact_any(message, sensitive=sensitive)
        return
    if message.DESCRIPTOR.full_name in _TYPED_STRUCTS and not sensitive:
        _redact_typed_struct(message)
        return
    for field, value in message.ListFields():
        hide = sensitive or _is_sensitive(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _redact_message_field(message, field, value, hide)
        elif hide:
            _hide_scalar(message, field, value)


def _redact_any(message: Any, *, sensitive: bool) -> None:
    inner = _unpack(message)
    if inner is None:
        if sensitive:
            message.value = b""
        return
    _redact(inner, sensitive=sensitive)
    message.Pack(inner)


def _redact_typed_struct(message: Any) -> None:
    name = str(message.type_url).rpartition("/")[2]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        typed: Message = message_factory.GetMessageClass(descriptor)()
        json_format.ParseDict(json_format.MessageToDict(message.value), typed)
    except (KeyError, json_format.ParseError, TypeError, ValueError):
        _redact_struct_names(message.value, sensitive=False)
        return
    _redact(typed, sensitive=False)
    message.value.Clear()
    message.value.update(json_format.MessageToDict(typed, preserving_proto_field_name=True))


def _redact_struct_names(struct: struct_pb2.Struct, *, sensitive: bool) -> None:
    for key, value in struct.fields.items():
        _redact_struct_value(value, sensitive=sensitive or _snake(key) in _SENSITIVE_NAMES)


def _redact_struct_value(value: struct_pb2.Value, *, sensitive: bool) -> None:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        _redact_struct_names(value.struct_value, sensitive=sensitive)
    elif kind == "list_value":
        for item in value.list_value.values:
            _redact_struct_value(item, sensitive=sensitive)
    elif sensitive and kind == "string_value":
        value.string_value = REDACTED
    elif sensitive and kind in ("number_value", "bool_value"):
        value.null_value = struct_pb2.NULL_VALUE


def redacted_by_name(value: Any, *, sensitive: bool = False) -> Any:
    """A JSON value (an Envoy message as written, not parsed) with every value under a
    sensitive field's name ("private_key" or "privateKey", ...) redacted: for text that cannot
    be read as its message. The value itself is unchanged."""
    if isinstance(value, dict):
        return {
            k: redacted_by_name(v, sensitive=sensitive or _snake(str(k)) in _SENSITIVE_NAMES)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redacted_by_name(v, sensitive=sensitive) for v in value]
    if sensitive and isinstance(value, str):
        return REDACTED
    if sensitive and value is not None:
        return None
    return value


def _snake(name: str) -> str:
    """A JSON name ("privateKey") as its proto field name ("private_key")."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _redact_message_field(message: Message, field: FieldDescriptor, value: Any, hide: bool) -> None:
    entry: Any = field.message_type  # set for every TYPE_MESSAGE field
    if entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value.values():
                _redact(item, sensitive=hide)
        elif hide:
            for key in list(value):
                value[key] = _redacted_scalar(value_field, value[key])
        return
    if field.is_repeated:
        for item in value:
            _redact(item, sensitive=hide)
    else:
        _redact(value, sensitive=hide)


def _hide_scalar(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        message.ClearField(field.name)
    elif field.is_repeated:
        value[:] = [_redacted_scalar(field, v) for v in value]
    else:
        setattr(message, field.name, _redacted_scalar(field, value))


def _redacted_scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return REDACTED.encode()
    if field.type == FieldDescriptor.TYPE_STRING:
        return REDACTED
    return type(value)()
