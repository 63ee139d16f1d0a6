"""TLS of gateway servers: Envoy's DownstreamTlsContext from a server's ServerTls, and the
SDS secrets of the credentials they name.

SIMPLE presents the credential's certificate (SDS `kubernetes://<credentialName>`); MUTUAL
also requires a client certificate that the credential's CA bundle verifies (SDS
`kubernetes://<credentialName>-cacert`), OPTIONAL_MUTUAL verifies one when the client sends
it. ISTIO_MUTUAL uses the proxy's workload certificate (`default`) and the mesh roots
(`ROOTCA`); a server with workload_certificate (Consul's ingress TLS) presents that
certificate without asking for one. Certificates are only referenced by name: a credential
that changes sends new secrets and never drains a listener.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from meshagent.model import Credential
from meshagent.model.gateway import ISTIO_MUTUAL, MUTUAL, OPTIONAL_MUTUAL, ServerTls
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.secrets import sds_config
from meshagent.xds.translate.tls import _san_matcher

HTTP_ALPN = ("h2", "http/1.1")
_VERSIONS = {
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def _client_checks(tls: ServerTls) -> common_pb2.CertificateValidationContext:
    """What a client certificate must show beyond the CA's signature."""
    return common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[_san_matcher(s) for s in tls.subject_alt_names],
        verify_certificate_spki=list(tls.verify_certificate_spki),
        verify_certificate_hash=list(tls.verify_certificate_hash),
    )


def _validate_with(common: tls_pb2.CommonTlsContext, tls: ServerTls, ca_secret: str) -> None:
    combined = common.combined_validation_context
    combined.default_validation_context.CopyFrom(_client_checks(tls))
    combined.validation_context_sds_secret_config.CopyFrom(sds_config(ca_secret))


def _from_files(common: tls_pb2.CommonTlsContext, tls: ServerTls, validate: bool) -> None:
    """Istio's mounted-files form: paths on the gateway's host."""
    common.tls_certificates.append(
        common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(filename=tls.server_certificate),
            private_key=base_pb2.DataSource(filename=tls.private_key),
        )
    )
    if validate and tls.ca_certificates:
        context = _client_checks(tls)
        context.trusted_ca.filename = tls.ca_certificates
        if tls.ca_crl:
            context.crl.filename = tls.ca_crl
        common.validation_context.CopyFrom(context)


def _tls_params(tls: ServerTls) -> common_pb2.TlsParameters | None:
    """Protocol versions and cipher suites, for SIMPLE, MUTUAL and OPTIONAL_MUTUAL."""
    low, high = _VERSIONS.get(tls.min_protocol_version), _VERSIONS.get(tls.max_protocol_version)
    if low is None and high is None and not tls.cipher_suites:
        return None
    params = common_pb2.TlsParameters(cipher_suites=list(tls.cipher_suites))
    if low is not None:
        params.tls_minimum_protocol_version = low
    if high is not None:
        params.tls_maximum_protocol_version = high
    return params


def downstream_tls(tls: ServerTls, alpn: tuple[str, ...] = HTTP_ALPN) -> base_pb2.TransportSocket:
    """The transport socket of a server that terminates TLS (Istio's BuildListenerTLSContext)."""
    common = tls_pb2.CommonTlsContext(alpn_protocols=list(alpn))
    require = tls.mode in (MUTUAL, ISTIO_MUTUAL)
    validate = require or tls.mode == OPTIONAL_MUTUAL
    if tls.mode == ISTIO_MUTUAL or tls.workload_certificate:
        common.tls_certificate_sds_secret_configs.append(sds_config(names.DEFAULT_SECRET))
        if validate:
            _validate_with(common, tls, names.ROOTCA_SECRET)
    elif tls.credentials:
        bare = [n.removeprefix(names.CREDENTIAL_PREFIX) for n in tls.credentials]
        common.tls_certificate_sds_secret_configs.extend(
            sds_config(names.credential_secret_name(n)) for n in bare
        )
        if validate:  # the first credential's CA, as Istio
            _validate_with(common, tls, names.credential_ca_secret_name(bare[0]))
    else:
        _from_files(common, tls, validate)
    if tls.mode != ISTIO_MUTUAL:
        params = _tls_params(tls)
        if params is not None:
            common.tls_params.CopyFrom(params)
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=wrappers_pb2.BoolValue(value=require)
    )
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def credential_secret(name: str, credential: Credential, ca: bool) -> secret_pb2.Secret:
    """The SDS secret name: the credential's certificate and key, or (ca) its CA bundle
    (and CRL) as a validation context."""
    if ca:
        context = common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_string=credential.ca_cert_pem)
        )
        if credential.crl_pem:
            context.crl.inline_string = credential.crl_pem
        return secret_pb2.Secret(name=name, validation_context=context)
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=credential.cert_chain_pem),
            private_key=base_pb2.DataSource(inline_string=credential.private_key_pem),
        ),
    )
