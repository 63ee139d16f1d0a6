"""Shared helpers for the CA tests: a root + intermediate in Istio's cacerts layout, a fake
clock, chain checks with cryptography's verifier."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshagent.ca.keys import cert_to_pem, key_to_pem, load_certs_pem
from meshagent.model.identity import Identity


class FakeClock:
    """A settable time.time()."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ca_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    organization: str = "test-org",
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(issuer_key, hashes.SHA256())
    )


def self_signed_root(key: ec.EllipticCurvePrivateKey, organization: str) -> x509.Certificate:
    """A root CA certificate of key, valid now, with this organization (O=)."""
    return _ca_cert("root", key, None, key, dt.datetime.now(dt.UTC), organization)


def make_cacerts(directory: Path) -> tuple[x509.Certificate, x509.Certificate]:
    """A root and an intermediate it signs, written in Istio's cacerts layout; (root, inter)."""
    now = dt.datetime.now(dt.UTC)
    root_key, inter_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca_cert("test root", root_key, None, root_key, now)
    inter = _ca_cert("test intermediate", inter_key, root.subject, root_key, now)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-key.pem").write_text(key_to_pem(inter_key))
    (directory / "ca-cert.pem").write_text(cert_to_pem(inter))
    (directory / "root-cert.pem").write_text(cert_to_pem(root))
    (directory / "cert-chain.pem").write_text(cert_to_pem(inter) + cert_to_pem(root))
    return root, inter


def verify_chain(
    chain: list[str], roots_pem: str, at: float | None = None
) -> list[x509.Certificate]:
    """Verify chain (leaf first) against roots with cryptography's path builder, at time `at`
    (default now); the verified path."""
    certs = [c for pem in chain for c in load_certs_pem(pem)]
    builder = PolicyBuilder().store(Store(load_certs_pem(roots_pem)))
    if at is not None:
        builder = builder.time(dt.datetime.fromtimestamp(at, tz=dt.UTC))
    verifier = builder.build_client_verifier()
    verified = verifier.verify(certs[0], certs[1:])
    return list(verified.chain)


def forged_identity(trust_domain: str, namespace: str, service_account: str) -> Identity:
    """An Identity that skipped validation: what an older version could have put in a token
    or a certificate (the only way to build one now is around the constructor)."""
    identity = object.__new__(Identity)
    for name, value in zip(
        ("trust_domain", "namespace", "service_account"),
        (trust_domain, namespace, service_account),
        strict=True,
    ):
        object.__setattr__(identity, name, value)
    return identity
