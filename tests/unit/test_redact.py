"""Key material is "[redacted]" wherever a resource or a log line shows it."""

from __future__ import annotations

import base64
import io
import json

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from meshagent.agent.logs import configure_logging
from meshagent.agent.opspages import resources_json
from meshagent.model.identity import Identity, WorkloadCertificate
from meshagent.xds.cache import SnapshotCache
from meshagent.xds.csds import client_status
from meshagent.xds.redact import REDACTED, redacted, redacted_any
from meshagent.xds.resources import Resource, ResourceSet
from meshagent.xds.typeurls import LISTENER, SECRET

KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "-----END PRIVATE KEY-----\n"
)
KEY_B64 = base64.b64encode(KEY.encode()).decode()


def tls_secret() -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name="default",
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string="CHAIN"),
            private_key=base_pb2.DataSource(inline_string=KEY),
            password=base_pb2.DataSource(inline_bytes=b"hunter2"),
        ),
    )


def listener_with_inline_key() -> listener_pb2.Listener:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(tls_certificates=[tls_secret().tls_certificate])
    )
    listener = listener_pb2.Listener(name="in")
    chain = listener.filter_chains.add()
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(context)
    return listener


def resources() -> ResourceSet:
    return ResourceSet.build(
        {
            SECRET: [Resource.pack("default", tls_secret())],
            LISTENER: [Resource.pack("in", listener_with_inline_key())],
        }
    )


def test_sensitive_fields_are_redacted_and_the_original_is_untouched() -> None:
    original = tls_secret()
    shown = redacted(original)
    assert isinstance(shown, secret_pb2.Secret)
    assert shown.tls_certificate.private_key.inline_string == REDACTED
    assert shown.tls_certificate.password.inline_bytes == REDACTED.encode()
    assert shown.tls_certificate.certificate_chain.inline_string == "CHAIN"  # not secret
    assert original.tls_certificate.private_key.inline_string == KEY


def test_generic_secrets_and_session_ticket_keys_are_redacted() -> None:
    generic = secret_pb2.Secret(
        name="g", generic_secret=secret_pb2.GenericSecret(secret={"inline_bytes": b"s3"})
    )
    tickets = secret_pb2.Secret(
        name="t", session_ticket_keys=common_pb2.TlsSessionTicketKeys(keys=[{"inline_bytes": b"k"}])
    )
    assert b"s3" not in redacted(generic).SerializeToString()
    assert redacted(tickets).session_ticket_keys.keys[0].inline_bytes == REDACTED.encode()


def test_a_key_inside_an_any_is_found() -> None:
    body = any_pb2.Any()
    body.Pack(listener_with_inline_key())
    assert KEY.encode() in body.SerializeToString()
    assert KEY.encode() not in redacted_any(body).SerializeToString()


def test_debug_resources_json_shows_no_key() -> None:
    text = json.dumps(resources_json(resources()))
    assert "PRIVATE KEY" not in text and KEY_B64 not in text and "hunter2" not in text
    assert REDACTED in text and "CHAIN" in text


def test_csds_shows_no_key() -> None:
    cache = SnapshotCache()
    cache.set("vm-1", resources())
    reply = client_status(cache, csds_pb2.ClientStatusRequest()).SerializeToString()
    assert KEY.encode() not in reply and b"hunter2" not in reply
    assert REDACTED.encode() in reply


def test_no_log_line_carries_a_private_key() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", out)
    log = structlog.get_logger("test")
    cert = WorkloadCertificate(Identity("td", "ns", "sa"), "CHAIN", KEY, "ROOTS", 0.0)
    log.info("as_value", key=KEY, nested={"k": [KEY.encode()]}, cert=cert)
    log.info("as_object", resource=Resource.pack("default", tls_secret()), obj=object())
    try:
        raise ValueError(f"cannot load {KEY}")
    except ValueError:
        log.exception("in_traceback")
    text = out.getvalue()
    assert "PRIVATE KEY" not in text and "MIGHAgEAMBMG" not in text, text
    assert text.count(REDACTED) >= 3
    configure_logging("info", "json")


def _typed_struct_listener(type_name: str, value: dict[str, object]) -> listener_pb2.Listener:
    # what an EnvoyFilter may write: a transport socket's typed_config as a TypedStruct
    from google.protobuf import struct_pb2
    from udpa.type.v1 import typed_struct_pb2

    struct = struct_pb2.Struct()
    struct.update(value)
    typed = typed_struct_pb2.TypedStruct(type_url=f"type.googleapis.com/{type_name}", value=struct)
    listener = listener_pb2.Listener(name="in")
    chain = listener.filter_chains.add()
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(typed)
    return listener


def test_a_key_inside_a_typed_struct_is_found() -> None:
    # Envoy's config dump reads a TypedStruct as its type to redact it; the agent's showed
    # the Struct as written, inline private key and password included
    context = {
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"inline_string": "CHAIN"},
                    "private_key": {"inline_string": KEY},
                    "password": {"inline_bytes": "aHVudGVyMg=="},
                }
            ]
        }
    }
    listener = _typed_struct_listener(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", context
    )
    text = json.dumps(
        resources_json(ResourceSet.build({LISTENER: [Resource.pack("in", listener)]}))
    )
    assert "BEGIN PRIVATE KEY" not in text and "aHVudGVyMg" not in text and "CHAIN" in text
    assert text.count(REDACTED) == 1 and "W3JlZGFjdGVkXQ==" in text  # bytes: base64 of it


def test_a_typed_struct_not_of_its_type_is_redacted_by_field_name() -> None:
    context = {
        "commonTlsContext": {"tlsCertificates": [{"privateKey": {"inlineString": "SECRET-1"}}]},
        "not_a_field": {"password": "SECRET-2", "n": 1},
    }
    listener = _typed_struct_listener(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", context
    )
    text = json.dumps(
        resources_json(ResourceSet.build({LISTENER: [Resource.pack("in", listener)]}))
    )
    assert "SECRET-" not in text and text.count(REDACTED) == 2 and '"n": 1' in text
    assert listener.filter_chains[0].transport_socket.typed_config.value  # the input unchanged
