"""Linux inotify through ctypes (three syscalls): a wake-up for the files adapter's poll.

The adapter re-scans on a wake-up, so a lost or coalesced event costs latency (the poll still
runs), never correctness. The event kinds only tell the files adapter how long to let the
files settle (a file renamed into place or closed by its writer is complete; one being written
is not). Unavailable (not Linux, no libc symbol, the per-user limit reached): `open()`
returns None and the adapter polls as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)  # fmt: skip

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Event(NamedTuple):
    """One inotify event: name is "" for the watched directory itself; cookie pairs the two
    halves of a rename (IN_MOVED_FROM, IN_MOVED_TO)."""

    mask: int
    name: str
    wd: int
    cookie: int


class Inotify:
    """One inotify instance watching a set of directories (not recursive by itself)."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self.fd = fd
        self._watches: dict[Path, int] = {}  # directory -> watch descriptor

    @classmethod
    def open(cls) -> Inotify | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            init = libc.inotify_init1
        except (OSError, AttributeError):
            return None
        init.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        return cls(libc, fd) if fd >= 0 else None

    def watch(self, directories: Iterable[Path]) -> bool:
        """Watch exactly these directories (those that exist); False when the kernel refused
        one for a reason other than its absence (e.g. the watch limit): then rely on polling."""
        wanted = set(directories)
        complete = True
        for path in [p for p in self._watches if p not in wanted]:
            self._libc.inotify_rm_watch(self.fd, self._watches.pop(path))
        for path in wanted:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
            if wd < 0:
                self._watches.pop(path, None)
                if ctypes.get_errno() not in (2, 20, 13):  # ENOENT, ENOTDIR, EACCES: polled
                    complete = False
                continue
            old = self._watches.get(path)
            if old is not None and old != wd:  # a new directory at this path (a swap)
                self._libc.inotify_rm_watch(self.fd, old)
            self._watches[path] = wd
        return complete

    def drain(self) -> list[Event] | None:
        """Read every pending event; None when the events could not be read (the queue
        overflowed, an error): look at everything."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            except OSError:
                return None
            if not data:
                return events
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                name = data[start : start + length].split(b"\0", 1)[0]
                events.append(Event(mask, os.fsdecode(name), wd, cookie))
                offset = start + length
                if mask & IN_Q_OVERFLOW:
                    return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._watches.clear()
