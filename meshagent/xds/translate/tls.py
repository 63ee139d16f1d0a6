"""Upstream TLS for outbound clusters, from a DestinationRule's tls settings.

DISABLE (and no setting at all) means plaintext. SIMPLE and MUTUAL originate TLS with the
files named in the rule, or with the credential its credentialName names (served over SDS;
where Istio honours credentialName is decided in policy.py), SNI (the rule's, else the host)
and the server verified: its chain (caCertificates, else the system's roots) and
subjectAltNames. ISTIO_MUTUAL is the mesh's own
mTLS, with certificates over SDS from the agent's CA; it is also the default ("auto mTLS") for
mesh-internal services once the proxy has certificates. Without certificates, such clusters
stay plaintext.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshagent.model import ClientTls, Endpoint, Identity, Service
from meshagent.model.identity import InvalidIdentity
from meshagent.xds import names
from meshagent.xds.translate import protos
from meshagent.xds.translate.policy import ClusterPlan
from meshagent.xds.translate.secrets import sds_config

SPIFFE_PREFIX = "spiffe://"
# The operating system's CA bundle (Debian, Ubuntu; Envoy reads and watches it), which
# verifies TLS origination without caCertificates. Elsewhere, name caCertificates.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
MESH_ALPN = ("istio",)


@dataclass(frozen=True, slots=True)
class MeshTls:
    """What mesh mTLS toward one service needs: the proxy's trust domain and the SPIFFE
    identities its endpoints may present (empty: any identity of the trust domain)."""

    trust_domain: str
    identities: tuple[str, ...] = ()


def mesh_tls_for(trust_domain: str, service: Service, endpoints: tuple[Endpoint, ...]) -> MeshTls:
    """The identities of service's endpoints (their service accounts, in the endpoint's
    namespace, else the service's), as Istio derives ISTIO_MUTUAL's SANs."""
    found = {
        _endpoint_san(
            trust_domain,
            e.provenance.namespace if e.provenance is not None else service.namespace,
            e.service_account,
        )
        for e in endpoints
        if e.service_account
    }
    return MeshTls(trust_domain, tuple(sorted(found)))


@functools.lru_cache(maxsize=4096)  # many endpoints share few identities; checking costs ~1 us
def _endpoint_san(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE URI an endpoint must present. The normalizer checks service accounts; for a
    name that is still not a valid identity (a namespace from a platform with other rules),
    the URI is kept as written: no CA of ours issues it, so the endpoint cannot be verified,
    and the service never falls back to "any identity of the trust domain"."""
    try:
        return Identity(trust_domain, namespace, service_account).spiffe_id
    except InvalidIdentity:
        return f"{SPIFFE_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"


def _mesh_san_matchers(mesh: MeshTls) -> list[common_pb2.SubjectAltNameMatcher]:
    uri = common_pb2.SubjectAltNameMatcher.URI
    if mesh.identities:
        return [
            common_pb2.SubjectAltNameMatcher(
                san_type=uri, matcher=string_pb2.StringMatcher(exact=i)
            )
            for i in mesh.identities
        ]
    # Endpoints without a service account: any workload of our trust domain will do.
    prefix = f"{SPIFFE_PREFIX}{mesh.trust_domain}/"
    return [
        common_pb2.SubjectAltNameMatcher(
            san_type=uri, matcher=string_pb2.StringMatcher(prefix=prefix)
        )
    ]


def istio_mutual_transport_socket(
    plan: ClusterPlan, mesh: MeshTls | None
) -> base_pb2.TransportSocket | None:
    """Mesh mTLS for plan's cluster (Istio's ISTIO_MUTUAL); None when the proxy has no
    certificates. Key, chain and roots are SDS references (`default`, `ROOTCA`) over ADS,
    so a rotation never changes the cluster; the peer must present an expected SPIFFE URI."""
    if mesh is None:
        return None
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds_config(names.DEFAULT_SECRET)],
        alpn_protocols=MESH_ALPN,
    )
    # A rule's own sni and subjectAltNames win, as in Istio (the egress-gateway pattern
    # sends the external host's name as SNI, which the gateway's server matches).
    rule = plan.policy.tls
    combined = common.combined_validation_context
    combined.default_validation_context.match_typed_subject_alt_names.extend(
        [_san_matcher(s) for s in rule.subject_alt_names]
        if rule is not None and rule.subject_alt_names
        else _mesh_san_matchers(mesh)
    )
    combined.validation_context_sds_secret_config.CopyFrom(sds_config(names.ROOTCA_SECRET))
    sni = (
        rule.sni
        if rule is not None and rule.sni
        else names.outbound_sni(plan.port.number, plan.subset, plan.service.host)
    )
    context = tls_pb2.UpstreamTlsContext(sni=sni, common_tls_context=common)
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def auto_mtls(plan: ClusterPlan) -> bool:
    """Whether plan's cluster uses mesh mTLS when the proxy has certificates: no TLS setting
    of its own, or ISTIO_MUTUAL; never for MESH_EXTERNAL services."""
    tls = plan.policy.tls
    if tls is not None:
        return tls.mode == "ISTIO_MUTUAL"
    return not plan.service.mesh_external


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
    """How a SIMPLE or MUTUAL server is verified: its chain against caCertificates, else
    against the operating system's roots (Istio's VERIFY_CERTIFICATE_AT_CLIENT, the default
    since Istio 1.20: no CA file never means "accept any certificate"), and its SANs.
    insecureSkipVerify turns both off. A credentialName's CA is the credential's business."""
    if tls.insecure_skip_verify or (tls.credential_name and not tls.ca_certificates):
        return None
    return common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(filename=tls.ca_certificates or SYSTEM_CA_FILE),
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


def _credential_context(tls: ClientTls) -> tls_pb2.CommonTlsContext:
    """TLS from a credentialName, over SDS by Istio's names: MUTUAL presents the credential's
    certificate (`kubernetes://<name>`); the server is checked against its CA bundle
    (`kubernetes://<name>-cacert`: a `<name>-cacert` credential, else the CA of `<name>`) and
    the rule's SANs, unless insecureSkipVerify. The secrets are served from the snapshot's
    credentials, so a rotation changes a secret, never the cluster."""
    context = tls_pb2.CommonTlsContext()
    name = tls.credential_name
    if tls.mode == "MUTUAL":
        context.tls_certificate_sds_secret_configs.append(
            sds_config(names.credential_secret_name(name))
        )
    if not tls.insecure_skip_verify:
        combined = context.combined_validation_context
        combined.default_validation_context.match_typed_subject_alt_names.extend(
            _san_matcher(s) for s in tls.subject_alt_names
        )
        combined.validation_context_sds_secret_config.CopyFrom(
            sds_config(names.credential_ca_secret_name(name))
        )
    return context


def _origination_socket(tls: ClientTls, plan: ClusterPlan) -> base_pb2.TransportSocket:
    # Without an explicit SNI, name the host: most TLS servers need SNI to pick a certificate.
    host = plan.service.host
    sni = tls.sni or ("" if host.startswith("*") else host)
    common = _credential_context(tls) if tls.credential_name else _common_context(tls)
    context = tls_pb2.UpstreamTlsContext(sni=sni, common_tls_context=common)
    return base_pb2.TransportSocket(
        name=protos.TLS_TRANSPORT_SOCKET, typed_config=protos.packed(context)
    )


def upstream_transport_socket(
    plan: ClusterPlan, mesh: MeshTls | None = None
) -> base_pb2.TransportSocket | None:
    """The transport socket for plan's cluster, or None for plaintext.

    mesh: set when the proxy has certificates and the cluster qualifies (`auto_mtls`)."""
    tls = plan.policy.tls
    if auto_mtls(plan):
        return istio_mutual_transport_socket(plan, mesh)
    if tls is None or tls.mode == "DISABLE":
        return None
    return _origination_socket(tls, plan)
