"""Identity names are validated in one place (model/identity.py) and at every entry: the ca and
token commands, the agent config, the join directory, the token verifier, client certificates
and WorkloadEntry service accounts. The attack they stop: a service account
"x/ns/client/sa/y" whose SPIFFE URI an AuthorizationPolicy `namespaces: [client]` accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.agent.config import parse_config
from meshagent.ca.errors import AuthenticationError
from meshagent.ca.issuer import IssuanceService, Request
from meshagent.ca.keys import generate_key, key_to_pem, make_csr
from meshagent.ca.ratelimit import TokenBucketLimiter
from meshagent.ca.state import load_self_signed, token_key
from meshagent.ca.tokens import TokenVerifier, create_token
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity, InvalidIdentity, check_name
from meshagent.onboard.joindir import read_join_dir
from tests.ca_helpers import FakeClock, forged_identity

TD = "cluster.local"
ATTACK = "x/ns/client/sa/y"
NOW = 1_900_000_000.0


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("namespace", "shop"),
        ("namespace", "a" * 63),
        ("namespace", "istio-system"),
        ("namespace", "0a9"),
        ("service_account", "web"),
        ("service_account", "web.v1-sa"),
        ("service_account", ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253
        ("trust_domain", "cluster.local"),
        ("trust_domain", "my_td-1.example.org"),
        ("trust_domain", "t" * 255),
    ],
)
def test_valid_names(part: str, value: str) -> None:
    assert check_name(part, value) == value


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("namespace", ""),
        ("namespace", "Shop"),
        ("namespace", "-shop"),
        ("namespace", "shop-"),
        ("namespace", "a.b"),  # a label: no dots
        ("namespace", "a" * 64),
        ("namespace", "shop\n"),
        ("namespace", "x/ns/client"),
        ("namespace", 5),
        ("service_account", ""),
        ("service_account", ATTACK),
        ("service_account", "web_sa"),
        ("service_account", "a..b"),
        ("service_account", ".a"),
        ("service_account", "a" * 254),
        ("service_account", "web%2Fx"),
        ("service_account", "web?x"),
        ("trust_domain", ""),
        ("trust_domain", "Cluster.local"),
        ("trust_domain", "td:8443"),
        ("trust_domain", "user@td"),
        ("trust_domain", "td/ns"),
        ("trust_domain", "spiffe://td"),
        ("trust_domain", "t" * 256),
    ],
)
def test_invalid_names_are_refused_with_the_rule(part: str, value: object) -> None:
    with pytest.raises(InvalidIdentity) as info:
        check_name(part, value)
    assert info.value.part == part
    assert "is not a valid" in str(info.value)
    assert len(str(info.value)) < 300  # a long value is shortened in the message


def test_no_invalid_identity_can_be_built() -> None:
    with pytest.raises(InvalidIdentity, match="service account") as info:
        Identity(TD, "x", ATTACK)
    assert info.value.part == "service_account"
    with pytest.raises(InvalidIdentity, match="trust domain"):
        Identity("td:1", "shop", "web")
    with pytest.raises(ValueError):  # InvalidIdentity is a ValueError
        Identity(TD, "", "web")


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local/ns/x/sa/x/ns/client/sa/y",
        "spiffe://cluster.local/ns/shop/sa/web/",
        "spiffe://cluster.local/ns/shop/sa/web?x=1",
        "spiffe://cluster.local/ns/shop/sa/web#f",
        "spiffe://cluster.local/ns/shop/sa/we%62",
        "spiffe://cluster.local:443/ns/shop/sa/web",
        "spiffe://u@cluster.local/ns/shop/sa/web",
        "SPIFFE://cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns//sa/web",
        "spiffe://cluster.local/NS/shop/sa/web",
        "spiffe:///ns/shop/sa/web",
        "https://cluster.local/ns/shop/sa/web",
    ],
)
def test_spiffe_uris_are_parsed_strictly(uri: str) -> None:
    with pytest.raises(InvalidIdentity):
        Identity.parse(uri)


def test_spiffe_uri_round_trips() -> None:
    identity = Identity("example.org", "shop", "web.v1")
    assert Identity.parse(identity.spiffe_id) == identity


# --- the CLI: exit code 2, one line naming the flag, nothing written ---------------------


def _cli_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshagent: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_ca_issue_refuses_a_service_account_that_poses_as_another_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    out = tmp_path / "out"
    issue = ["ca", "issue", "--dir", str(ca), "--out", str(out)]
    err = _cli_error(capsys, [*issue, "--namespace", "x", "--service-account", ATTACK])
    assert f"--service-account: '{ATTACK}' is not a valid service account" in err
    err = _cli_error(capsys, [*issue, "--namespace", "Shop", "--service-account", "web"])
    assert "--namespace: 'Shop' is not a valid namespace" in err
    err = _cli_error(
        capsys,
        [*issue, "--namespace", "shop", "--service-account", "web", "--trust-domain", "u@td"],
    )
    assert "--trust-domain: 'u@td' is not a valid trust domain" in err
    assert not out.exists()


def test_ca_issue_refuses_a_lifetime_above_the_maximum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    out = tmp_path / "out"
    args = ["ca", "issue", "--dir", str(ca), "--namespace", "a", "--service-account", "b"]
    err = _cli_error(capsys, [*args, "--out", str(out), "--ttl", "91d"])
    assert "--ttl: requested lifetime 7862400s (91d0h) is greater than the maximum" in err
    assert not out.exists()


def test_token_create_refuses_invalid_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    capsys.readouterr()
    token = ["token", "create", "--ca-dir", str(ca)]
    err = _cli_error(capsys, [*token, "--namespace", "x", "--service-account", ATTACK])
    assert "--service-account:" in err and "not a valid service account" in err
    err = _cli_error(capsys, [*token, "--namespace", "a" * 64, "--service-account", "web"])
    assert "--namespace:" in err and "at most 63 characters" in err
    assert main([*token, "--namespace", "shop", "--service-account", "web"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWS


def test_ca_init_refuses_an_invalid_trust_domain_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca"
    for bad in ("td:8443", "Example.org", "u@td", "td/x"):
        err = _cli_error(capsys, ["ca", "init", "--dir", str(ca), "--trust-domain", bad])
        assert f"--trust-domain: '{bad}' is not a valid trust domain" in err
    assert not ca.exists()


def test_a_root_whose_organization_is_no_trust_domain_asks_for_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshagent.ca.keys import cert_to_pem, write_private
    from meshagent.ca.state import ROOT_CERT, ROOT_KEY
    from tests.ca_helpers import self_signed_root

    ca = tmp_path / "ca"
    key = generate_key("ec-p256")
    write_private(ca / ROOT_KEY, key_to_pem(key))
    write_private(ca / ROOT_CERT, cert_to_pem(self_signed_root(key, "Istio Inc")))
    args = ["ca", "issue", "--dir", str(ca), "--namespace", "a", "--service-account", "b"]
    err = _cli_error(capsys, [*args, "--out", str(tmp_path / "o")])
    assert "organization is not a trust domain" in err and "pass --trust-domain" in err
    assert main([*args, "--out", str(tmp_path / "o"), "--trust-domain", "istio.io"]) == 0
    assert main(["ca", "show", "--dir", str(ca)]) == 0  # showing it still works
    assert "trust domain: none: the root certificate's organization" in capsys.readouterr().out


def test_the_real_cli_prints_one_line_for_a_bad_name(tmp_path: Path) -> None:
    # A subprocess: what an operator sees, with the real entry point and no test harness.
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca)]) == 0
    cli = [sys.executable, "-m", "meshagent.agent.cli"]
    proc = subprocess.run(
        [
            *cli,
            "token",
            "create",
            "--ca-dir",
            str(ca),
            "--namespace",
            "x",
            "--service-account",
            ATTACK,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("meshagent: --service-account: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --- the agent config and the join directory: located errors ------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"workloads: [{{name: w, namespace: x, service_account: '{ATTACK}'}}]",
            "workloads[0].service_account: 'x/ns/client/sa/y' is not a valid service account",
        ),
        ("workloads: [{name: w, namespace: Shop}]", "workloads[0].namespace: 'Shop' is not"),
        ("ca: {trust_domain: 'td:8443'}", "ca.trust_domain: 'td:8443' is not a valid trust"),
        ("ca: {trust_domain: Example.org}", "ca.trust_domain: 'Example.org' is not a valid"),
    ],
)
def test_config_names_are_validated_with_location(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / "agent.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'agent.yaml'}:1: ")


def _join_dir(directory: Path, env: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "cluster.env").write_text(env)
    (directory / "root-cert.pem").write_text("ROOT")
    (directory / "istio-token").write_text("")
    return directory


@pytest.mark.parametrize(
    ("env", "field"),
    [
        (f"POD_NAMESPACE=vmns\nSERVICE_ACCOUNT='{ATTACK}'\n", "SERVICE_ACCOUNT"),
        ("POD_NAMESPACE=VMs\n", "POD_NAMESPACE"),
        ("ISTIO_NAMESPACE=a_b\n", "ISTIO_NAMESPACE"),
        ("POD_NAMESPACE=vmns\nTRUST_DOMAIN=td:1\n", "TRUST_DOMAIN"),
    ],
)
def test_join_dir_names_are_validated(tmp_path: Path, env: str, field: str) -> None:
    directory = _join_dir(tmp_path / "join", env)
    with pytest.raises(ConfigError) as info:
        read_join_dir(directory)
    assert str(info.value).startswith(f"{directory / 'cluster.env'}: {field}: ")
    assert "is not a valid" in str(info.value)


def test_join_dir_with_valid_names(tmp_path: Path) -> None:
    info = read_join_dir(
        _join_dir(tmp_path / "j", "POD_NAMESPACE=vmns\nSERVICE_ACCOUNT=vm-sa\nTRUST_DOMAIN=t.io\n")
    )
    assert (info.trust_domain, info.namespace, info.service_account) == ("t.io", "vmns", "vm-sa")


# --- the token verifier and client certificates ------------------------------------------


def _service(ca_dir: Path) -> IssuanceService:
    clock = FakeClock(NOW)
    ca = load_self_signed(ca_dir, TD, clock=clock)
    verifier = TokenVerifier(token_key(ca_dir).public_key(), TD, clock=clock)
    return IssuanceService(ca, verifier, TokenBucketLimiter(100.0, 100, clock=clock))


def test_token_verifier_refuses_a_token_naming_an_invalid_identity(tmp_path: Path) -> None:
    # Signed with the CA's own key (as an older version would have minted it): still refused.
    svc = _service(tmp_path / "ca")
    token = create_token(token_key(tmp_path / "ca"), forged_identity(TD, "x", ATTACK), 600, now=NOW)
    with pytest.raises(AuthenticationError, match=r"invalid identity.*not a valid service"):
        svc.verifier.verify(token)
    csr = make_csr(generate_key(), Identity(TD, "client", "y"))
    with pytest.raises(AuthenticationError):
        svc.handle(Request(csr, 0, token, None))


def test_a_csr_naming_an_invalid_identity_is_refused(tmp_path: Path) -> None:
    from meshagent.ca.errors import IdentityMismatch

    svc = _service(tmp_path / "ca")
    caller = Identity(TD, "x", "x")
    token = create_token(token_key(tmp_path / "ca"), caller, 600, now=NOW)
    csr = make_csr(generate_key(), forged_identity(TD, "x", ATTACK))
    with pytest.raises(IdentityMismatch, match="CSR asks for spiffe://"):
        svc.handle(Request(csr, 0, token, None))


def test_a_client_certificate_naming_an_invalid_identity_is_refused(tmp_path: Path) -> None:
    svc = _service(tmp_path / "ca")
    key = generate_key("ec-p256")
    chain = svc.ca.issue_server(key.public_key(), [], forged_identity(TD, "x", ATTACK), 600)
    csr = make_csr(generate_key(), Identity(TD, "client", "y"))
    with pytest.raises(AuthenticationError, match="no identity of this trust domain"):
        svc.handle(Request(csr, 0, None, chain[0]))


def test_a_ca_refuses_an_invalid_trust_domain(tmp_path: Path) -> None:
    from meshagent.ca.errors import CaError

    load_self_signed(tmp_path / "ca", TD)
    with pytest.raises(CaError, match="not a valid trust domain"):
        load_self_signed(tmp_path / "ca", "TD:1", create=False)


# --- mesh config: a WorkloadEntry's serviceAccount ----------------------------------------


def test_workload_entry_and_endpoint_service_accounts_are_kubernetes_names() -> None:
    from tests.unit.normalize_helpers import diagnostics, errors

    entry = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: shop}
spec:
  address: 10.0.0.1
  serviceAccount: %s
"""
    assert errors(entry % f"'{ATTACK}'") == [("mesh.yaml:6", "spec.serviceAccount")]
    (diag,) = diagnostics(entry % f"'{ATTACK}'")
    assert "is not a valid service account" in diag.reason
    assert errors(entry % "web-sa") == []
    service_entry = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 10.1.0.5
    serviceAccount: Web
"""
    assert errors(service_entry) == [("mesh.yaml:11", "spec.endpoints[0].serviceAccount")]


def test_an_endpoint_identity_that_cannot_exist_is_never_widened_to_any_identity() -> None:
    # A namespace from a platform with other rules: its URI is kept as written (no CA of ours
    # issues it, so nothing verifies), and the cluster never falls back to "any identity".
    from meshagent.model import Endpoint, Provenance, Resolution, Service
    from meshagent.xds.translate.tls import mesh_tls_for

    service = Service("db.example.com", "data", (), Resolution.STATIC)
    odd = Provenance("files", "mesh.yaml:1", "WorkloadEntry", "Data_NS", "vm")
    endpoints = (
        Endpoint(address="10.0.0.1", service_account="db", provenance=odd),
        Endpoint(address="10.0.0.2", service_account="db"),
    )
    mesh = mesh_tls_for(TD, service, endpoints)
    assert mesh.identities == (
        "spiffe://cluster.local/ns/Data_NS/sa/db",
        "spiffe://cluster.local/ns/data/sa/db",
    )
    alone = mesh_tls_for(TD, service, endpoints[:1])
    assert alone.identities == ("spiffe://cluster.local/ns/Data_NS/sa/db",)
