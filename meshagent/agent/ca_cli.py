"""`meshagent ca init|issue|show`, `meshagent token create` and `meshagent certs`.

Operator errors are MeshAgentError/OSError, which cli.main prints as one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from meshagent.agent.configpath import CONFIG_HELP, config_path
from meshagent.ca.authority import CertificateAuthority
from meshagent.ca.durations import format_duration, parse_duration
from meshagent.ca.keys import KEY_TYPES, generate_key, key_to_pem, load_certs_pem, make_csr
from meshagent.errors import ConfigError
from meshagent.model.identity import Identity, InvalidIdentity, check_name, config_identity

DEFAULT_CA_DIR = Path("/var/lib/meshagent/ca")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ca`, `token` and `certs` commands to the top-level subparsers."""
    ca = sub.add_parser("ca", help="the certificate authority: init, issue, show")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="CA_COMMAND")
    init = ca_sub.add_parser("init", help="create a self-signed root (ECDSA P-256, 10 years)")
    init.add_argument("--dir", required=True, type=Path, help="CA directory")
    init.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
    issue = ca_sub.add_parser("issue", help="issue a workload certificate into a directory")
    issue.add_argument(
        "--dir", required=True, type=Path, help="CA directory (self-signed or cacerts)"
    )
    issue.add_argument("--namespace", required=True)
    issue.add_argument("--service-account", required=True)
    issue.add_argument(
        "--out", required=True, type=Path, help="writes cert-chain.pem, key.pem, root-cert.pem"
    )
    issue.add_argument("--ttl", default="24h", help="lifetime, e.g. 24h (default), 30m")
    issue.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES)
    issue.add_argument("--trust-domain", help="default: the root certificate's organization")
    show = ca_sub.add_parser("show", help="print the CA's roots and signer")
    show.add_argument("--dir", type=Path, default=DEFAULT_CA_DIR, help=f"default: {DEFAULT_CA_DIR}")
    token = sub.add_parser("token", help="bootstrap tokens for CreateCertificate")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")
    create = token_sub.add_parser("create", help="print a signed, scoped, expiring token")
    create.add_argument("--namespace", required=True)
    create.add_argument("--service-account", required=True)
    create.add_argument("--ttl", default="1h", help="lifetime, e.g. 1h (default), 7d")
    create.add_argument(
        "--ca-dir", type=Path, default=DEFAULT_CA_DIR, help=f"default: {DEFAULT_CA_DIR}"
    )
    create.add_argument("--trust-domain", help="default: the root certificate's organization")
    certs = sub.add_parser(
        "certs", help="workload certificates on this host: identity, serial, expiry"
    )
    certs.add_argument("--config", "-c", type=Path, default=None, help=CONFIG_HELP)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run a `ca`, `token` or `certs` command; the exit code."""
    out = out or sys.stdout
    if args.command == "certs":
        return _certs(args, out)
    if args.command == "token":
        return _token_create(args, out)
    handlers = {"init": _init, "issue": _issue, "show": _show}
    return handlers[args.ca_command](args, out)


def _init(args: argparse.Namespace, out: TextIO) -> int:
    from meshagent.ca.state import ROOT_CERT, init_self_signed

    _trust_domain_flag(args.trust_domain)
    created = init_self_signed(args.dir, args.trust_domain)
    root = load_certs_pem((args.dir / ROOT_CERT).read_bytes())[0]
    verb = "created" if created else "exists:"
    print(f"{verb} root {_describe(root)} in {args.dir}", file=out)
    return 0


def _open_ca(ca_dir: Path, trust_domain: str | None) -> CertificateAuthority:
    from meshagent.ca.state import ROOT_CERT, load_plugin, load_self_signed

    if trust_domain is not None:
        _trust_domain_flag(trust_domain)
    if (ca_dir / "ca-key.pem").exists():
        root = load_certs_pem((ca_dir / "root-cert.pem").read_bytes())[0]
        return load_plugin(ca_dir, trust_domain or _organization(root, ca_dir))
    if not (ca_dir / ROOT_CERT).exists():
        raise ConfigError(
            "no CA here; run `meshagent ca init --dir DIR` first", location=str(ca_dir)
        )
    root = load_certs_pem((ca_dir / ROOT_CERT).read_bytes())[0]
    return load_self_signed(ca_dir, trust_domain or _organization(root, ca_dir), create=False)


def _organization(cert: x509.Certificate, ca_dir: Path) -> str:
    """The trust domain a root names in its organization (as `ca init` writes it)."""
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = str(names[0].value) if names else "cluster.local"
    try:
        return check_name("trust_domain", value)
    except InvalidIdentity as exc:
        raise _NoTrustDomain(
            f"the root certificate's organization is not a trust domain ({exc}); "
            "pass --trust-domain",
            location=str(ca_dir),
        ) from None


class _NoTrustDomain(ConfigError):
    """The CA's root names no valid trust domain (e.g. Istio's sample cacerts: O=Istio)."""


def _trust_domain_flag(value: str) -> None:
    try:
        check_name("trust_domain", value)
    except InvalidIdentity as exc:
        raise ConfigError(str(exc), field="--trust-domain") from None


def _flag_identity(trust_domain: str, args: argparse.Namespace) -> Identity:
    """The identity named by --namespace and --service-account; ConfigError naming the flag."""
    return config_identity(
        trust_domain,
        args.namespace,
        args.service_account,
        fields={
            "trust_domain": "--trust-domain",
            "namespace": "--namespace",
            "service_account": "--service-account",
        },
    )


def _issue(args: argparse.Namespace, out: TextIO) -> int:
    from meshagent.ca.errors import LifetimeRejected
    from meshagent.ca.keys import write_private

    ttl = _duration(args.ttl, "--ttl")
    _flag_identity("cluster.local", args)  # names first: nothing is opened for a bad one
    ca = _open_ca(args.dir, args.trust_domain)
    identity = _flag_identity(ca.trust_domain, args)
    key = generate_key(args.key_type)
    try:
        chain = ca.issue(make_csr(key, identity), identity, ttl)
    except LifetimeRejected as exc:
        raise ConfigError(str(exc), field="--ttl") from None
    write_private(args.out / "key.pem", key_to_pem(key))
    write_private(args.out / "cert-chain.pem", "".join(chain))
    write_private(args.out / "root-cert.pem", ca.roots_pem)
    leaf = load_certs_pem(chain[0])[0]
    print(f"issued {identity.spiffe_id} {_describe(leaf)} into {args.out}", file=out)
    return 0


def _show(args: argparse.Namespace, out: TextIO) -> int:
    try:
        ca = _open_ca(args.dir, None)
        trust_domain = ca.trust_domain
    except _NoTrustDomain as exc:  # still worth showing; issuing needs --trust-domain
        ca = _open_ca(args.dir, "cluster.local")
        trust_domain = f"none: {exc.reason}"
    mode = "plug-in" if ca.signer_cert not in ca.roots else "self-signed"
    print(f"mode: {mode}\ntrust domain: {trust_domain}", file=out)
    print(f"signer: {_describe(ca.signer_cert)}", file=out)
    for root in ca.roots:
        print(f"root: {_describe(root)}", file=out)
    return 0


def _token_create(args: argparse.Namespace, out: TextIO) -> int:
    from meshagent.ca.state import token_key
    from meshagent.ca.tokens import create_token

    ttl = _duration(args.ttl, "--ttl")
    _flag_identity("cluster.local", args)
    ca = _open_ca(args.ca_dir, args.trust_domain)
    identity = _flag_identity(ca.trust_domain, args)
    print(create_token(token_key(args.ca_dir), identity, ttl), file=out)
    return 0


def _certs(args: argparse.Namespace, out: TextIO) -> int:
    from meshagent.agent.config import load_config
    from meshagent.ca import certstore

    config = load_config(config_path(args.config))
    base = config.state_dir / "certs"
    identities = certstore.list_identities(base)
    if not identities:
        print(f"no workload certificates under {base}", file=out)
    for identity in identities:
        chain = (certstore.identity_dir(base, identity) / certstore.CHAIN).read_bytes()
        leaf = load_certs_pem(chain)[0]
        print(f"{identity.spiffe_id} {_describe(leaf)}", file=out)
    return 0


def _describe(cert: x509.Certificate) -> str:
    not_after = cert.not_valid_after_utc
    left = not_after.timestamp() - time.time()
    state = f"expires in {format_duration(left)}" if left > 0 else "EXPIRED"
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()[:16]
    subject = cert.subject.rfc4514_string()
    return (
        f"serial={cert.serial_number:x} not_after={not_after.isoformat()} ({state}) "
        f"sha256={fingerprint}" + (f" subject={subject}" if subject else "")
    )


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc), field=flag) from None
