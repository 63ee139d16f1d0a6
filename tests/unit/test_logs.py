"""structlog setup: JSON when not a TTY, stable keys, runtime level changes."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from meshagent.agent.logs import configure_logging, set_level


@pytest.fixture(autouse=True)
def restore_structlog() -> object:
    yield None
    structlog.reset_defaults()


def test_json_lines_with_stable_keys_and_runtime_level() -> None:
    stream = io.StringIO()  # not a TTY: "auto" means JSON
    configure_logging("info", "auto", stream)
    log = structlog.get_logger("test")

    log.debug("hidden")
    log.info("xds_ack", proxy="vm-1", version="3")
    set_level("debug")
    log.debug("now_visible")
    set_level("error")
    log.warning("hidden_again")

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["xds_ack", "now_visible"]
    assert lines[0]["level"] == "info" and lines[0]["proxy"] == "vm-1"
    assert lines[0]["timestamp"].endswith("Z")


def test_console_format_on_request() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    structlog.get_logger("test").info("hello", source="files")
    text = stream.getvalue()
    assert "hello" in text and "source=files" in text
