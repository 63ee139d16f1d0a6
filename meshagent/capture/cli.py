"""`meshagent capture apply|remove|print`: istio-iptables' flags, cluster.env, two backends.

Precedence: istio-iptables' defaults, then `--cluster-env FILE` (the variables istio-iptables
reads from its environment on a VM), then the flags given. The proxy's users default to
`meshagent-envoy` and `meshagent` (Envoy and the agent), else ENVOY_USER or `istio-proxy`,
else uid 1337 as in Istio. Exit codes: 0 done, 1 a tool failed, 2 bad flags or input.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from meshagent.capture import iptables, nft
from meshagent.capture.apply import (
    CaptureError,
    Runner,
    applied_backend,
    apply_iptables,
    apply_nft,
    remove_iptables,
    remove_nft,
    require_root,
)
from meshagent.capture.options import CaptureOptions, from_env, parse_bool, resolv_conf_servers
from meshagent.capture.rules import build
from meshagent.errors import ConfigError

PROXY_USERS = ("meshagent-envoy", "meshagent")
REMOVE_NOTE = (
    "# remove: one iptables-restore --noflush per family that deletes every jump to an ISTIO_*\n"
    "# chain and every ISTIO_* chain iptables-save shows, and the other built-in-chain rules\n"
    "# apply adds for these options (found with iptables -C)\n"
)
# flag -> (dest, help); every one a string in istio-iptables' comma-list form.
STRING_FLAGS = {
    ("-p", "--envoy-port"): ("proxy_port", "Envoy's outbound capture port (default 15001)"),
    ("-z", "--inbound-capture-port"): ("inbound_capture_port", "inbound port (default 15006)"),
    ("-e", "--inbound-tunnel-port"): ("inbound_tunnel_port", "tunnel port (default 15008)"),
    ("-u", "--proxy-uid"): ("proxy_uid", "users whose traffic is never captured (comma list)"),
    ("-g", "--proxy-gid"): ("proxy_gid", "groups whose traffic is never captured"),
    ("-m", "--istio-inbound-interception-mode"): ("mode", "REDIRECT (default) or TPROXY"),
    ("-t", "--istio-inbound-tproxy-mark"): ("tproxy_mark", "TPROXY mark (default 1337)"),
    ("-r", "--istio-inbound-tproxy-route-table"): ("tproxy_route_table", "default 133"),
    ("-b", "--istio-inbound-ports"): ("inbound_ports", "inbound ports to capture, or '*'"),
    ("-d", "--istio-local-exclude-ports"): ("inbound_exclude", "inbound ports not captured"),
    ("-c", "--istio-exclude-interfaces"): ("exclude_interfaces", "interfaces never captured"),
    ("-i", "--istio-service-cidr"): ("service_cidr", "outbound CIDRs to capture, or '*'"),
    ("-x", "--istio-service-exclude-cidr"): ("service_exclude_cidr", "CIDRs not captured"),
    ("-q", "--istio-outbound-ports"): ("outbound_ports", "outbound ports always captured"),
    ("-o", "--istio-local-outbound-ports-exclude"): ("outbound_exclude", "ports not captured"),
    ("-k", "--kube-virt-interfaces"): ("virt_interfaces", "interfaces treated as outbound"),
}
BOOL_FLAGS = {
    "--redirect-dns": ("redirect_dns", "send DNS to the resolv.conf servers to 15053"),
    "--capture-all-dns": ("capture_all_dns", "with --redirect-dns: all port-53 traffic"),
    "--drop-invalid": ("drop_invalid", "drop conntrack-INVALID packets (ISTIO_DROP)"),
    "--dual-stack": ("dual_stack", "also program IPv6 (ip6tables / nft ip6)"),
}


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`capture apply|remove|print` under the `meshagent` command."""
    capture = sub.add_parser("capture", help="program netfilter to send traffic through Envoy")
    actions = capture.add_subparsers(dest="capture_command", required=True, metavar="ACTION")
    for name, text in (
        ("apply", "apply the capture rules (idempotent)"),
        ("remove", "remove every capture rule and chain"),
        ("print", "print the rules apply would program, in istio-iptables' form"),
    ):
        _add_flags(actions.add_parser(name, help=text, description=text))


def _add_flags(parser: argparse.ArgumentParser) -> None:
    for flags, (dest, text) in STRING_FLAGS.items():
        parser.add_argument(*flags, dest=dest, default=None, metavar="VALUE", help=text)
    for flag, (dest, text) in BOOL_FLAGS.items():
        parser.add_argument(flag, dest=dest, nargs="?", const="true", default=None,
                            metavar="BOOL", help=text)  # fmt: skip
    parser.add_argument("-n", "--dry-run", action="store_true", help="print, change nothing")
    # istio-iptables' own spellings, accepted so its command lines work unchanged.
    parser.add_argument("--native-nftables", nargs="?", const="true", default=None,
                        metavar="BOOL", help="same as --backend nft")  # fmt: skip
    parser.add_argument("--cleanup-only", nargs="?", const="true", default=None,
                        metavar="BOOL", help="same as `capture remove`")  # fmt: skip
    parser.add_argument("--reconcile", nargs="?", const="true", default=None, metavar="BOOL",
                        help="accepted: apply always replaces the previous rules")  # fmt: skip
    parser.add_argument("--cluster-env", type=Path, metavar="FILE",
                        help="read the ISTIO_* variables of a VM's cluster.env")  # fmt: skip
    parser.add_argument("--backend", choices=("iptables", "nft"), default="iptables")
    parser.add_argument(
        "--if-applied", action="store_true",
        help="apply only where capture rules are in place already, with their backend (the "
        "agent unit re-applies with DNS once its DNS proxy answers); else do nothing",
    )  # fmt: skip
    parser.add_argument("--resolv-conf", type=Path, default=Path("/etc/resolv.conf"),
                        metavar="FILE", help="nameservers for --redirect-dns")  # fmt: skip


def options_from_args(args: argparse.Namespace) -> CaptureOptions:
    """Defaults, then cluster.env, then the flags given; validated."""
    options = CaptureOptions(proxy_uid="", proxy_gid="")
    if args.cluster_env is not None:
        from meshagent.onboard.joindir import parse_cluster_env

        text = args.cluster_env.read_text(encoding="utf-8")
        options = from_env(parse_cluster_env(text, str(args.cluster_env)), options)
    given: dict[str, object] = {}
    for dest, _ in STRING_FLAGS.values():
        if getattr(args, dest) is not None:
            given[dest] = getattr(args, dest).strip()
    for flag, (dest, _) in BOOL_FLAGS.items():
        if getattr(args, dest) is not None:
            given[dest] = parse_bool(getattr(args, dest), flag)
    options = replace(options, **given)  # type: ignore[arg-type]
    options = replace(options, mode=options.mode.upper() or "REDIRECT")
    options = _default_owners(options)
    if options.redirect_dns and not options.capture_all_dns:
        text = args.resolv_conf.read_text(encoding="utf-8") if args.resolv_conf.exists() else ""
        options = replace(options, dns_servers=resolv_conf_servers(text))
        if not options.dns_servers:  # Istio's rule: then DNS is not captured at all
            print(
                f"meshagent capture: warning: no nameserver in {args.resolv_conf} and no "
                "--capture-all-dns: DNS is not captured",
                file=sys.stderr,
            )
    return options.validated()


def _compat(args: argparse.Namespace) -> None:
    """Map istio-iptables' --native-nftables and --cleanup-only onto ours."""
    if args.native_nftables is not None and parse_bool(args.native_nftables, "--native-nftables"):
        args.backend = "nft"
    if args.cleanup_only is not None and parse_bool(args.cleanup_only, "--cleanup-only"):
        args.capture_command = "remove"
    if args.reconcile is not None:
        parse_bool(args.reconcile, "--reconcile")


def _options(args: argparse.Namespace) -> CaptureOptions:
    """The options; `remove` goes on without an unreadable cluster.env (ExecStop after the
    file was deleted must still remove every ISTIO_* chain and jump)."""
    try:
        return options_from_args(args)
    except (ConfigError, OSError) as exc:
        if args.capture_command != "remove" or args.cluster_env is None:
            raise
        where = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        print(f"meshagent capture: warning: {where}; removing without it", file=sys.stderr)
        return options_from_args(argparse.Namespace(**{**vars(args), "cluster_env": None}))


def _default_owners(options: CaptureOptions) -> CaptureOptions:
    """Istio's rule: no -u means the proxy user's uid; no -g means the same list as -u."""
    uid = options.proxy_uid
    gid = options.proxy_gid
    if not uid:
        users = [u for u in (_user(n) for n in PROXY_USERS) if u is not None]
        if not users:
            fallback = _user(os.environ.get("ENVOY_USER", "istio-proxy"))
            users = [fallback] if fallback is not None else []
        uid = ",".join(str(u.pw_uid) for u in users) or "1337"
        if not gid and users:
            gid = ",".join(dict.fromkeys(str(u.pw_gid) for u in users))
    return replace(options, proxy_uid=uid, proxy_gid=gid or uid)


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _nothing_applied(args: argparse.Namespace) -> bool:
    """With `apply --if-applied`: True when no capture rules are in place (then the call does
    nothing, cluster.env unread); else args.backend becomes the backend that holds them."""
    if args.capture_command != "apply" or not args.if_applied or args.dry_run:
        return False
    require_root()
    backend = applied_backend(Runner())
    if backend is None:
        return True
    args.backend = backend
    return False


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `meshagent capture ...`; one-line errors, exit 1 for a failed tool, 2 bad input."""
    out = out or sys.stdout
    try:
        _compat(args)
        if _nothing_applied(args):
            print("meshagent capture: not applied here; nothing to do", file=sys.stderr)
            return 0
        options = _options(args)
        ruleset = build(options)
        if args.capture_command == "print" or args.dry_run:
            if args.capture_command == "remove":
                out.write(nft.remove_script() if args.backend == "nft" else REMOVE_NOTE)
            elif args.backend == "nft":
                out.write(nft.render(ruleset))
            else:
                out.write(iptables.render(ruleset))
            return 0
        require_root()
        runner = Runner()
        if args.backend == "nft":
            if args.capture_command == "apply":
                apply_nft(runner, ruleset, options)
            else:
                remove_nft(runner, options)
        elif args.capture_command == "apply":
            apply_iptables(runner, ruleset, options)
        else:
            remove_iptables(runner, ruleset, options)
    except ConfigError as exc:
        print(f"meshagent capture: {exc}", file=sys.stderr)
        return 2
    except CaptureError as exc:
        print(f"meshagent capture: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"meshagent capture: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    done = "applied" if args.capture_command == "apply" else "removed"
    print(f"meshagent capture: {done} ({args.backend})", file=sys.stderr)
    return 0
