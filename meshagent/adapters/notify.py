"""The asyncio side of inotify wake-ups, shared by the files and credentials adapters: waiting
for a notification, the poll interval or stop, and closing the watch."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from meshagent.adapters.inotify import Inotify


async def wait_for_change(
    stop: asyncio.Event, notified: asyncio.Event | None, seconds: float
) -> bool | None:
    """Wait for a notification (True), the timeout (False) or stop (None); without inotify
    (notified None), for the timeout or stop."""
    if notified is None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return None
    if not notified.is_set():
        waiters = [asyncio.ensure_future(e.wait()) for e in (stop, notified)]
        _, pending = await asyncio.wait(
            waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
    if stop.is_set():
        return None
    woke = notified.is_set()
    notified.clear()
    return woke


def close_notify(inotify: Inotify | None) -> None:
    """Stop reading inotify on the running loop and close it (None: nothing to do)."""
    if inotify is not None:
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(inotify.fd)
        inotify.close()


def nearest_existing_parent(path: Path) -> Path:
    """The nearest existing directory above path: it sees path created, renamed or swapped."""
    parent = path.absolute().parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    return parent
