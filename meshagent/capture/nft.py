"""The ruleset as an nftables script (`nft -f`), for hosts that manage netfilter with nft.

Each iptables table becomes a table of the same family named `meshagent-<table>` (`ip`, and
`ip6` with dual stack), with base chains `prerouting`/`output` at the priorities of iptables'
own tables and the ISTIO_* chains under their Istio names, rules in the same final order. The
script replaces those tables in one transaction (`add table`, `delete table`, then the new
contents), so applying it twice leaves the same ruleset and `remove_script` leaves none.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshagent.capture.rules import V4, V6, Rule, Ruleset, chains, ordered, tables

PREFIX = "meshagent-"
TABLES = ("mangle", "nat", "raw")
# iptables table -> built-in chain -> (nft chain type, hook, priority)
BASE_CHAINS = {
    "nat": {"PREROUTING": ("nat", "prerouting", -100), "OUTPUT": ("nat", "output", -100)},
    "mangle": {
        "PREROUTING": ("filter", "prerouting", -150),
        "OUTPUT": ("route", "output", -150),
    },
    "raw": {"PREROUTING": ("filter", "prerouting", -300), "OUTPUT": ("filter", "output", -300)},
}


def family_name(version: int) -> str:
    """nft's family of an IP version."""
    return "ip" if version == V4 else "ip6"


def render(ruleset: Ruleset) -> str:
    """The nft script that replaces every meshagent table with this ruleset."""
    lines = _drop_all()
    for version in (V4, V6):
        rules = ruleset.family(version)
        for table in tables(rules):
            lines += _table(rules, table, version)
    return "".join(line + "\n" for line in lines)


def remove_script() -> str:
    """The nft script that deletes every meshagent table (those absent are created first)."""
    return "".join(line + "\n" for line in _drop_all())


def table_names() -> list[tuple[str, str]]:
    """(family, table) of every table this backend may own."""
    return [(family_name(v), PREFIX + t) for v in (V4, V6) for t in TABLES]


def _drop_all() -> list[str]:
    lines = []
    for family, name in table_names():
        lines += [f"add table {family} {name}", f"delete table {family} {name}"]
    return lines


def _table(rules: tuple[Rule, ...], table: str, version: int) -> list[str]:
    where = f"{family_name(version)} {PREFIX}{table}"
    lines = [f"add table {where}"]
    base = BASE_CHAINS[table]
    used = [c for c in base if any(r.table == table and r.chain == c for r in rules)]
    for chain in used:
        kind, hook, priority = base[chain]
        lines.append(
            f"add chain {where} {chain.lower()} "
            f"{{ type {kind} hook {hook} priority {priority} ; policy accept ; }}"
        )
    user = chains(rules, table)
    lines += [f"add chain {where} {chain}" for chain in user]
    for chain in [*used, *user]:
        name = chain.lower() if chain in base else chain
        for rule in ordered(rules, table, chain):
            lines.append(f"add rule {where} {name} {translate(rule.params, version)}")
    return lines


def translate(params: Iterable[str], version: int) -> str:
    """One iptables rule spec (the vocabulary `rules.build` uses) as an nft rule."""
    tokens = list(params)
    ip = family_name(version)
    out: list[str] = []
    proto, module, negate, i = "", "", False, 0

    def neg() -> str:
        return "!= " if negate else ""

    while i < len(tokens):
        tok = tokens[i]
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        step = 2
        if tok == "!":
            negate, i = True, i + 1
            continue
        if tok == "-p":
            proto = arg
            out.append(f"meta l4proto {neg()}{arg}")
        elif tok == "-m":
            module = arg
        elif tok in ("--dport", "--sport"):
            out.append(f"{proto} {tok[2:]} {neg()}{arg}")
        elif tok == "--dports":
            out.append(f"{proto} dport {neg()}{{ {', '.join(arg.split(','))} }}")
        elif tok in ("-d", "-s"):
            out.append(f"{ip} {'daddr' if tok == '-d' else 'saddr'} {neg()}{arg}")
        elif tok in ("-i", "-o"):
            out.append(f'{"iifname" if tok == "-i" else "oifname"} {neg()}"{arg}"')
        elif tok in ("--uid-owner", "--gid-owner"):
            out.append(f"meta {'skuid' if tok == '--uid-owner' else 'skgid'} {neg()}{arg}")
        elif tok == "--ctstate":
            out.append(f"ct state {neg()}{{ {', '.join(arg.lower().split(','))} }}")
        elif tok == "--mark":
            out.append(f"{'ct mark' if module == 'connmark' else 'meta mark'} {neg()}{arg}")
        elif tok == "-j":
            out.append(_target(arg, tokens[i + 2 :], ip))
            break
        else:
            raise ValueError(f"no nft translation for {tok!r} in {' '.join(tokens)}")
        negate = False
        i += step
    return " ".join(out)


def _target(target: str, rest: list[str], ip: str) -> str:
    opts = dict(zip(rest[::2], rest[1::2], strict=False))
    if target in ("RETURN", "ACCEPT", "DROP"):
        return target.lower()
    if target == "REDIRECT":
        return f"redirect to :{opts.get('--to-ports') or opts['--to-port']}"
    if target == "TPROXY":
        mark = opts["--tproxy-mark"].split("/", 1)[0]
        return f"tproxy {ip} to :{opts['--on-port']} meta mark set {mark} accept"
    if target == "MARK":
        return f"meta mark set {opts['--set-mark']}"
    if target == "CONNMARK":
        return "ct mark set meta mark" if "--save-mark" in rest else "meta mark set ct mark"
    if target == "CT":
        return f"ct zone set {opts['--zone']}"
    return f"jump {target}"
