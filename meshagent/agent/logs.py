"""structlog setup for the agent: JSON lines for machines, colours for people.

Every log line has the keys `timestamp` (ISO 8601, UTC), `level` and `event`; the rest are
stable keys such as `proxy`, `type_url`, `version`, `source`. Event names are fixed strings.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from meshagent.xds.redact import REDACTED, redact_text

_state: dict[str, Any] = {"stream": sys.stderr}
__all__ = ["REDACTED", "configure_logging", "redact_key_material", "redact_text", "set_level"]


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
