"""Waiting for a condition with a deadline, never a bare sleep: the one polling helper of the
tests (tests/polling.py re-exports it), the benchmarks and the harness in this package."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 15.0, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` s.

    Exceptions raised by the predicate count as "not yet" and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    delay, last = 0.02, ""
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = repr(value)
        except Exception as error:  # the condition may fail while things start up
            last = repr(error)
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or _name(predicate)}: {last}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 15.0,
    what: str = "",
    blocking: bool = False,
) -> T:
    """`wait_for` for async tests; `blocking=True` runs each poll in a thread (for I/O). The
    predicate may also return an awaitable (e.g. `lambda: asyncio.to_thread(probe)`)."""
    deadline = time.monotonic() + timeout
    delay, last = 0.02, ""
    while True:
        try:
            value = await asyncio.to_thread(predicate) if blocking else predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = repr(value)
        except Exception as error:  # the condition may fail while things start up
            last = repr(error)
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or _name(predicate)}: {last}"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _name(predicate: Any) -> str:
    return str(getattr(predicate, "__qualname__", predicate))
