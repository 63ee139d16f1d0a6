"""Private keys, CSRs and PEM files: key generation, serialization, 0600 atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshagent.model.identity import Identity

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KEY_TYPES = ("ec-p256", "rsa-2048")


def generate_key(key_type: str = "ec-p256") -> PrivateKey:
    """A new private key: ECDSA P-256 (default) or RSA 2048."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (expected one of: {', '.join(KEY_TYPES)})")


def key_to_pem(key: PrivateKey) -> str:
    """PKCS#8 PEM, unencrypted (the file's permissions protect it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_key_pem(data: str | bytes) -> PrivateKey:
    """The EC or RSA private key in PEM data; ValueError for anything else."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    key = serialization.load_pem_private_key(raw, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("only EC and RSA private keys are supported")
    return key


def cert_to_pem(cert: x509.Certificate) -> str:
    """One certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_certs_pem(data: str | bytes) -> list[x509.Certificate]:
    """Every certificate in PEM data, in order; ValueError when there is none."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    certs = x509.load_pem_x509_certificates(raw)
    if not certs:
        raise ValueError("no certificate found")
    return certs


def make_csr(key: PrivateKey, identity: Identity) -> str:
    """A CSR for identity (URI SAN only, as Istio's agents send), PEM text."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain)])
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def write_private(path: Path, text: str) -> None:
    """Write text to path atomically with mode 0600 (the file never exists with wider rights)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    """Remove a temporary file, ignoring that it may already be gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
