"""The signing core: `issue(csr, identity, ttl) -> chain`, with no I/O and no gRPC.

The identity always comes from the caller's authenticated credential; the CSR contributes only
its public key. A CSR that names any other identity is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshagent.ca.durations import format_duration
from meshagent.ca.errors import CaError, CsrRejected, IdentityMismatch, LifetimeRejected
from meshagent.ca.keys import PrivateKey, cert_to_pem
from meshagent.model.identity import Identity, InvalidIdentity, check_name

DEFAULT_TTL_S = 24 * 3600.0
MAX_TTL_S = 90 * 24 * 3600.0
MIN_TTL_S = 1.0
MAX_CSR_BYTES = 16 * 1024
# Backdating absorbs small clock differences between hosts, as Istio's CA does.
BACKDATE_S = 60.0


@dataclass(frozen=True, slots=True)
class Issued:
    """One issued certificate: the PEM chain (leaf first, root last) and the leaf's serial
    (hex) and expiry (POSIX timestamp), so that callers need not parse the leaf again."""

    chain: list[str]
    serial: str
    not_after: float


class CertificateAuthority:
    """Signs workload certificates with `signer_key`/`signer_cert`.

    `chain` is the signer's own chain up to and including its root (just [root] when the signer
    is the root); `roots` is the trust bundle (one or more roots, several during a rotation).
    `max_ttl` is the longest lifetime `issue` grants (Istio's max workload certificate TTL):
    a longer request is refused, as Istio refuses it, rather than shortened.
    """

    def __init__(
        self,
        signer_key: PrivateKey,
        signer_cert: x509.Certificate,
        chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        trust_domain: str,
        *,
        clock: Callable[[], float] = time.time,
        max_ttl: float = MAX_TTL_S,
    ) -> None:
        if not chain or not roots:
            raise CaError("a CA needs its chain and at least one root")
        try:
            check_name("trust_domain", trust_domain)
        except InvalidIdentity as exc:
            raise CaError(str(exc)) from None
        self.signer_key, self.signer_cert = signer_key, signer_cert
        self.chain, self.roots = list(chain), list(roots)
        self.trust_domain, self.max_ttl, self._clock = trust_domain, max_ttl, clock
        self._chain_pem = [cert_to_pem(c) for c in self.chain]
        self.roots_pem = "".join(cert_to_pem(c) for c in self.roots)
        # Per-signer constants, computed once rather than on every issue (the hot path).
        self._issuer_name = signer_cert.subject
        self._signer_expiry = signer_cert.not_valid_after_utc.timestamp()
        self._authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signer_key.public_key()
        )
        # Builders are immutable: the parts that every leaf shares are set once and each
        # issue only adds its own key, serial, validity and SAN.
        self._leaf_base = (
            x509.CertificateBuilder()
            # Empty subject, critical SAN: the identity lives in the SAN only (RFC 5280 4.2.1.6).
            .subject_name(_EMPTY_NAME)
            .issuer_name(self._issuer_name)
            .add_extension(_NOT_CA, critical=True)
            .add_extension(_LEAF_USAGE, critical=True)
            .add_extension(_LEAF_EXTENDED_USAGE, critical=False)
            .add_extension(self._authority_key_id, critical=False)
        )

    def issue(self, csr_pem: str, identity: Identity, ttl: float = DEFAULT_TTL_S) -> list[str]:
        """A certificate for identity with the CSR's key: PEM chain, leaf first, root last."""
        return self.issue_leaf(csr_pem, identity, ttl).chain

    def issue_leaf(self, csr_pem: str, identity: Identity, ttl: float = DEFAULT_TTL_S) -> Issued:
        """issue, also handing back the leaf's serial and expiry.

        LifetimeRejected when ttl is above max_ttl; IdentityMismatch when identity is outside
        the trust domain or the CSR names another; CsrRejected for a bad CSR.
        """
        if ttl > self.max_ttl:
            raise LifetimeRejected(
                f"requested lifetime {_lifetime(ttl)} is greater than the maximum "
                f"{_lifetime(self.max_ttl)}"
            )
        if identity.trust_domain != self.trust_domain:
            raise IdentityMismatch(
                f"identity {identity.spiffe_id} is outside trust domain {self.trust_domain}"
            )
        csr, key = _parse_csr(csr_pem)
        check_csr_identity(csr, identity)
        leaf = self._sign_leaf(key, identity, ttl)
        return Issued(
            [cert_to_pem(leaf), *self._chain_pem],
            format(leaf.serial_number, "x"),
            leaf.not_valid_after_utc.timestamp(),
        )

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        names: Sequence[str],
        identity: Identity,
        ttl: float,
    ) -> list[str]:
        """A TLS server certificate (for the CA's own gRPC endpoint): DNS/IP SANs + identity."""
        alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        leaf = self._sign_leaf(public_key, identity, ttl, alt=alt)
        return [cert_to_pem(leaf), *self._chain_pem]

    def _sign_leaf(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        identity: Identity,
        ttl: float,
        *,
        alt: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        ttl = max(ttl, MIN_TTL_S)  # issue refuses above max_ttl; the server's own is fixed
        now = self._clock()
        not_after = min(now + ttl, self._signer_expiry)
        sans = alt or [x509.UniformResourceIdentifier(identity.spiffe_id)]
        builder = (
            self._leaf_base.public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - BACKDATE_S))
            .not_valid_after(_utc(not_after))
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        )
        return builder.sign(self.signer_key, _SHA256)


_EMPTY_NAME = x509.Name([])
_SHA256 = hashes.SHA256()
_NOT_CA = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_EXTENDED_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _lifetime(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole if whole == seconds else seconds}s ({format_duration(seconds)})"


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The CSR in csr_pem, signature checked; CsrRejected with the reason otherwise."""
    return _parse_csr(csr_pem)[0]


def _parse_csr(
    csr_pem: str,
) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey | rsa.RSAPublicKey]:
    """parse_csr, also handing back the key it already loaded (loading it costs per call)."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrRejected(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CsrRejected(f"CSR is not a PEM certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRejected(f"CSR cannot be read: {exc}") from None
    if not valid:
        raise CsrRejected("CSR signature does not verify")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CsrRejected(f"CSR key curve {key.curve.name} is not accepted (P-256, P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CsrRejected(f"CSR RSA key of {key.key_size} bits is too small (2048 or more)")
    else:
        raise CsrRejected("CSR key must be ECDSA or RSA")
    return csr, key


def check_csr_identity(csr: x509.CertificateSigningRequest, identity: Identity) -> None:
    """Refuse a CSR whose SANs name anything but identity (an empty SAN list is fine)."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise CsrRejected(f"CSR extensions cannot be read: {exc}") from None
    for name in ext.value:
        if not isinstance(name, x509.UniformResourceIdentifier):
            raise IdentityMismatch(f"CSR asks for a SAN other than the caller's identity: {name}")
        if name.value != identity.spiffe_id:
            raise IdentityMismatch(
                f"CSR asks for {name.value} but the caller is {identity.spiffe_id}"
            )


def identity_of(cert: x509.Certificate) -> Identity | None:
    """The SPIFFE identity in a certificate's URI SAN, or None."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return None
    for uri in ext.value.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            return Identity.parse(uri)
        except ValueError:
            continue
    return None


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether issuer's key signed cert (and the names match)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
