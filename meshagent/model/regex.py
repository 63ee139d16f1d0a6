"""Regexes as Envoy will compile them: RE2 syntax, and a program no larger than the limit the
bootstrap sets (model/limits.py), so that no valid-looking regex reaches Envoy to be NACKed.
Shared by validation (normalize) and the consistency check of generated resources (xds).

RE2 is the `google-re2` package (module `re2`). Without it, the check falls back to Python's
`re`, which accepts some patterns RE2 rejects (lookaround, backreferences) and cannot tell the
program size.
"""

from __future__ import annotations

import re
from types import ModuleType

from meshagent.model.limits import RE2_MAX_PROGRAM_SIZE

try:
    import re2 as _re2

    RE2: ModuleType | None = _re2
except ImportError:  # pragma: no cover - google-re2 is a dependency
    RE2 = None


def regex_problem(pattern: str) -> str | None:
    """Why Envoy would reject pattern, or None when it compiles within the program size."""
    if pattern == "":
        return "regex must not be empty"
    if RE2 is None:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"invalid regex: {exc}"
        return None
    options = RE2.Options()
    options.log_errors = False  # as Envoy compiles (RE2::Quiet): the error is ours to report
    try:
        size = int(RE2.compile(pattern, options).programsize)
    except RE2.error as exc:
        detail = exc.args[0] if exc.args else exc
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return f"invalid regex (RE2 syntax, as Envoy compiles it): {text}"
    if size > RE2_MAX_PROGRAM_SIZE:
        return (
            f"regex is too complex: its RE2 program size is {size}, above Envoy's limit of "
            f"{RE2_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level)"
        )
    return None
