"""The ruleset as iptables-restore text, in the form istio-iptables' dry run prints.

`render` gives Istio's form (`* nat`, `-N` for each chain, rules in the order issued, `COMMIT`),
which iptables-restore --noflush accepts as it is. `restore_payload` is what the applier feeds
iptables-restore: it first deletes what a previous apply left in the built-in chains and
flushes or deletes the ISTIO_* chains, then adds the rules, so each table changes in one
atomic commit and a second apply changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshagent.capture.rules import V4, Rule, Ruleset, chains, tables


def render(ruleset: Ruleset, families: Iterable[int] = (4, 6)) -> str:
    """Both families' rules, each preceded by a comment naming the restore command."""
    out: list[str] = []
    for version in families:
        rules = ruleset.family(version)
        if not rules:
            continue
        out.append(f"# {'iptables' if version == V4 else 'ip6tables'}-restore --noflush")
        out += render_family(rules)
    return "".join(line + "\n" for line in out)


def render_family(rules: tuple[Rule, ...]) -> list[str]:
    """One family's tables as istio-iptables prints them."""
    lines: list[str] = []
    for table in tables(rules):
        lines.append(f"* {table}")
        lines += [f"-N {chain}" for chain in chains(rules, table)]
        lines += [r.command() for r in rules if r.table == table]
        lines.append("COMMIT")
    return lines


def restore_payload(
    rules: tuple[Rule, ...],
    existing: Mapping[str, list[str]],
    stale: Mapping[str, list[str]],
) -> str:
    """iptables-restore --noflush input that replaces our rules in one commit per table.

    `existing`: table -> our ISTIO_* chains present now; `stale`: table -> rule specs (as
    `-D CHAIN ...` takes them) of our rules now in built-in chains. Declaring a chain (`:NAME`)
    flushes it when it exists, so the order is: delete the built-in rules, flush every chain,
    delete the chains no longer wanted, add the new ones.
    """
    lines: list[str] = []
    for table in sorted(set(tables(rules)) | set(existing) | set(stale), key=_table_key):
        wanted = chains(rules, table)
        present = existing.get(table, [])
        lines.append(f"*{table}")
        lines += [f"-D {spec}" for spec in stale.get(table, [])]
        lines += [f":{c} - [0:0]" for c in [*present, *[w for w in wanted if w not in present]]]
        lines += [f"-X {c}" for c in present if c not in wanted]
        lines += [r.command() for r in rules if r.table == table]
        lines.append("COMMIT")
    return "".join(line + "\n" for line in lines)


def _table_key(table: str) -> tuple[int, str]:
    order = ("mangle", "nat", "raw", "filter")
    return (order.index(table) if table in order else len(order), table)
