"""Run every check over one AnalysisInput: the messages, sorted and without duplicates.

Checks are pure functions of the input, composed in one ordered list; a check that fails
(a bug) becomes one IST0001 message naming it, and the others still run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from meshagent.insight import policy_checks, routing_checks
from meshagent.insight.context import AnalysisInput
from meshagent.insight.messages import Message

Check = Callable[[AnalysisInput], Iterable[Message]]

CHECKS: tuple[tuple[str, Check], ...] = (
    ("schema", policy_checks.schema),
    ("references", routing_checks.references),
    ("gateway_bindings", routing_checks.gateway_bindings),
    ("conflicting_hosts", routing_checks.conflicting_hosts),
    ("shadowed_rules", routing_checks.shadowed_rules),
    ("subsets", policy_checks.subsets),
    ("selectors", policy_checks.selectors),
    ("sidecars", policy_checks.sidecars),
    ("gateway_selectors", policy_checks.gateway_selectors),
    ("conflicting_gateways", policy_checks.conflicting_gateways),
    ("service_entry_protocols", policy_checks.service_entry_protocols),
    ("unset_protocols", policy_checks.unset_protocols),
)


def analyze(inp: AnalysisInput, checks: Iterable[tuple[str, Check]] = CHECKS) -> list[Message]:
    """Every message about inp, sorted by location, code and resource, each once."""
    found: dict[Message, None] = {}
    for name, check in checks:
        for message in run_check(name, check, inp):
            found.setdefault(message, None)
    return finish(found)


def finish(messages: Iterable[Message]) -> list[Message]:
    """messages once each, sorted, without the schema warnings (IST0133) that a specific
    message about the same resource and field already reports (e.g. rival Sidecars)."""
    unique = dict.fromkeys(messages)
    specific = {_subject(m) for m in unique if m.code != "IST0133" and (m.kind or m.name)}
    kept = (m for m in unique if m.code != "IST0133" or _subject(m) not in specific)
    return sorted(kept, key=lambda m: m.sort_key)


def _subject(m: Message) -> tuple[str, str, str, str, str]:
    return (m.source, m.kind, m.namespace, m.name, m.field)


def run_check(name: str, check: Check, inp: AnalysisInput) -> Iterator[Message]:
    """check's messages about inp; one IST0001 message when it fails (a bug)."""
    try:
        yield from list(check(inp))
    except Exception as exc:  # a bug in one check must not hide the others' findings
        yield Message(code="IST0001", text=f"Internal error: check {name}: {exc!r}")
