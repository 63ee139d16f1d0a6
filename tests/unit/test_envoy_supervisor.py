"""EnvoySupervisor with the real Envoy binary: start, restart after a kill, graceful stop, and
adoption of the Envoy an earlier agent left running."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from meshagent.agent.config.envoy import EnvoyConfig
from meshagent.agent.envoy import EnvoySupervisor, envoy_command, find_envoy_binary
from meshagent.agent.envoy_adopt import (
    PID_FILE,
    AdoptedEnvoy,
    command_line,
    recorded_envoy,
    same_command,
    start_time,
    write_pid_file,
)
from meshagent.errors import ConfigError
from tests.polling import async_wait_for, wait_for

DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_only_bootstrap(port: int) -> dict[str, object]:
    return {
        "node": {"id": "test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
    }


def admin_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    await async_wait_for(condition, timeout=DEADLINE_S, what=what)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; the supervisor reaps it, so also check /proc state.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def supervisor(tmp_path: Path, port: int, drain_seconds: int = 0) -> EnvoySupervisor:
    config = EnvoyConfig(manage=True, admin_port=port, drain_seconds=drain_seconds, concurrency=1)
    return EnvoySupervisor(
        config,
        admin_only_bootstrap(port),
        tmp_path / "state",
        output=subprocess.DEVNULL,
        backoff_initial_s=0.1,
    )


@pytest.mark.envoy
async def test_restarts_after_kill_and_stops_gracefully(tmp_path: Path) -> None:
    port = free_port()
    sup = supervisor(tmp_path, port)
    await sup.start()
    try:
        first = await asyncio.wait_for(sup.wait_running(), DEADLINE_S)
        await until(lambda: asyncio.to_thread(admin_ready, port), "envoy admin ready")
        written = json.loads((tmp_path / "state" / "envoy-bootstrap.json").read_text())
        assert written == admin_only_bootstrap(port)

        os.kill(first, signal.SIGKILL)

        await until(lambda: sup.restarts == 1 and sup.pid not in (None, first), "a restart")
        await until(lambda: asyncio.to_thread(admin_ready, port), "restarted envoy ready")
        second = sup.pid
    finally:
        await asyncio.wait_for(sup.stop(), DEADLINE_S)

    assert second is not None and not alive(second)
    assert sup.pid is None


@pytest.mark.envoy
async def test_two_supervised_envoys_on_one_host(tmp_path: Path) -> None:
    ports = free_port(), free_port()
    sups = [supervisor(tmp_path / str(i), p) for i, p in enumerate(ports)]
    for sup in sups:
        await sup.start()
    try:
        for port in ports:
            await until(partial(asyncio.to_thread, admin_ready, port), "both envoys ready")
        assert all(s.restarts == 0 for s in sups)
    finally:
        for sup in sups:
            await asyncio.wait_for(sup.stop(), DEADLINE_S)


def test_missing_configured_binary_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not found"):
        find_envoy_binary("/nonexistent/envoy")


def test_default_binary_is_found() -> None:
    assert os.access(find_envoy_binary(None), os.X_OK)


def test_command_line() -> None:
    dynamic = envoy_command("envoy", Path("/s/b.json"), EnvoyConfig(concurrency=3))
    fixed = envoy_command("envoy", Path("/s/b.json"), EnvoyConfig(base_id=7, extra_args=("-x",)))

    assert dynamic[:3] == ["envoy", "-c", "/s/b.json"]
    assert "--use-dynamic-base-id" in dynamic and "--base-id" not in dynamic
    assert dynamic[dynamic.index("--concurrency") + 1] == "3"
    assert fixed[fixed.index("--base-id") + 1] == "7" and fixed[-1] == "-x"


def test_command_line_disables_hot_restart() -> None:
    """Hot restart makes Envoy set PR_SET_PDEATHSIG: it would die with a killed agent."""
    assert "--disable-hot-restart" in envoy_command("envoy", Path("/b.json"), EnvoyConfig())


# -- adopting the Envoy an earlier agent left running ----------------------------------------------


@pytest.fixture
def fake_envoy(tmp_path: Path) -> Iterator[tuple[list[str], subprocess.Popen[bytes]]]:
    """A long-running process whose argv looks like an Envoy command: `tail` named envoy-fake,
    `-c 300` in its argv as `envoy -c FILE` has (for tail: the last 300 bytes of /dev/null)."""
    binary = tmp_path / "envoy-fake"
    binary.symlink_to(shutil.which("tail") or "/usr/bin/tail")
    command = [str(binary), "-c", "300", "-f", "/dev/null"]
    proc = subprocess.Popen(command)
    # Seen as that command (argv and a start time) before a test reads /proc for it: the suite
    # once saw the recorded process not found on a busy machine.
    wait_for(
        lambda: command_line(proc.pid) == command and start_time(proc.pid) is not None,
        what=f"the fake Envoy (pid {proc.pid}) in /proc as {command}",
    )
    yield command, proc
    proc.kill()
    proc.wait(10)


def test_the_recorded_envoy_is_found_only_when_it_is_that_process(
    tmp_path: Path, fake_envoy: tuple[list[str], subprocess.Popen[bytes]]
) -> None:
    command, proc = fake_envoy
    state, bootstrap = tmp_path / "state", Path("300")
    state.mkdir()
    assert recorded_envoy(state, bootstrap) is None  # no pid file

    write_pid_file(state, proc.pid)
    assert recorded_envoy(state, bootstrap) == (proc.pid, command)
    assert recorded_envoy(state, Path("299")) is None  # it runs another bootstrap
    assert same_command(["/elsewhere/envoy", *command[1:]], command)
    assert not same_command([*command, "--extra"], command)

    pid, started = (state / PID_FILE).read_text().split()
    (state / PID_FILE).write_text(f"{pid} {int(started) - 1}\n")  # the pid was reused since
    assert recorded_envoy(state, bootstrap) is None
    (state / PID_FILE).write_text("garbage\n")
    assert recorded_envoy(state, bootstrap) is None

    write_pid_file(state, os.getpid())  # a live process that is no Envoy
    assert recorded_envoy(state, bootstrap) is None
    assert proc.poll() is None


async def test_an_adopted_process_is_watched_and_signalled(
    fake_envoy: tuple[list[str], subprocess.Popen[bytes]],
) -> None:
    _, proc = fake_envoy
    adopted = AdoptedEnvoy(proc.pid)
    waiting = asyncio.create_task(adopted.wait())
    adopted.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 10)  # the test is its parent and reaps it
    assert await asyncio.wait_for(waiting, DEADLINE_S) is None
    assert adopted.returncode is not None
    adopted.send_signal(signal.SIGTERM)  # gone: a no-op, never another process


def kill_if_alive(pid: int) -> None:
    """Cleanup for a failed adoption test: the first supervisor's Envoy must not outlive it."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.envoy
async def test_a_new_supervisor_adopts_the_running_envoy(tmp_path: Path) -> None:
    """As after `kill -9` of the agent: the Envoy it started keeps running, the next agent's
    supervisor takes it over (same pid, no second Envoy), and a graceful stop stops it."""
    port = free_port()
    first = supervisor(tmp_path, port)
    await first.start()
    pid = await asyncio.wait_for(first.wait_running(), DEADLINE_S)
    await until(lambda: asyncio.to_thread(admin_ready, port), "envoy admin ready")
    assert first._task is not None
    first._task.cancel()  # the first agent is gone without stopping anything

    second = supervisor(tmp_path, port)
    await second.start()
    try:
        assert (second.adopted, second.pid, second.restarts) == (pid, pid, 0)
        assert await asyncio.to_thread(admin_ready, port)
    finally:
        await asyncio.wait_for(second.stop(), DEADLINE_S)
        survived = alive(pid)
        kill_if_alive(pid)
    assert not survived
    assert not (tmp_path / "state" / PID_FILE).exists()


@pytest.mark.envoy
async def test_an_envoy_with_another_bootstrap_is_replaced_not_adopted(tmp_path: Path) -> None:
    port = free_port()
    first = supervisor(tmp_path, port)
    await first.start()
    old = await asyncio.wait_for(first.wait_running(), DEADLINE_S)
    await until(lambda: asyncio.to_thread(admin_ready, port), "envoy admin ready")
    assert first._task is not None
    first._task.cancel()

    config = EnvoyConfig(manage=True, admin_port=port, drain_seconds=0, concurrency=1)
    changed = {**admin_only_bootstrap(port), "node": {"id": "renamed", "cluster": "test"}}
    second = EnvoySupervisor(config, changed, tmp_path / "state", output=subprocess.DEVNULL)
    await second.start()
    try:
        new = await asyncio.wait_for(second.wait_running(), DEADLINE_S)
        assert second.adopted is None and new != old and not alive(old)
        await until(lambda: asyncio.to_thread(admin_ready, port), "the new envoy ready")
    finally:
        await asyncio.wait_for(second.stop(), DEADLINE_S)
        kill_if_alive(old)


@pytest.mark.envoy
async def test_an_envoy_with_other_options_is_replaced_not_left_running(tmp_path: Path) -> None:
    """The next agent runs Envoy with another log level: the old Envoy holds the ports, so it
    is stopped before the new one starts (not left running beside a crash-looping one)."""
    port = free_port()
    first = supervisor(tmp_path, port)
    await first.start()
    old = await asyncio.wait_for(first.wait_running(), DEADLINE_S)
    await until(lambda: asyncio.to_thread(admin_ready, port), "envoy admin ready")
    assert first._task is not None
    first._task.cancel()

    config = EnvoyConfig(
        manage=True, admin_port=port, drain_seconds=0, concurrency=1, log_level="error"
    )
    second = EnvoySupervisor(
        config, admin_only_bootstrap(port), tmp_path / "state", output=subprocess.DEVNULL
    )
    await second.start()
    try:
        new = await asyncio.wait_for(second.wait_running(), DEADLINE_S)
        assert second.adopted is None and new != old and not alive(old)
        await until(lambda: asyncio.to_thread(admin_ready, port), "the new envoy ready")
        assert second.restarts == 0
    finally:
        await asyncio.wait_for(second.stop(), DEADLINE_S)
        kill_if_alive(old)
