"""Test credentials: a CA, server certificates signed by it, and Secrets / directories of them."""

from __future__ import annotations

import base64
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshagent.model.source import Provenance, RawResource

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Pem:
    """A certificate (chain) and its key as PEM text, and the issuing CA's certificate."""

    cert: str
    key: str
    ca: str
    serial: int


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key(kind: str) -> Any:
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "p224":
        return ec.generate_private_key(ec.SECP224R1())
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_CERT = (
    x509.CertificateBuilder()
    .subject_name(_name("test credentials CA"))
    .issuer_name(_name("test credentials CA"))
    .public_key(_CA_KEY.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(NOW - datetime.timedelta(days=1))
    .not_valid_after(NOW + datetime.timedelta(days=30))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(_CA_KEY, hashes.SHA256())
)
CA_PEM = _CA_CERT.public_bytes(serialization.Encoding.PEM).decode()


def server_cert(
    host: str = "gw.example.com", *, days: float = 10, key_kind: str = "ec", expired: bool = False
) -> Pem:
    """A certificate for host (DNS SAN), signed by the test CA."""
    key = _key(key_kind)
    start = NOW - datetime.timedelta(days=20 if expired else 1)
    end = NOW - datetime.timedelta(days=1) if expired else NOW + datetime.timedelta(days=days)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(_CA_CERT.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(_CA_KEY, hashes.SHA256())
    )
    chain = cert.public_bytes(serialization.Encoding.PEM).decode()
    return Pem(chain, _pem_key(key), CA_PEM, serial)


def crl_pem() -> str:
    """An empty CRL of the test CA."""
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_CA_CERT.subject)
        .last_update(NOW - datetime.timedelta(days=1))
        .next_update(NOW + datetime.timedelta(days=1))
        .sign(_CA_KEY, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def secret_body(
    name: str, namespace: str = "istio-system", type_: str = "kubernetes.io/tls", **values: str
) -> dict[str, Any]:
    """A Kubernetes Secret as the API serves it: values base64 under `data` (keys with dots
    are given with underscores: tls_crt -> tls.crt)."""
    data = {k.replace("_", "."): base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": type_,
        "data": data,
    }


def kube_secret(name: str, namespace: str = "istio-system", **values: str) -> RawResource:
    """A Secret from the Kubernetes adapter."""
    body = secret_body(name, namespace, **values)
    prov = Provenance("kubernetes", "resourceVersion 7", "Secret", namespace, name)
    return RawResource("kubernetes", "Secret", "v1", namespace, name, body, prov)


def write_credential(root: Path, name: str, files: dict[str, str]) -> Path:
    """<root>/<name>/<file> for each file (atomically: temporary file, then rename)."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        tmp = directory / f".{file}.tmp"
        tmp.write_text(text)
        os.replace(tmp, directory / file)
    return directory


def swap_kube_volume(directory: Path, files: dict[str, str], generation: int) -> None:
    """A Kubernetes Secret volume's update: a new `..<timestamp>` directory with the files,
    then `..data` swapped to it by an atomic rename; the visible names are symlinks through
    `..data` (created once)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"..2026_12_06_{generation:06d}"
    target.mkdir()
    for file, text in files.items():
        (target / file).write_text(text)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, directory / "..data")
    for file in files:
        link = directory / file
        if not link.is_symlink():
            link.symlink_to(f"..data/{file}")
