"""TLS termination of a Sidecar ingress listener (ingress[].tls): SIMPLE or MUTUAL, with the
certificate, key and CA read by Envoy from files, in place of mesh mTLS on that port."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from meshagent.model.gateway import usable_cipher_suites
from meshagent.model.sidecar import IngressTls
from meshagent.xds.translate import protos

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}
# What the terminated side offers: HTTP/2 and HTTP/1.1, as Istio's sidecar ingress TLS.
ALPN = ("h2", "http/1.1")


def _file(path: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(filename=path)


def ingress_transport_socket(tls: IngressTls) -> base_pb2.TransportSocket:
    """The downstream TLS of an ingress listener with tls (mode SIMPLE or MUTUAL)."""
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    common.alpn_protocols.extend(ALPN)
    common.tls_certificates.add(
        certificate_chain=_file(tls.server_certificate), private_key=_file(tls.private_key)
    )
    params = common.tls_params
    if tls.min_protocol_version:
        params.tls_minimum_protocol_version = _VERSIONS[tls.min_protocol_version.upper()]
    if tls.max_protocol_version:
        params.tls_maximum_protocol_version = _VERSIONS[tls.max_protocol_version.upper()]
    params.cipher_suites.extend(usable_cipher_suites(tls.cipher_suites))
    if tls.mode == "MUTUAL":
        if tls.ca_certificates:
            common.validation_context.trusted_ca.CopyFrom(_file(tls.ca_certificates))
        context.require_client_certificate.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )
