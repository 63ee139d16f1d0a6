"""Selecting and printing analysis messages, and the exit code, as istioctl analyze does.

Exit codes (istioctl's): 0 nothing at or above the failure threshold; 79 a message at or
above it; 65 files could not be parsed (and nothing reached the threshold); 64 bad usage.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import yaml

from meshagent.insight.messages import TYPES, Level, Message

EXIT_CLEAN, EXIT_USAGE, EXIT_PARSE, EXIT_ISSUES = 0, 64, 65, 79
FORMATS = ("text", "json", "yaml")


@dataclass(frozen=True, slots=True)
class Suppression:
    """`--suppress CODE=RESOURCE`: RESOURCE is `Kind namespace/name` or istioctl's
    `Kind name.namespace`; `*` matches any run of characters (in CODE too)."""

    code: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> Suppression:
        code, eq, resource = text.partition("=")
        if not eq or not code.strip() or not resource.strip():
            raise ValueError(f"{text!r} is not a valid suppression: want CODE=Kind namespace/name")
        return cls(code.strip(), " ".join(resource.split()))

    @property
    def known_code(self) -> bool:
        return any(fnmatch.fnmatchcase(code, self.code) for code in TYPES)

    def matches(self, m: Message) -> bool:
        if not fnmatch.fnmatchcase(m.code, self.code):
            return False
        names = [f"{m.kind} {m.namespace}/{m.name}", f"{m.kind} {m.name}.{m.namespace}"]
        if not m.namespace:
            names = [f"{m.kind} {m.name}"]
        return any(fnmatch.fnmatchcase(n, self.resource) for n in names)


def suppressed(messages: Iterable[Message], rules: Sequence[Suppression]) -> list[Message]:
    """messages without those a rule suppresses."""
    return [m for m in messages if not any(r.matches(m) for r in rules)]


def at_least(messages: Iterable[Message], level: Level) -> list[Message]:
    return [m for m in messages if m.level >= level]


def exit_code(messages: Sequence[Message], failure: Level, parse_errors: int) -> int:
    """istioctl's exit code for messages (before the output threshold filters them)."""
    if at_least(messages, failure):
        return EXIT_ISSUES
    return EXIT_PARSE if parse_errors else EXIT_CLEAN


def render(messages: Sequence[Message], output: str) -> str:
    """messages as text (one istioctl log line each), a JSON list or a YAML list."""
    if output == "json":
        return json.dumps([m.as_json() for m in messages], indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump([m.as_json() for m in messages], sort_keys=False)
    return "".join(f"{m}\n" for m in messages)


def counts(messages: Iterable[Message]) -> dict[tuple[str, str], int]:
    """Messages per (code, level): what the agent's gauge shows."""
    out: dict[tuple[str, str], int] = {}
    for m in messages:
        key = (m.code, m.level.title)
        out[key] = out.get(key, 0) + 1
    return out
