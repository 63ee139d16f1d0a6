"""The `ca:` and `workloads:` config sections and the ca/token/certs commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshagent.agent.cli import main
from meshagent.agent.config import parse_config
from meshagent.ca.keys import load_certs_pem
from meshagent.ca.state import token_key
from meshagent.ca.tokens import TokenVerifier
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity
from tests.ca_helpers import make_cacerts, verify_chain


def test_ca_section_defaults_and_paths(tmp_path: Path) -> None:
    config = parse_config(
        "state_dir: st\nca: {plugin_dir: cacerts, mode: plug-in, key_type: rsa-2048}\n"
        "workloads: [{name: web, namespace: shop, service_account: web-sa,"
        " ports: [{port: 9080, target_port: 19080, name: http}]}]\n",
        tmp_path / "agent.yaml",
    )
    assert config.ca is not None
    assert config.ca.dir == tmp_path / "st" / "ca"
    assert config.ca.plugin_dir == tmp_path / "cacerts"
    assert config.ca.workload_ttl_s == 24 * 3600 and config.ca.key_type == "rsa-2048"
    assert config.ca.serve.address is None and config.ca.serve.tls
    (workload,) = config.workloads
    assert (workload.namespace, workload.service_account) == ("shop", "web-sa")
    assert workload.ports[0].target_port == 19080
    assert config.proxy_spec().workloads == config.workloads


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ca: {mode: magic}", "3: ca.mode: must be one of"),
        ("ca:\n  mode: plug-in", "ca.plugin_dir: is required"),
        ("ca: {workload_ttl: soon}", "ca.workload_ttl: 'soon' is not a duration"),
        ("ca: {key_type: dsa}", "ca.key_type: must be one of"),
        ("ca: {colour: red}", "ca.colour: unknown key"),
        ("ca: {mode: upstream}", "ca.upstream: is required"),
        ("ca: {mode: upstream, upstream: {address: 'h:1'}}", "ca.upstream.token_file: is required"),
        ("ca: {mode: upstream, upstream: {address: h, token_file: t}}", "ca.upstream.address"),
        (
            "ca: {mode: upstream, serve: {address: '127.0.0.1:1'},"
            " upstream: {address: 'h:1', token_file: t}}",
            "ca.serve.address: needs a local CA",
        ),
        ("ca: {serve: {address: 'nohost:1'}}", "ca.serve.address: 'nohost' is not an IP"),
        ("ca: {serve: {rate: 0}}", "ca.serve.rate: must be a number above 0"),
        ("workloads: [{namespace: x}]", "workloads[0].name: is required"),
        ("workloads: [{name: a, ports: [{port: 99999}]}]", "workloads[0].ports[0].port"),
    ],
)
def test_ca_config_errors_are_located(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("log: {level: info}\n\n" + text, tmp_path / "agent.yaml")
    assert message in str(info.value)
    assert str(tmp_path / "agent.yaml") in str(info.value)


def test_ca_init_issue_show_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca), "--trust-domain", "example.org"]) == 0
    assert "created root" in capsys.readouterr().out
    out = tmp_path / "out"
    assert (
        main(
            [
                "ca",
                "issue",
                "--dir",
                str(ca),
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--out",
                str(out),
                "--ttl",
                "2h",
            ]
        )
        == 0
    )
    assert "spiffe://example.org/ns/shop/sa/web" in capsys.readouterr().out
    chain = (out / "cert-chain.pem").read_text()
    verify_chain([chain], (out / "root-cert.pem").read_text())
    assert (out / "key.pem").stat().st_mode & 0o077 == 0
    assert main(["ca", "show", "--dir", str(ca)]) == 0
    shown = capsys.readouterr().out
    assert "mode: self-signed" in shown and "trust domain: example.org" in shown
    assert (
        main(
            [
                "token",
                "create",
                "--namespace",
                "shop",
                "--service-account",
                "web",
                "--ttl",
                "10m",
                "--ca-dir",
                str(ca),
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(token_key(ca).public_key(), "example.org")
    assert verifier.verify(token) == Identity("example.org", "shop", "web")


def test_ca_issue_with_plugin_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, inter = make_cacerts(tmp_path / "cacerts")
    assert (
        main(
            [
                "ca",
                "issue",
                "--dir",
                str(tmp_path / "cacerts"),
                "--namespace",
                "a",
                "--service-account",
                "b",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    certs = load_certs_pem((tmp_path / "o" / "cert-chain.pem").read_bytes())
    assert certs[1:] == [inter, root]
    assert main(["ca", "show", "--dir", str(tmp_path / "cacerts")]) == 0
    assert "mode: plug-in" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        [
            "ca",
            "issue",
            "--dir",
            "{tmp}/none",
            "--namespace",
            "a",
            "--service-account",
            "b",
            "--out",
            "{tmp}/o",
        ],
        ["ca", "show", "--dir", "{tmp}/none"],
        [
            "token",
            "create",
            "--namespace",
            "a",
            "--service-account",
            "b",
            "--ttl",
            "forever",
            "--ca-dir",
            "{tmp}",
        ],
        ["certs", "--config", "{tmp}/missing.yaml"],
    ],
)
def test_operator_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshagent: ") and err.count("\n") == 1 and "Traceback" not in err


def test_certs_lists_the_identities_on_this_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("state_dir: st\n")
    assert main(["certs", "--config", str(config)]) == 0
    assert "no workload certificates" in capsys.readouterr().out
    main(["ca", "init", "--dir", str(tmp_path / "ca")])
    main(
        [
            "ca",
            "issue",
            "--dir",
            str(tmp_path / "ca"),
            "--namespace",
            "shop",
            "--service-account",
            "web",
            "--out",
            str(tmp_path / "st" / "certs" / "shop" / "web"),
        ]
    )
    capsys.readouterr()
    assert main(["certs", "--config", str(config)]) == 0
    line = capsys.readouterr().out
    assert line.startswith("spiffe://cluster.local/ns/shop/sa/web serial=")
    assert "expires in 23h59m" in line or "expires in 1d0h" in line
