"""sd_notify: datagrams on a test NOTIFY_SOCKET, path and abstract; readiness and watchdog."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshagent.agent.sdnotify import SystemdNotifier, watchdog_interval


@pytest.fixture
def receiver() -> Iterator[tuple[str, socket.socket]]:
    # A short directory: Unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield path, sock
        finally:
            sock.close()


def messages(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    found: list[str] = []
    try:
        while True:
            found.append(sock.recv(4096).decode())
    except BlockingIOError:
        return found


def test_fields_arrive_as_one_datagram(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = SystemdNotifier(path)
    assert notifier.send("READY=1", "STATUS=serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_namespace_socket() -> None:
    name = f"meshagent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        SystemdNotifier(f"@{name}").send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_socket_nothing_is_sent_and_a_dead_socket_never_raises(tmp_path: Path) -> None:
    assert not SystemdNotifier.from_environment({}).send("READY=1")
    gone = SystemdNotifier(str(tmp_path / "missing"))
    assert not gone.send("READY=1")
    gone.ready()
    assert not gone.ready_sent


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 0.5


def test_ready_once_status_on_change_watchdog_while_healthy(
    receiver: tuple[str, socket.socket],
) -> None:
    path, sock = receiver
    notifier = SystemdNotifier(path, watchdog_s=5.0)
    pending = ["source files has not synced", "envoy vm-1 is not connected"]
    healthy = [True]

    notifier.check(lambda: pending, lambda: healthy[0])
    notifier.check(lambda: pending, lambda: healthy[0])
    assert messages(sock) == [
        "STATUS=waiting: source files has not synced (+1 more)",
        "WATCHDOG=1",
        "WATCHDOG=1",
    ]

    pending.clear()
    notifier.check(lambda: pending, lambda: healthy[0])
    healthy[0] = False
    notifier.check(lambda: pending, lambda: healthy[0])
    assert messages(sock) == ["STATUS=ready", "READY=1", "WATCHDOG=1"]


def test_reload_and_stop_messages(receiver: tuple[str, socket.socket]) -> None:
    path, sock = receiver
    notifier = SystemdNotifier(path)
    notifier.reloading()
    notifier.reloaded()  # never ready before: no READY=1 after the reload
    notifier.ready()
    notifier.reloading()
    notifier.reloaded()
    notifier.stopping()
    got = messages(sock)
    assert [m.split("\n")[0] for m in got] == [
        "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1",
    ]  # fmt: skip
    assert "MONOTONIC_USEC=" in got[0] and got[4] == "STOPPING=1\nSTATUS=stopping"
