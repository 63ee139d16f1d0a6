"""`meshagent run` under a simulated systemd: sd_notify on a test NOTIFY_SOCKET, SIGHUP, SIGTERM.

A real agent process with a managed real Envoy. The test plays systemd's part: it binds the
datagram socket, sets NOTIFY_SOCKET and WATCHDOG_USEC, and sends the signals systemctl would.
(Restarting a killed managed Envoy is covered by tests/unit/test_envoy_supervisor.py.)

Where the kernel has PR_SET_MDWE (Linux 6.3+), the agent, and the Envoy it starts, run with
writable+executable memory refused, as MemoryDenyWriteExecute=yes in the units asks for.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.envoy_helpers import kill_managed_envoy
from tests.net_helpers import free_port, http_get
from tests.polling import wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


class Notifications:
    """The systemd side of NOTIFY_SOCKET: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.received.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            return self.received

    def wait(self, field: str, after: int = 0, timeout: float = 30.0) -> int:
        """Index of the first message from `after` on holding line `field`."""

        def find() -> int | None:
            for i, message in enumerate(self.poll()[after:], start=after):
                if field in message.split("\n"):
                    return i + 1  # truthy even for message 0
            return None

        return wait_for(find, timeout=timeout, what=f"sd_notify {field}") - 1


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def deny_write_execute() -> None:
    """preexec_fn: refuse W+X mappings in the child and what it execs (kept across execve)."""
    ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths (the xDS socket, NOTIFY_SOCKET) must stay under ~100 bytes.
    with tempfile.TemporaryDirectory(prefix="ma-sd") as tmp:
        yield Path(tmp)


def write_config(root: Path, envoy_admin: int, level: str) -> Path:
    (root / "mesh").mkdir(exist_ok=True)
    config = {
        "node": {"id": "sd-node"},
        "state_dir": "state",
        "admin": {"port": free_port()},
        "envoy": {"manage": True, "admin_port": envoy_admin, "drain_seconds": 1,
                  "concurrency": 1},
        "log": {"level": level, "format": "json"},
    }  # fmt: skip
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_ready_status_watchdog_reload_and_clean_stop(short_dir: Path) -> None:
    notes = Notifications(short_dir / "notify")
    envoy_admin = free_port()
    config = write_config(short_dir, envoy_admin, "info")
    env = {**os.environ, "NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "400000"}
    log = (short_dir / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "meshagent.agent.cli", "run", "--config", str(config)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=deny_write_execute,
    )  # fmt: skip
    try:
        ready = notes.wait("READY=1")
        assert "STATUS=ready" in notes.received[: ready + 1]
        assert any(m.startswith("STATUS=waiting: ") for m in notes.received[:ready])
        started = time.monotonic()
        first = notes.wait("WATCHDOG=1", after=ready + 1)
        notes.wait("WATCHDOG=1", after=first + 1)
        assert time.monotonic() - started < 3  # pings every WatchdogSec/2 or sooner

        write_config(short_dir, envoy_admin, "debug")
        agent.send_signal(signal.SIGHUP)
        reloading = notes.wait("RELOADING=1", after=first + 1)
        notes.wait("READY=1", after=reloading + 1)
        wait_for(
            lambda: b'"config_reloaded"' in (short_dir / "agent.log").read_bytes(),
            what="config_reloaded in the agent log",
        )
        wait_for(lambda: envoy_answers(envoy_admin), what="the managed Envoy's admin")

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        notes.wait("STOPPING=1", after=reloading + 1, timeout=1)
        assert not envoy_answers(envoy_admin), "the managed Envoy must stop with the agent"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        kill_managed_envoy(short_dir / "state")  # which a killed agent leaves running
        log.close()
        notes.sock.close()


def envoy_answers(admin_port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{admin_port}/ready", timeout=1).status == 200
    except OSError:
        return False
