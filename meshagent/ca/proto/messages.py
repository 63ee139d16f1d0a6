"""IstioCertificateRequest/Response built from descriptors at import time (mirrors ca.proto).

Building the FileDescriptorProto in code avoids generated files and protoc; the wire format is
the one Istio's agents and istiod use.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="meshagent/istio/v1/auth/ca.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[struct_pb2.DESCRIPTOR.name],
    )
    request = proto.message_type.add(name="IstioCertificateRequest")
    request.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    request.field.add(
        name="validity_duration", number=3, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL
    )
    request.field.add(
        name="metadata",
        number=4,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".google.protobuf.Struct",
    )
    response = proto.message_type.add(name="IstioCertificateResponse")
    response.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    service = proto.service.add(name="IstioCertificateService")
    service.method.add(
        name="CreateCertificate",
        input_type=f".{PACKAGE}.IstioCertificateRequest",
        output_type=f".{PACKAGE}.IstioCertificateResponse",
    )
    return proto


def _load() -> tuple[Any, Any]:
    pool = descriptor_pool.Default()
    try:
        file_desc = pool.FindFileByName("meshagent/istio/v1/auth/ca.proto")
    except KeyError:
        pool.Add(_file())
        file_desc = pool.FindFileByName("meshagent/istio/v1/auth/ca.proto")
    request = message_factory.GetMessageClass(
        file_desc.message_types_by_name["IstioCertificateRequest"]
    )
    response = message_factory.GetMessageClass(
        file_desc.message_types_by_name["IstioCertificateResponse"]
    )
    return request, response


# Message classes (protobuf Message subclasses made at runtime, hence typed as Any).
IstioCertificateRequest, IstioCertificateResponse = _load()
