"""structlog setup for the agent: JSON lines for machines, colours for people.

Every log line has the keys `timestamp` (ISO 8601, UTC), `level` and `event`; the rest are
stable keys such as `proxy`, `type_url`, `version`, `source`. Event names are fixed strings.
"""

from __future__ import annotations

import base64
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_state: dict[str, Any] = {"stream": sys.stderr}

# A PEM private key block (PKCS#8, "EC", "RSA", "ENCRYPTED" ...), also one cut off at the end.
_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
REDACTED = "[redacted]"
# A PEM text in base64, as a Kubernetes Secret's `data` holds it ("-----BEGIN " encoded), also
# wrapped over lines as `base64` writes it (in a YAML block scalar: indented; in JSON or a repr:
# as "\n" escapes). A continuation is a whole line of base64, so the next YAML key is not one.
_B64 = r"[A-Za-z0-9+/]"
_BREAK = r"(?:\r?\n|\\r\\n|\\n)[ \t]*"
_LINE_END = r"(?:\r?\n|\\r|\\n|[\"'\s,}\]]|$)"
_BASE64_PEM = re.compile(
    rf"LS0tLS1CRUdJTi{_B64}*(?:{_BREAK}{_B64}+(?=={{0,2}}{_LINE_END}))*={{0,2}}"
)
_BREAKS = re.compile(r"\s|\\r|\\n")


def redact_text(text: str) -> str:
    """text with every PEM private key in it replaced by "[redacted]", also one in base64."""
    if "LS0tLS1CRUdJTi" in text:
        text = _BASE64_PEM.sub(_redact_base64_key, text)
    if "PRIVATE KEY-----" not in text:
        return text
    return _PRIVATE_KEY_PEM.sub(REDACTED, text)


def _redact_base64_key(match: re.Match[str]) -> str:
    encoded = match.group(0)
    joined = _BREAKS.sub("", encoded)
    try:
        decoded = base64.b64decode(joined + "=" * (-len(joined) % 4))
    except ValueError:
        return REDACTED  # cut off mid-way: it may be one
    return REDACTED if b"PRIVATE KEY" in decoded or len(decoded) < 40 else encoded


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return _redact_value(value.decode("utf-8", "replace"), depth)
    if depth < 4 and isinstance(value, dict):
        return {k: _redact_value(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    if value is None or isinstance(value, int | float):
        return value
    text = repr(value)  # what the renderer would show
    return redact_text(text) if "PRIVATE KEY-----" in text else value


def redact_key_material(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no log line ever carries a PEM private key, whatever logged it.

    Strings (and bytes) in the event, tracebacks included, are searched, and so is the repr
    of anything else (the key-holding types also hide their keys from repr).
    """
    for key, value in event.items():
        event[key] = _redact_value(value)
    return event


def level_number(level: str) -> int:
    """The numeric level of a name like "info"; ValueError for unknown names."""
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Install the renderer for fmt ("auto", "json" or "console") at level, writing to stream.

    "auto" picks the console renderer when stream is a TTY and JSON otherwise.
    """
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    _state["stream"] = stream
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_key_material,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        # Not cached, so that set_level() reaches loggers made before it.
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the level of every logger at runtime (SIGHUP reload)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level_number(level)))
