"""CA state on disk: the self-signed root (created once, reused), plug-in certs, token key.

Self-signed layout in the CA directory: root-cert.pem, root-key.pem (0600), token-key.pem
(0600, signs bootstrap tokens) and, optionally, extra-roots.pem (more roots for the trust
bundle while a root is rotated). Plug-in layout: Istio's cacerts (ca-cert.pem, ca-key.pem,
root-cert.pem, cert-chain.pem).
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshagent.ca.authority import MAX_TTL_S, CertificateAuthority, signed_by
from meshagent.ca.keys import (
    PrivateKey,
    cert_to_pem,
    generate_key,
    key_to_pem,
    load_certs_pem,
    load_key_pem,
    write_private,
)
from meshagent.errors import ConfigError
from meshagent.model.identity import config_name

ROOT_TTL_S = 10 * 365 * 86400.0
ROOT_CERT, ROOT_KEY, TOKEN_KEY, EXTRA_ROOTS = (
    "root-cert.pem",
    "root-key.pem",
    "token-key.pem",
    "extra-roots.pem",
)
PLUGIN_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


def init_self_signed(
    ca_dir: Path, trust_domain: str, *, clock: Callable[[], float] = time.time
) -> bool:
    """Create the root key and certificate in ca_dir unless they exist; True when created.

    The root's organization is the trust domain; an invalid one is refused before anything
    is written.
    """
    config_name("trust_domain", trust_domain, location=str(ca_dir))
    cert_path, key_path = ca_dir / ROOT_CERT, ca_dir / ROOT_KEY
    if cert_path.exists() and key_path.exists():
        return False
    if cert_path.exists() or key_path.exists():
        raise ConfigError("has only one of root-cert.pem and root-key.pem", location=str(ca_dir))
    key = generate_key("ec-p256")
    write_private(key_path, key_to_pem(key))
    write_private(cert_path, cert_to_pem(_self_signed_root(key, trust_domain, clock())))
    token_key(ca_dir)
    return True


def _self_signed_root(key: PrivateKey, trust_domain: str, now: float) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, "meshagent root CA"),
        ]
    )
    start = dt.datetime.fromtimestamp(now - 3600, tz=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(seconds=ROOT_TTL_S))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def load_self_signed(
    ca_dir: Path,
    trust_domain: str,
    *,
    clock: Callable[[], float] = time.time,
    create: bool = True,
    max_ttl: float = MAX_TTL_S,
) -> CertificateAuthority:
    """The self-signed CA in ca_dir, creating its root on first use when `create`."""
    if create:
        init_self_signed(ca_dir, trust_domain, clock=clock)
    key = _read_key(ca_dir / ROOT_KEY)
    root = _read_certs(ca_dir / ROOT_CERT)[0]
    _check_pair(key, root, ca_dir / ROOT_CERT)
    roots = [root, *_extra_roots(ca_dir)]
    return CertificateAuthority(
        key, root, [root], roots, trust_domain, clock=clock, max_ttl=max_ttl
    )


def load_plugin(
    plugin_dir: Path,
    trust_domain: str,
    *,
    clock: Callable[[], float] = time.time,
    max_ttl: float = MAX_TTL_S,
) -> CertificateAuthority:
    """A CA signing with the intermediate in Istio's cacerts layout, chaining to its root."""
    missing = [name for name in PLUGIN_FILES if not (plugin_dir / name).is_file()]
    if missing:
        raise ConfigError(
            f"missing plug-in CA files: {', '.join(missing)}", location=str(plugin_dir)
        )
    key = _read_key(plugin_dir / "ca-key.pem")
    signer = _read_certs(plugin_dir / "ca-cert.pem")[0]
    _check_pair(key, signer, plugin_dir / "ca-cert.pem")
    roots = _read_certs(plugin_dir / "root-cert.pem")
    chain = _read_certs(plugin_dir / "cert-chain.pem")
    if chain[0].fingerprint(hashes.SHA256()) != signer.fingerprint(hashes.SHA256()):
        chain.insert(0, signer)  # some layouts list only the certificates above ca-cert
    if not any(
        c.fingerprint(hashes.SHA256()) == roots[0].fingerprint(hashes.SHA256()) for c in chain
    ):
        chain.append(roots[0])
    for child, parent in itertools.pairwise(chain):
        if not signed_by(child, parent):
            raise ConfigError(
                f"chain is broken: {child.subject.rfc4514_string()} is not signed by "
                f"{parent.subject.rfc4514_string()}",
                location=str(plugin_dir / "cert-chain.pem"),
            )
    return CertificateAuthority(
        key, signer, chain, roots, trust_domain, clock=clock, max_ttl=max_ttl
    )


def token_key(ca_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The ES256 key that signs bootstrap tokens (created on first use, 0600)."""
    path = ca_dir / TOKEN_KEY
    if not path.exists():
        write_private(path, key_to_pem(generate_key("ec-p256")))
    key = _read_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("token key must be an EC P-256 key", location=str(path))
    return key


def _extra_roots(ca_dir: Path) -> list[x509.Certificate]:
    path = ca_dir / EXTRA_ROOTS
    return _read_certs(path) if path.exists() else []


def _read_key(path: Path) -> PrivateKey:
    try:
        return load_key_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read key: {exc.strerror or exc}", location=str(path)) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a usable private key: {exc}", location=str(path)) from exc


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return load_certs_pem(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", location=str(path)) from exc
    except ValueError as exc:
        raise ConfigError(f"not PEM certificates: {exc}", location=str(path)) from exc


def _check_pair(key: PrivateKey, cert: x509.Certificate, where: Path) -> None:
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError("certificate does not match its private key", location=str(where))
