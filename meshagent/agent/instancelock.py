"""One agent per state dir: an exclusive flock on `<state_dir>/agent.lock`, held while it runs.

The kernel drops the lock when the process ends, however it ends, so a crashed agent never
leaves a stale lock behind; the file itself stays (removing it would let two agents lock two
different files of the same name). The file holds the owner's pid, for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from meshagent.errors import ConfigError

LOCK_NAME = "agent.lock"


class InstanceLock:
    """The lock of one state dir; `acquire()` raises ConfigError when another agent holds it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (idempotent); ConfigError naming the holder's pid when it is taken."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the state dir lock: {exc.strerror or exc}", location=str(self.path)
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise ConfigError(
                f"another meshagent{who} is running with this state dir; not starting",
                location=str(self.path.parent),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
