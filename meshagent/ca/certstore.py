"""Workload keys and certificates on disk: <dir>/<namespace>/<service-account>/{key.pem,
cert-chain.pem, root-cert.pem}, every file 0600, written atomically.

cert-chain.pem holds the whole chain as issued (leaf first, root last); the file's mtime is
when it was issued, which is what the renewal time is computed from after a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from meshagent.ca.authority import identity_of
from meshagent.ca.keys import PrivateKey, cert_to_pem, load_certs_pem, load_key_pem, write_private
from meshagent.model.identity import Identity

KEY, CHAIN, ROOTS = "key.pem", "cert-chain.pem", "root-cert.pem"


@dataclass(frozen=True, slots=True)
class StoredCert:
    """What is on disk for one identity, parsed."""

    key_pem: str = field(repr=False)  # never in a log line or a traceback
    chain_pem: list[str]
    roots_pem: str
    leaf: x509.Certificate
    issued_at: float


def identity_dir(base: Path, identity: Identity) -> Path:
    """Where identity's files live under base."""
    return base / identity.namespace / identity.service_account


def save(base: Path, identity: Identity, key_pem: str, chain: list[str], roots_pem: str) -> None:
    """Persist one identity's key, chain and trust bundle (0600; the chain last, so that a
    crash in between leaves a key that does not match the old chain and is simply reissued)."""
    where = identity_dir(base, identity)
    write_private(where / KEY, key_pem)
    write_private(where / ROOTS, roots_pem)
    write_private(where / CHAIN, "".join(chain))


def load(base: Path, identity: Identity) -> StoredCert | None:
    """The stored certificate of identity when it is readable, matches its key and names
    identity; None otherwise (the caller then issues a new one)."""
    where = identity_dir(base, identity)
    try:
        key_pem = (where / KEY).read_text(encoding="ascii")
        chain_text = (where / CHAIN).read_text(encoding="ascii")
        roots_pem = (where / ROOTS).read_text(encoding="ascii")
        issued_at = os.stat(where / CHAIN).st_mtime
        key = load_key_pem(key_pem)
        certs = load_certs_pem(chain_text)
    except (OSError, ValueError, UnicodeDecodeError, TypeError):
        return None
    leaf = certs[0]
    if not _matches(key, leaf) or identity_of(leaf) != identity:
        return None
    chain = [cert_to_pem(c) for c in certs]
    return StoredCert(key_pem, chain, roots_pem, leaf, issued_at)


def _matches(key: PrivateKey, leaf: x509.Certificate) -> bool:
    try:
        return key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return False


def list_identities(base: Path) -> list[Identity]:
    """Identities with a stored chain under base (trust domain from the certificate)."""
    found: list[Identity] = []
    if not base.is_dir():
        return found
    for chain in sorted(base.glob(f"*/*/{CHAIN}")):
        try:
            identity = identity_of(load_certs_pem(chain.read_bytes())[0])
        except (OSError, ValueError):
            continue
        if identity is not None:
            found.append(identity)
    return found
