"""The thin applier: programs the kernel with iptables-restore or nft, then reads it back.

Everything is computed by the pure modules; this one only runs the tools. Errors are one
line (`CaptureError`): a missing tool names its Debian package, a failing tool quotes its
first line of stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from meshagent.capture import iptables, nft
from meshagent.capture.options import TPROXY, CaptureOptions
from meshagent.capture.rules import (
    BUILTIN_CHAINS,
    V4,
    V6,
    Rule,
    Ruleset,
    build,
    chains,
    tables,
)
from meshagent.errors import MeshAgentError

PACKAGE = {"iptables": "iptables", "ip6tables": "iptables", "nft": "nftables", "ip": "iproute2"}
_CHAIN = re.compile(r"^:(ISTIO_\S+) ")
_RULE = re.compile(r"^-A (\S+) (.*)$")


class CaptureError(MeshAgentError):
    """A capture tool is missing or failed; the message is one line."""


@dataclass
class Runner:
    """Runs the tools; `prefix` (say `ip netns exec NAME`) runs them elsewhere; `log` keeps
    every command line run."""

    prefix: Sequence[str] = ()
    log: list[list[str]] = field(default_factory=list)

    def run(self, *cmd: str, stdin: str | None = None, check: bool = True) -> str:
        """stdout of cmd; CaptureError when it cannot start or (with check) fails."""
        done = self._exec(cmd, stdin)
        if check and done.returncode != 0:
            first = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[0]
            raise CaptureError(f"{' '.join(cmd[:3])} failed (exit {done.returncode}): {first}")
        return done.stdout

    def probe(self, *cmd: str) -> str | None:
        """stdout of cmd, or None when it fails."""
        done = self._exec(cmd, None)
        return done.stdout if done.returncode == 0 else None

    def ok(self, *cmd: str) -> bool:
        """Whether cmd exits 0 (for `iptables -C`)."""
        return self._exec(cmd, None).returncode == 0

    def _exec(self, cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        if shutil.which(cmd[0]) is None:
            package = PACKAGE.get(cmd[0].split("-", 1)[0], cmd[0])
            raise CaptureError(f"{cmd[0]} not found: install the Debian package {package}")
        argv = [*self.prefix, *cmd]
        self.log.append(argv)
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CaptureError(f"{cmd[0]}: {exc}") from None


def require_root() -> None:
    """CaptureError unless running with root's privileges (netfilter needs CAP_NET_ADMIN)."""
    if os.geteuid() != 0:
        raise CaptureError("must run as root to change netfilter rules (try sudo)")


def tool(version: int, suffix: str = "") -> str:
    """iptables or ip6tables, with -save or -restore."""
    return ("iptables" if version == V4 else "ip6tables") + suffix


def istio_chains(save: str) -> dict[str, list[str]]:
    """table -> ISTIO_* chains in an iptables-save text."""
    found: dict[str, list[str]] = {}
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif match := _CHAIN.match(line):
            found.setdefault(table, []).append(match.group(1))
    return found


def istio_jumps(save: str) -> dict[str, list[str]]:
    """table -> `CHAIN spec` of the rules in built-in chains that jump to an ISTIO_* chain."""
    found: dict[str, list[str]] = {}
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif (
            (match := _RULE.match(line))
            and match.group(1) in BUILTIN_CHAINS
            and re.search(r"(^| )-j ISTIO_", match.group(2))
        ):
            found.setdefault(table, []).append(f"{match.group(1)} {match.group(2)}")
    return found


def _owned_builtin(runner: Runner, version: int, rules: Sequence[Rule]) -> dict[str, list[str]]:
    """Our non-jump rules in built-in chains that are present (iptables -C compares them)."""
    found: dict[str, list[str]] = {}
    for rule in rules:
        if rule.chain in BUILTIN_CHAINS and not rule.target().startswith("ISTIO_"):
            spec = [rule.chain, *rule.spec()]
            if runner.ok(tool(version), "-t", rule.table, "-C", *spec):
                specs = found.setdefault(rule.table, [])
                if " ".join(spec) not in specs:
                    specs.append(" ".join(spec))
    return found


def _sync_family(
    runner: Runner,
    version: int,
    rules: tuple[Rule, ...],
    owned: Sequence[Rule],
    *,
    optional: bool = False,
) -> str:
    """Make one family's ISTIO_* state equal `rules` in one restore; returns the new save.

    `optional`: only clean up, and not at all where the family's tools are missing or fail
    (IPv6 disabled in the kernel, say) and nothing of ours can be there.
    """
    if optional:
        if shutil.which(tool(version, "-save")) is None:
            return ""
        probe = runner.probe(tool(version, "-save"))
        if probe is None:
            return ""
        save = probe
    else:
        save = runner.run(tool(version, "-save"))
    stale = istio_jumps(save)
    for table, specs in _owned_builtin(runner, version, owned).items():
        stale.setdefault(table, []).extend(s for s in specs if s not in stale.get(table, []))
    existing = istio_chains(save)
    if rules or existing or stale:
        payload = iptables.restore_payload(rules, existing, stale)
        runner.run(tool(version, "-restore"), "--noflush", stdin=payload)
    after = runner.run(tool(version, "-save"))
    missing = _missing(rules, istio_chains(after))
    if missing:
        raise CaptureError(f"{tool(version)}: chains missing after apply: {', '.join(missing)}")
    return after


def _missing(rules: tuple[Rule, ...], present: Mapping[str, list[str]]) -> list[str]:
    return [
        f"{t}/{c}" for t in tables(rules) for c in chains(rules, t) if c not in present.get(t, [])
    ]


def apply_iptables(runner: Runner, ruleset: Ruleset, options: CaptureOptions) -> dict[int, str]:
    """Program both families (without dual stack IPv6 is only cleaned); the saves after.
    Tables a previous `--backend nft` apply left are removed."""
    result = {V4: _sync_family(runner, V4, ruleset.v4, ruleset.v4)}
    if options.dual_stack:
        result[V6] = _sync_family(runner, V6, ruleset.v6, ruleset.v6)
    else:
        result[V6] = _sync_family(runner, V6, (), (), optional=True)
    _drop_nft_tables(runner)
    _routes(runner, options, install=True)
    return result


def remove_iptables(runner: Runner, ruleset: Ruleset, options: CaptureOptions) -> dict[int, str]:
    """Delete every ISTIO_* chain and jump, and the built-in-chain rules these options add
    (also in TPROXY mode and for IPv6, in case apply had those); the nft backend's tables."""
    del ruleset  # removal looks for more than these options' rules
    owned = removal_rules(options)
    result = {V4: _sync_family(runner, V4, (), owned.v4)}
    result[V6] = _sync_family(runner, V6, (), owned.v6, optional=not options.dual_stack)
    _drop_nft_tables(runner)
    _routes(runner, options, install=False)
    return result


def removal_rules(options: CaptureOptions) -> Ruleset:
    """The rules whose built-in-chain parts `remove` looks for: these options' own, and the
    same with TPROXY, inbound capture and both families, whichever apply had used."""
    variant = replace(
        options, mode=TPROXY, inbound_ports=options.inbound_ports or "*", dual_stack=True
    )
    own, wide = build(replace(options, dual_stack=True)), build(variant)
    return Ruleset(own.v4 + wide.v4, own.v6 + wide.v6)


def apply_nft(runner: Runner, ruleset: Ruleset, options: CaptureOptions) -> str:
    """Replace the meshagent-* nft tables in one transaction; `nft list ruleset` after.
    ISTIO_* chains a previous iptables apply left are removed."""
    runner.run("nft", "-f", "-", stdin=nft.render(ruleset))
    _drop_iptables_chains(runner)
    _routes(runner, options, install=True)
    return runner.run("nft", "list", "ruleset")


def remove_nft(runner: Runner, options: CaptureOptions) -> str:
    """Delete the meshagent-* nft tables (and any ISTIO_* iptables chains); the ruleset after."""
    runner.run("nft", "-f", "-", stdin=nft.remove_script())
    _drop_iptables_chains(runner)
    _routes(runner, options, install=False)
    return runner.run("nft", "list", "ruleset")


def applied_backend(runner: Runner) -> str | None:
    """The backend whose capture rules are in place now ("nft" or "iptables"), or None."""
    if shutil.which("nft") is not None and nft.PREFIX in (
        runner.probe("nft", "list", "tables") or ""
    ):
        return "nft"
    for version in (V4, V6):
        save = tool(version, "-save")
        if shutil.which(save) is not None and istio_chains(runner.probe(save) or ""):
            return "iptables"
    return None


def _drop_nft_tables(runner: Runner) -> None:
    """The other backend's tables, when nft is installed and any exist."""
    if shutil.which("nft") is None:
        return
    listing = runner.probe("nft", "list", "tables") or ""
    if nft.PREFIX in listing:
        runner.run("nft", "-f", "-", stdin=nft.remove_script())


def _drop_iptables_chains(runner: Runner) -> None:
    """The other backend's ISTIO_* chains and jumps, where iptables is installed."""
    for version in (V4, V6):
        if shutil.which(tool(version, "-restore")) is not None:
            _sync_family(runner, version, (), (), optional=True)


def _routes(runner: Runner, options: CaptureOptions, *, install: bool) -> None:
    """TPROXY: packets marked by ISTIO_DIVERT are delivered locally via their own route
    table (Istio's ConfigureRoutes); dual stack: ::6 on lo, the inbound passthrough source.
    Removal undoes both whatever the mode."""
    families = ["-4", "-6"] if options.dual_stack or not install else ["-4"]
    mark, table = options.tproxy_mark, options.tproxy_route_table
    if options.mode == TPROXY or not install:
        for fam in families:
            rule = ("rule", "del", "fwmark", mark, "lookup", table)
            while runner.ok("ip", fam, *rule):
                pass
            runner.run("ip", fam, "route", "flush", "table", table, check=False)
            if install:
                runner.run("ip", fam, "rule", "add", "fwmark", mark, "lookup", table)
                runner.run("ip", fam, "route", "add", "local", "default", "dev", "lo",
                           "table", table)  # fmt: skip
    if options.dual_stack or not install:
        present = "::6/128" in (runner.probe("ip", "-6", "addr", "show", "dev", "lo") or "")
        if install and not present:
            runner.run("ip", "-6", "addr", "add", "::6/128", "dev", "lo")
        elif present and not install:
            runner.run("ip", "-6", "addr", "del", "::6/128", "dev", "lo")
