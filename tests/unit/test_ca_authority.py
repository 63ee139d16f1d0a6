"""The signing core and CA state: chains, SANs, lifetimes, key types, self-signed persistence,
plug-in (cacerts) mode."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshagent.ca.authority import CertificateAuthority, identity_of
from meshagent.ca.errors import CsrRejected, IdentityMismatch, LifetimeRejected
from meshagent.ca.keys import generate_key, load_certs_pem, make_csr
from meshagent.ca.state import load_plugin, load_self_signed
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity
from tests.ca_helpers import FakeClock, make_cacerts, verify_chain

TD = "cluster.local"
WEB = Identity(TD, "shop", "web")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return load_self_signed(tmp_path / "ca", TD)


def test_issue_returns_leaf_first_root_last_and_verifies(ca: CertificateAuthority) -> None:
    chain = ca.issue(make_csr(generate_key(), WEB), WEB, 3600)
    assert len(chain) == 2
    path = verify_chain(chain, ca.roots_pem)
    assert path[-1] == ca.roots[0]
    assert load_certs_pem(chain[-1])[0] == ca.roots[0]


def test_leaf_carries_only_the_spiffe_uri_san(ca: CertificateAuthority) -> None:
    leaf = load_certs_pem(ca.issue(make_csr(generate_key(), WEB), WEB)[0])[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/web"
    ]
    assert identity_of(leaf) == WEB
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ttl_default_is_24h_and_requested_ttl_is_honoured(tmp_path: Path) -> None:
    clock = FakeClock(1_900_000_000.0)
    ca = load_self_signed(tmp_path, TD, clock=clock)
    default = load_certs_pem(ca.issue(make_csr(generate_key(), WEB), WEB)[0])[0]
    short = load_certs_pem(ca.issue(make_csr(generate_key(), WEB), WEB, 600)[0])[0]
    assert default.not_valid_after_utc.timestamp() == clock.now + 24 * 3600
    assert short.not_valid_after_utc.timestamp() == clock.now + 600


def test_ttl_above_the_maximum_is_refused_as_istio_refuses_it(tmp_path: Path) -> None:
    # Istio's CA returns TTL_ERROR (INVALID_ARGUMENT) rather than shortening the lifetime.
    ca = load_self_signed(tmp_path, TD, max_ttl=3600.0)
    csr = make_csr(generate_key(), WEB)
    with pytest.raises(LifetimeRejected, match=r"3601s .* greater than the maximum 3600s"):
        ca.issue(csr, WEB, 3601)
    with pytest.raises(LifetimeRejected):
        ca.issue(csr, WEB, 10**12)
    issued = ca.issue_leaf(csr, WEB, 3600)  # the maximum itself is fine
    leaf = load_certs_pem(issued.chain[0])[0]
    assert issued.not_after == leaf.not_valid_after_utc.timestamp()
    assert issued.serial == format(leaf.serial_number, "x")


def test_default_maximum_is_90_days(ca: CertificateAuthority) -> None:
    assert ca.max_ttl == 90 * 86400
    with pytest.raises(LifetimeRejected):
        ca.issue(make_csr(generate_key(), WEB), WEB, 90 * 86400 + 1)


@pytest.mark.parametrize(
    ("key_type", "kind"), [("ec-p256", ec.EllipticCurvePublicKey), ("rsa-2048", rsa.RSAPublicKey)]
)
def test_key_types(ca: CertificateAuthority, key_type: str, kind: type) -> None:
    chain = ca.issue(make_csr(generate_key(key_type), WEB), WEB)
    assert isinstance(load_certs_pem(chain[0])[0].public_key(), kind)
    verify_chain(chain, ca.roots_pem)


def test_csr_naming_another_identity_is_refused(ca: CertificateAuthority) -> None:
    other = Identity(TD, "shop", "admin")
    with pytest.raises(IdentityMismatch, match="admin"):
        ca.issue(make_csr(generate_key(), other), WEB)


def test_identity_comes_from_the_caller_when_the_csr_has_no_san(ca: CertificateAuthority) -> None:
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")]))
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    assert identity_of(load_certs_pem(ca.issue(pem, WEB)[0])[0]) == WEB


@pytest.mark.parametrize(
    "csr",
    [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_bad_csr_is_rejected(ca: CertificateAuthority, csr: str) -> None:
    with pytest.raises(CsrRejected):
        ca.issue(csr, WEB)


def test_other_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    foreign = Identity("evil.org", "shop", "web")
    with pytest.raises(IdentityMismatch, match="trust domain"):
        ca.issue(make_csr(generate_key(), foreign), foreign)


def test_self_signed_root_is_persisted_0600_and_reused(tmp_path: Path) -> None:
    first = load_self_signed(tmp_path / "ca", TD)
    second = load_self_signed(tmp_path / "ca", TD)
    assert first.roots[0] == second.roots[0]
    for name in ("root-key.pem", "root-cert.pem", "token-key.pem"):
        assert stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) == 0o600
    root = first.roots[0]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    years = (root.not_valid_after_utc - root.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)


def test_extra_roots_join_the_trust_bundle(tmp_path: Path) -> None:
    other_root, _ = make_cacerts(tmp_path / "other")
    load_self_signed(tmp_path / "ca", TD)
    (tmp_path / "ca" / "extra-roots.pem").write_text(
        (tmp_path / "other" / "root-cert.pem").read_text()
    )
    ca = load_self_signed(tmp_path / "ca", TD)
    assert len(ca.roots) == 2 and other_root in ca.roots
    assert len(load_certs_pem(ca.roots_pem)) == 2


def test_plugin_mode_chains_to_the_given_root(tmp_path: Path) -> None:
    root, inter = make_cacerts(tmp_path / "cacerts")
    ca = load_plugin(tmp_path / "cacerts", TD)
    chain = ca.issue(make_csr(generate_key(), WEB), WEB)
    certs = [load_certs_pem(p)[0] for p in chain]
    assert certs[1] == inter and certs[-1] == root
    assert certs[0].issuer == inter.subject
    path = verify_chain(chain, (tmp_path / "cacerts" / "root-cert.pem").read_text())
    assert path == [certs[0], inter, root]


def test_plugin_mode_reports_missing_and_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing plug-in CA files"):
        load_plugin(tmp_path, TD)
    make_cacerts(tmp_path / "a")
    make_cacerts(tmp_path / "b")
    (tmp_path / "a" / "ca-key.pem").write_text((tmp_path / "b" / "ca-key.pem").read_text())
    with pytest.raises(ConfigError, match="does not match its private key"):
        load_plugin(tmp_path / "a", TD)
    make_cacerts(tmp_path / "c")
    (tmp_path / "c" / "root-cert.pem").write_text((tmp_path / "b" / "root-cert.pem").read_text())
    (tmp_path / "c" / "cert-chain.pem").write_text((tmp_path / "c" / "ca-cert.pem").read_text())
    with pytest.raises(ConfigError, match="chain is broken"):
        load_plugin(tmp_path / "c", TD)
