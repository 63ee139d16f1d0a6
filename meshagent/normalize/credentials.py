"""Secrets (Kubernetes `v1 Secret`s, and credential directories read by the credentials
adapter) to model Credentials, validated.

One converter for both sources. The keys are Istio's (pilot/pkg/credentials/kube): a
certificate and key from `cert`/`key` (generic) or else `tls.crt`/`tls.key` (a
`kubernetes.io/tls` Secret); a CA bundle from `cacert` or else `ca.crt`, with the CRL of the
same naming (`crl`, `ca.crl`). A Secret that holds only a CA bundle is a CA-only credential
(Istio's separate `<name>-cacert` Secret). Values come from `data` (base64, as the API serves
them) or `stringData` (text, as the files adapter emits them).

Checks, each located at the key it is about: PEM that parses (chain, key, CA bundle, CRL), a key
that matches the first certificate of the chain, RSA of at least 2048 bits and ECDSA on P-256,
P-384 or P-521 (what Envoy loads); an expired or not yet valid certificate is a warning (Envoy
serves it; clients refuse it). Reasons never quote a value: a private key must not reach a log
or a debug page.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshagent.model.credentials import Credential
from meshagent.model.source import Diagnostic, Provenance, RawResource
from meshagent.normalize.schema.core import Issue, Issues

SECRET_KIND = "Secret"
# The credentials adapter's source name (adapters/credentials.py): its locations are
# directories, and an issue names the file of its key.
FILES_SOURCE = "credentials"
GENERIC_KEYS = ("cert", "key", "cacert", "crl")
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt", "ca.crl")
CREDENTIAL_KEYS = (*GENERIC_KEYS, *TLS_KEYS)
MIN_RSA_BITS = 2048
EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what Envoy loads (checked on 1.40)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


# Where Secrets come from. A Secret in mesh YAML files is not read as a credential: those
# files are saved to the state dir as last good, and keys belong in credential directories.
SECRET_SOURCES = ("kubernetes", FILES_SOURCE)


def is_secret(raw: RawResource | tuple[str, str, str, str]) -> bool:
    """True for a core v1 Secret of a credentials source (a raw resource, or its key)."""
    if isinstance(raw, RawResource):
        return raw.kind == SECRET_KIND and raw.source in SECRET_SOURCES and raw.api_version == "v1"
    return raw[1] == SECRET_KIND and raw[0] in SECRET_SOURCES


def secret_data(body: Mapping[str, Any], issues: Issues) -> dict[str, bytes]:
    """The Secret's values by key: `data` decoded from base64, then `stringData` over it."""
    out: dict[str, bytes] = {}
    data = body.get("data") or {}
    if not isinstance(data, Mapping):
        issues.error("data", "must be a map of keys to base64 values")
        data = {}
    for key, value in data.items():
        if not isinstance(value, str):
            issues.error(f"data.{key}", "must be a base64 string")
            continue
        try:
            out[str(key)] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            issues.error(f"data.{key}", "is not valid base64")
    text = body.get("stringData") or {}
    if not isinstance(text, Mapping):
        issues.error("stringData", "must be a map of keys to strings")
        text = {}
    for key, value in text.items():
        if isinstance(value, str):
            out[str(key)] = value.encode("utf-8")
        else:
            issues.error(f"stringData.{key}", "must be a string")
    return out


def convert_secret(
    raw: RawResource, *, default_namespace: str, now: datetime.datetime | None = None
) -> tuple[Credential | None, Issues]:
    """raw's Credential, or None with the issues that reject it. A Secret from the Kubernetes
    adapter with none of the credential keys is not a credential: (None, no issues)."""
    issues = Issues()
    data = secret_data(raw.body, issues)
    if issues.has_errors:
        return None, issues
    if raw.source != FILES_SOURCE and not any(k in data for k in CREDENTIAL_KEYS):
        return None, issues
    where = _FieldNames(raw)
    chain, key = _key_and_cert(data, where, issues)
    ca, crl = _ca_bundle(data, where, issues, required=not chain)
    if issues.has_errors:
        return None, issues
    moment = now or datetime.datetime.now(datetime.UTC)
    cert_pem = _check_chain(data, chain, where, issues, moment) if chain else ""
    key_pem = _check_key(data, key, chain, cert_pem, where, issues) if chain else ""
    ca_pem = _check_bundle(data, ca, where, issues) if ca else ""
    crl_pem = _check_crl(data, crl, where, issues) if crl else ""
    if issues.has_errors:
        return None, issues
    namespace = raw.namespace or default_namespace
    provenance = Provenance(raw.source, raw.provenance.location, raw.kind, namespace, raw.name)
    credential = Credential(namespace, raw.name, cert_pem, key_pem, ca_pem, crl_pem, provenance)
    return credential, issues


class _FieldNames:
    """How an issue names a key: `data.tls.crt` in a Secret, the file name in a directory."""

    def __init__(self, raw: RawResource) -> None:
        self.files = raw.source == FILES_SOURCE
        self.prefix = "stringData." if "stringData" in raw.body else "data."

    def __call__(self, key: str) -> str:
        return key if self.files else f"{self.prefix}{key}"


def _has_value(data: Mapping[str, bytes], *keys: str) -> bool:
    return all(data.get(k) for k in keys)


def _key_and_cert(data: Mapping[str, bytes], where: _FieldNames, issues: Issues) -> tuple[str, str]:
    """The keys of the certificate chain and private key ("", "" for a CA-only Secret)."""
    for cert, key in (GENERIC_KEYS[:2], TLS_KEYS[:2]):
        if _has_value(data, cert, key):
            return cert, key
    for cert, key in (GENERIC_KEYS[:2], TLS_KEYS[:2]):
        if cert in data and key in data:
            issues.error(where(cert), f"found {cert!r} and {key!r}, but they are empty")
            return "", ""
        if cert in data or key in data:
            half, other = (cert, key) if cert in data else (key, cert)
            issues.error(where(half), f"{half!r} without {other!r}: a certificate needs its key")
            return "", ""
    return "", ""


def _ca_bundle(
    data: Mapping[str, bytes], where: _FieldNames, issues: Issues, *, required: bool
) -> tuple[str, str]:
    """The keys of the CA bundle and its CRL ("" when absent)."""
    for ca, crl in ((GENERIC_KEYS[2], GENERIC_KEYS[3]), (TLS_KEYS[2], TLS_KEYS[3])):
        if data.get(ca):
            return ca, crl if data.get(crl) else ""
    for ca in (GENERIC_KEYS[2], TLS_KEYS[2]):
        if ca in data and required:  # beside a certificate, an empty one is no CA (as Istio)
            issues.error(where(ca), f"found {ca!r}, but it is empty")
            return "", ""
    if required and not issues.has_errors:
        found = ", ".join(sorted(data)[:5]) or "nothing"
        issues.error(
            "data" if not where.files else "",
            "no credential here: expected tls.crt and tls.key (or cert and key), and/or "
            f"ca.crt (or cacert); found {found}",
        )
    return "", ""


def _pem_blocks(value: bytes, label: str) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(value) if m.group(1) == label.encode()]


def _text(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _certificates(value: bytes) -> list[x509.Certificate] | None:
    blocks = _pem_blocks(value, "CERTIFICATE")
    if not blocks or _text(value) is None:
        return None
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError:
        return None


def _check_chain(
    data: Mapping[str, bytes],
    key: str,
    where: _FieldNames,
    issues: Issues,
    now: datetime.datetime,
) -> str:
    certs = _certificates(data[key])
    if certs is None:
        issues.error(where(key), "not a PEM certificate chain (-----BEGIN CERTIFICATE-----)")
        return ""
    leaf = certs[0]
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        issues.error(
            where(key), f"RSA key of {public.key_size} bits: Envoy needs at least {MIN_RSA_BITS}"
        )
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in EC_CURVES:
        issues.error(
            where(key), f"ECDSA on {public.curve.name}: Envoy serves P-256, P-384 or P-521 only"
        )
    if leaf.not_valid_after_utc < now:
        issues.warn(
            where(key),
            f"the certificate expired at {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: it is "
            "served, and clients will refuse it",
        )
    elif leaf.not_valid_before_utc > now:
        issues.warn(
            where(key),
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
    return data[key].decode("ascii")


def _check_key(
    data: Mapping[str, bytes],
    key: str,
    chain_key: str,
    chain_pem: str,
    where: _FieldNames,
    issues: Issues,
) -> str:
    value = data[key]
    if _text(value) is None or b"-----BEGIN" not in value:
        issues.error(where(key), "not a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
        return ""
    try:  # the exception's text is not shown: nothing of a key is ever quoted
        private = serialization.load_pem_private_key(value, password=None)
    except TypeError:
        issues.error(where(key), "the private key is encrypted; give it unencrypted")
        return ""
    except (ValueError, UnsupportedAlgorithm):
        issues.error(where(key), "not a readable PEM private key")
        return ""
    if not chain_pem:
        return ""
    leaf = x509.load_pem_x509_certificate(_pem_blocks(chain_pem.encode(), "CERTIFICATE")[0])
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        issues.error(
            where(key), f"does not match the certificate in {chain_key} (the first of its chain)"
        )
        return ""
    return value.decode("ascii")


def _check_bundle(data: Mapping[str, bytes], key: str, where: _FieldNames, issues: Issues) -> str:
    if _certificates(data[key]) is None:
        issues.error(where(key), "not a PEM CA bundle (-----BEGIN CERTIFICATE-----)")
        return ""
    return data[key].decode("ascii")


def _check_crl(data: Mapping[str, bytes], key: str, where: _FieldNames, issues: Issues) -> str:
    value = data[key]
    blocks = _pem_blocks(value, "X509 CRL")
    try:
        if not blocks or _text(value) is None:
            raise ValueError
        for block in blocks:
            x509.load_pem_x509_crl(block)
    except ValueError:
        issues.error(where(key), "not a PEM certificate revocation list (-----BEGIN X509 CRL-----)")
        return ""
    return value.decode("ascii")


def credential_diagnostic(raw: RawResource, issue: Issue) -> Diagnostic:
    """issue of Secret raw, located: a credential directory's file, else the Secret."""
    location = raw.provenance.location
    if raw.source == FILES_SOURCE and issue.path:
        location = f"{location.rstrip('/')}/{issue.path}"
    name = f"{raw.namespace}/{raw.name}" if raw.namespace else raw.name
    return Diagnostic(
        issue.severity, raw.source, location, raw.kind, name, issue.path, issue.reason
    )
