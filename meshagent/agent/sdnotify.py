"""systemd service notifications (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

The protocol is one datagram of newline-separated `KEY=value` lines to the Unix socket named
by $NOTIFY_SOCKET (a leading '@' means the abstract namespace). Without that variable, as
outside systemd, every call does nothing. A failing send is logged once and never raised:
notifications must not be able to stop the agent.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("meshagent.sdnotify")

# Without a watchdog, readiness and status are still checked this often.
STATUS_INTERVAL_S = 1.0


def _socket_address(name: str) -> str | bytes:
    """The sockaddr for a $NOTIFY_SOCKET value; '@name' is abstract ('\\0name')."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), None without a watchdog.

    $WATCHDOG_PID, when set, must name this process (systemd sets it for the main process).
    """
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


class SystemdNotifier:
    """Sends notifications to `address` (a $NOTIFY_SOCKET value); None disables it."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address or None
        self.watchdog_s = watchdog_s if self.address else None
        self._sock: socket.socket | None = None
        self._failed = False
        self._status: str | None = None
        self.ready_sent = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for $NOTIFY_SOCKET and $WATCHDOG_USEC (os.environ by default)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send fields (`"READY=1"`, `"STATUS=..."`) as one datagram; False when not sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), _socket_address(self.address))
        except OSError as exc:
            if not self._failed:  # one line, not one per watchdog tick
                log.warning("sd_notify_failed", socket=self.address, error=str(exc))
            self._failed = True
            return False
        self._failed = False
        return True

    def status(self, text: str) -> None:
        """STATUS=text, sent only when it differs from the last one."""
        text = " ".join(text.split())  # one line: the protocol is line-based
        if text != self._status and self.send(f"STATUS={text}"):
            self._status = text

    def ready(self) -> None:
        """READY=1 (again after a reload)."""
        if self.send("READY=1"):
            self.ready_sent = True

    def reloading(self) -> None:
        """RELOADING=1; MONOTONIC_USEC lets Type=notify-reload managers match it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading configuration")
        self._status = None

    def reloaded(self) -> None:
        """READY=1 after a reload, but only if the agent had been ready before it."""
        if self.ready_sent:
            self.send("READY=1")

    def stopping(self) -> None:
        """STOPPING=1."""
        self.send("STOPPING=1", "STATUS=stopping")
        self._status = None

    def close(self) -> None:
        """Close the socket (a later send reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self, reasons: Callable[[], list[str]], healthy: Callable[[], bool]) -> None:
        """Until cancelled: READY=1 once reasons() is empty, STATUS on change, WATCHDOG=1.

        The watchdog ping stops while healthy() is false, and it only goes out when this
        coroutine gets to run, so a stuck event loop makes systemd restart the agent.
        """
        if not self.enabled:
            return
        interval = min(self.watchdog_s or STATUS_INTERVAL_S, STATUS_INTERVAL_S)
        while True:
            self.check(reasons, healthy)
            await asyncio.sleep(interval)

    def check(self, reasons: Callable[[], list[str]], healthy: Callable[[], bool]) -> None:
        """One round of run(): status, readiness and the watchdog ping."""
        pending = reasons()
        self.status(_status_line(pending))
        if not pending and not self.ready_sent:
            self.ready()
        if self.watchdog_s is not None and healthy():
            self.send("WATCHDOG=1")


def _status_line(pending: list[str]) -> str:
    if not pending:
        return "ready"
    more = f" (+{len(pending) - 1} more)" if len(pending) > 1 else ""
    return f"waiting: {pending[0]}{more}"
