"""SDS secrets from the proxy's workload certificates, and the SDS references to them.

Names (xds/names.py): `default` (a key and chain) and `ROOTCA` (the trust bundle) always exist
when the proxy has certificates; `default` is the first workload's identity (outbound traffic
uses it). When the proxy fronts workloads of several identities, each identity also gets a
secret named after its SPIFFE URI, which that workload's inbound listeners present.
Clusters and listeners only reference secrets by name over ADS, so a rotation changes the
secrets and nothing else: no listener drains, no connection drops.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from meshagent.model import Identity, LocalWorkload, ProxySpec, WorkloadCertificate
from meshagent.xds import names, typeurls
from meshagent.xds.resources import Resource
from meshagent.xds.translate import protos
from meshagent.xds.translate.context import Context


def _identities(proxy: ProxySpec) -> list[Identity]:
    """Distinct identities with a certificate, in workload order then certificate order."""
    have = {c.identity for c in proxy.certificates}
    ordered = [
        Identity(proxy.trust_domain, w.namespace, w.service_account) for w in proxy.workloads
    ]
    ordered += [c.identity for c in proxy.certificates]
    out: list[Identity] = []
    for identity in ordered:
        if identity in have and identity not in out:
            out.append(identity)
    return out


def certificate_secret_name(proxy: ProxySpec, workload: LocalWorkload | None) -> str:
    """The secret a workload's inbound listeners present (`default` for a single identity)."""
    identities = _identities(proxy)
    if workload is None or len(identities) <= 1:
        return names.DEFAULT_SECRET
    identity = Identity(proxy.trust_domain, workload.namespace, workload.service_account)
    return (
        names.identity_secret_name(identity.spiffe_id)
        if identity in identities
        else (names.DEFAULT_SECRET)
    )


def sds_config(name: str) -> secret_pb2.SdsSecretConfig:
    """A reference to secret name, fetched over the ADS stream."""
    out = secret_pb2.SdsSecretConfig(name=name)
    out.sds_config.CopyFrom(protos.SDS_CONFIG_SOURCE)
    return out


def _tls_secret(name: str, cert: WorkloadCertificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_string=cert.cert_chain_pem),
            private_key=base_pb2.DataSource(inline_string=cert.private_key_pem),
        ),
    )


def _roots(proxy: ProxySpec) -> str:
    # Several roots during a root rotation: trust the union of every certificate's bundle.
    seen: list[str] = []
    for cert in proxy.certificates:
        for block in cert.roots_pem.split("-----END CERTIFICATE-----"):
            pem = block.strip()
            if pem and pem not in seen:
                seen.append(pem)
    return "".join(f"{pem}\n-----END CERTIFICATE-----\n" for pem in seen)


def build_secrets(proxy: ProxySpec) -> list[secret_pb2.Secret]:
    """`default`, per-identity secrets when there are several identities, then `ROOTCA`."""
    identities = _identities(proxy)
    if not identities:
        return []
    latest: dict[Identity, WorkloadCertificate] = {}
    for cert in proxy.certificates:  # the newest certificate of an identity wins
        old = latest.get(cert.identity)
        if old is None or cert.not_after >= old.not_after:
            latest[cert.identity] = cert
    out = [_tls_secret(names.DEFAULT_SECRET, latest[identities[0]])]
    if len(identities) > 1:
        out += [_tls_secret(names.identity_secret_name(i.spiffe_id), latest[i]) for i in identities]
    validation = common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string=_roots(proxy))
    )
    out.append(secret_pb2.Secret(name=names.ROOTCA_SECRET, validation_context=validation))
    return out


class SecretsGenerator:
    """The SDS secrets of the proxy's certificates (none without certificates)."""

    name = "secrets"
    type_url = typeurls.SECRET

    def __init__(self) -> None:
        self._last: list[Resource] = []
        self._proxy: ProxySpec | None = None

    def generate(self, ctx: Context) -> list[Resource]:
        if ctx.proxy is not self._proxy:
            self._proxy = ctx.proxy
            self._last = [Resource.pack(s.name, s) for s in build_secrets(ctx.proxy)]
        return self._last
