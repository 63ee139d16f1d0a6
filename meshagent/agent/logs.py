"""structlog setup for the agent: JSON lines for machines, colours for people.

Every log line has the keys `timestamp` (ISO 8601, UTC), `level` and `event`; the rest are
stable keys such as `proxy`, `type_url`, `version`, `source`. Event names are fixed strings.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_state: dict[str, Any] = {"stream": sys.stderr}


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
