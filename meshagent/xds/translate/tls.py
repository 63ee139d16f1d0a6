"""Upstream TLS for outbound clusters, from a DestinationRule's tls settings.

DISABLE (and no setting at all) means plaintext. SIMPLE and MUTUAL originate TLS with the
files named in the rule. ISTIO_MUTUAL is the mesh's own mTLS: its certificates come over SDS
from the agent's CA, which is the security work's to add, in `istio_mutual_transport_socket`
(the one hook for it); until then such clusters stay plaintext.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshagent.model import ClientTls
from meshagent.xds.translate import protos
from meshagent.xds.translate.policy import ClusterPlan

SPIFFE_PREFIX = "spiffe://"


def istio_mutual_transport_socket(plan: ClusterPlan) -> base_pb2.TransportSocket | None:
    """The mesh-mTLS transport socket for plan's cluster; None until SDS secrets exist.

    Hook for the security work: return a TLS socket whose certificate and validation context
    are SDS references (`default`, `ROOTCA`) served over ADS, with the peer's SPIFFE identity
    as the expected SAN.
    """
    del plan
    return None


def _san_matcher(san: str) -> common_pb2.SubjectAltNameMatcher:
    # A SPIFFE identity lives in a URI SAN; anything else is taken as a DNS name.
    kind = (
        common_pb2.SubjectAltNameMatcher.URI
        if san.startswith(SPIFFE_PREFIX)
        else common_pb2.SubjectAltNameMatcher.DNS
    )
    return common_pb2.SubjectAltNameMatcher(
        san_type=kind, matcher=string_pb2.StringMatcher(exact=san)
    )


def _validation_context(tls: ClientTls) -> common_pb2.CertificateValidationContext | None:
    # Envoy refuses SAN checks without a trusted CA, so SANs only count with a CA file.
    if tls.insecure_skip_verify or not tls.ca_certificates:
        return None
    return common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(filename=tls.ca_certificates),
        match_typed_subject_alt_names=[_san_matcher(s) for s in tls.subject_alt_names],
    )


def _common_context(tls: ClientTls) -> tls_pb2.CommonTlsContext:
    context = tls_pb2.CommonTlsContext()
    if tls.mode == "MUTUAL" and tls.client_certificate:
        context.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
                private_key=base_pb2.DataSource(filename=tls.private_key),
            )
        )
    validation = _validation_context(tls)
    if validation is not None:
        context.validation_context.CopyFrom(validation)
    return context


def _origination_socket(tls: ClientTls, plan: ClusterPlan) -> base_pb2.TransportSocket:
    # Without an explicit SNI, name the host: most TLS servers need SNI to pick a certificate.
    host = plan.service.host
    sni = tls.sni or ("" if host.startswith("*") else host)
    context = tls_pb2.UpstreamTlsContext(sni=sni, common_tls_context=_common_context(tls))
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def upstream_transport_socket(plan: ClusterPlan) -> base_pb2.TransportSocket | None:
    """The transport socket for plan's cluster, or None for plaintext."""
    tls = plan.policy.tls
    if tls is None or tls.mode == "DISABLE":
        return None
    if tls.mode == "ISTIO_MUTUAL":
        return istio_mutual_transport_socket(plan)
    return _origination_socket(tls, plan)
