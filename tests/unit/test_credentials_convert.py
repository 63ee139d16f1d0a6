"""Secrets to Credentials: Istio's keys, each check located at its key, last good in the
normalizer, no key material in any reason."""

from __future__ import annotations

import dataclasses

from meshagent.model.source import Provenance, RawResource, SourceEvent
from meshagent.normalize import Normalizer
from meshagent.normalize.credentials import convert_secret, credential_diagnostic
from tests.credential_helpers import CA_PEM, crl_pem, kube_secret, secret_body, server_cert


def _errors(raw: RawResource) -> list[tuple[str, str, str]]:
    credential, issues = convert_secret(raw, default_namespace="default")
    found = [credential_diagnostic(raw, i) for i in issues if i.severity == "error"]
    assert (credential is None) == bool(found)
    return [(d.location, d.field, d.reason) for d in found]


def _files_secret(name: str, **files: str) -> RawResource:
    body = secret_body(name, "gw")
    body = {**body, "data": {}, "stringData": {k.replace("_", "."): v for k, v in files.items()}}
    prov = Provenance("credentials", f"/etc/creds/{name}", "Secret", "gw", name)
    return RawResource("credentials", "Secret", "v1", "gw", name, body, prov)


def test_a_tls_secret_is_a_credential_with_its_ca_and_crl() -> None:
    pem = server_cert()
    raw = kube_secret("web", tls_crt=pem.cert, tls_key=pem.key, ca_crt=CA_PEM, ca_crl=crl_pem())
    credential, issues = convert_secret(raw, default_namespace="default")
    assert not issues and credential is not None
    assert credential.key == "istio-system/web"
    assert credential.cert_chain_pem == pem.cert and credential.private_key_pem == pem.key
    assert credential.ca_cert_pem == CA_PEM and "X509 CRL" in credential.crl_pem


def test_generic_keys_win_over_tls_keys_as_in_istio() -> None:
    generic, tls = server_cert("a.example"), server_cert("b.example")
    raw = kube_secret(
        "web", cert=generic.cert, key=generic.key, tls_crt=tls.cert, tls_key=tls.key, cacert=CA_PEM
    )
    credential, _ = convert_secret(raw, default_namespace="default")
    assert credential is not None and credential.cert_chain_pem == generic.cert
    assert credential.ca_cert_pem == CA_PEM


def test_a_ca_only_secret_is_a_ca_credential() -> None:
    credential, issues = convert_secret(
        kube_secret("web-cacert", cacert=CA_PEM), default_namespace="default"
    )
    assert not issues and credential is not None
    assert credential.ca_cert_pem == CA_PEM and not credential.private_key_pem


def test_an_empty_ca_beside_a_certificate_is_no_ca_as_cert_manager_writes_it() -> None:
    pem = server_cert()
    raw = kube_secret("web", tls_crt=pem.cert, tls_key=pem.key, ca_crt="")
    credential, issues = convert_secret(raw, default_namespace="d")
    assert not issues and credential is not None and credential.ca_cert_pem == ""
    assert _errors(kube_secret("web-cacert", ca_crt=""))[0][1] == "data.ca.crt"


def test_a_kubernetes_secret_without_credential_keys_is_ignored_quietly() -> None:
    assert convert_secret(kube_secret("db", password="x"), default_namespace="d") == (None, [])


def test_each_error_is_located_at_its_key() -> None:
    pem, other = server_cert(), server_cert()
    cases = {
        "bad cert": (dict(tls_crt="junk", tls_key=pem.key), "data.tls.crt", "PEM certificate"),
        "bad key": (dict(tls_crt=pem.cert, tls_key="junk"), "data.tls.key", "PEM private key"),
        "mismatch": (dict(tls_crt=pem.cert, tls_key=other.key), "data.tls.key", "does not match"),
        "half": (dict(tls_crt=pem.cert), "data.tls.crt", "without 'tls.key'"),
        "empty": (dict(tls_crt="", tls_key=""), "data.tls.crt", "empty"),
        "bad ca": (dict(tls_crt=pem.cert, tls_key=pem.key, ca_crt="junk"), "data.ca.crt", "CA"),
        "bad crl": (
            dict(tls_crt=pem.cert, tls_key=pem.key, ca_crt=CA_PEM, ca_crl="x"),
            "data.ca.crl",
            "revocation list",
        ),
    }
    for case, (values, field, words) in cases.items():
        found = _errors(kube_secret("web", **values))
        assert [(loc, f) for loc, f, _ in found] == [("resourceVersion 7", field)], case
        assert words in found[0][2], case


def test_a_small_rsa_key_and_base64_errors_are_errors() -> None:
    weak = server_cert(key_kind="rsa1024")
    assert "2048" in _errors(kube_secret("web", tls_crt=weak.cert, tls_key=weak.key))[0][2]
    p224 = server_cert(key_kind="p224")
    assert "P-256" in _errors(kube_secret("web", tls_crt=p224.cert, tls_key=p224.key))[0][2]
    raw = kube_secret("web")
    raw = dataclasses.replace(raw, body={**raw.body, "data": {"tls.crt": "%%%"}})
    assert _errors(raw)[0][1] == "data.tls.crt"


def test_an_expired_certificate_is_a_warning() -> None:
    pem = server_cert(expired=True)
    credential, issues = convert_secret(
        kube_secret("web", tls_crt=pem.cert, tls_key=pem.key), default_namespace="d"
    )
    assert credential is not None
    assert [(i.severity, i.path) for i in issues] == [("warning", "data.tls.crt")]
    assert "expired" in issues[0].reason


def test_a_credential_directory_error_names_the_file() -> None:
    pem, other = server_cert(), server_cert()
    found = _errors(_files_secret("web", tls_crt=pem.cert, tls_key=other.key))
    assert found[0][:2] == ("/etc/creds/web/tls.key", "tls.key")
    empty = _errors(_files_secret("web", readme="hello"))
    assert empty[0][0] == "/etc/creds/web" and "tls.crt" in empty[0][2]


def test_no_reason_quotes_key_material() -> None:
    pem, other = server_cert(), server_cert()
    for values in (
        dict(tls_crt=pem.cert, tls_key=other.key),
        dict(tls_crt=pem.cert, tls_key=pem.key[:-40]),
        dict(tls_crt=pem.key, tls_key=pem.key),
    ):
        _, issues = convert_secret(kube_secret("web", **values), default_namespace="d")
        assert issues
        assert not any("PRIVATE KEY" in i.reason or "MII" in i.reason for i in issues)


def test_the_normalizer_keeps_the_last_good_credential_and_reports_the_bad_one() -> None:
    normalizer = Normalizer()
    good, other = server_cert(), server_cert()
    snap, found = normalizer.apply(
        [SourceEvent("kubernetes", (kube_secret("web", tls_crt=good.cert, tls_key=good.key),))]
    )
    assert not found and snap.credentials["istio-system/web"].cert_chain_pem == good.cert
    first = snap.credentials["istio-system/web"]
    bad = kube_secret("web", tls_crt=good.cert, tls_key=other.key)
    snap, found = normalizer.apply([SourceEvent("kubernetes", (bad,))])
    assert [d.field for d in found] == ["data.tls.key"]
    assert snap.credentials["istio-system/web"] is first
    # the same content again (a new resourceVersion) keeps the very object: nothing to re-send
    snap, _ = normalizer.apply(
        [SourceEvent("kubernetes", (kube_secret("web", tls_crt=good.cert, tls_key=good.key),))]
    )
    assert snap.credentials["istio-system/web"] is first
    snap, _ = normalizer.apply([SourceEvent("kubernetes", deletes=(bad.key,))])
    assert "istio-system/web" not in snap.credentials


def test_a_secret_that_loses_its_keys_is_an_error_and_keeps_serving() -> None:
    normalizer = Normalizer()
    good = server_cert()
    normalizer.apply(
        [SourceEvent("kubernetes", (kube_secret("web", tls_crt=good.cert, tls_key=good.key),))]
    )
    snap, found = normalizer.apply([SourceEvent("kubernetes", (kube_secret("web", x="y"),))])
    assert [d.severity for d in found] == ["error"] and "istio-system/web" in snap.credentials


def test_two_sources_defining_one_credential_the_older_wins_with_a_warning() -> None:
    normalizer = Normalizer()
    a, b = server_cert("a.example"), server_cert("b.example")
    files = _files_secret("web", tls_crt=a.cert, tls_key=a.key)
    files = dataclasses.replace(files, namespace="istio-system")
    normalizer.apply([SourceEvent("credentials", (files,))])
    snap, found = normalizer.apply(
        [SourceEvent("kubernetes", (kube_secret("web", tls_crt=b.cert, tls_key=b.key),))]
    )
    assert snap.credentials["istio-system/web"].cert_chain_pem == a.cert
    assert [(d.severity, d.source) for d in found] == [("warning", "kubernetes")]
    snap, _ = normalizer.apply([SourceEvent("credentials", deletes=(files.key,))])
    assert snap.credentials["istio-system/web"].cert_chain_pem == b.cert
